"""Group pictures (issue 16): the one picture rule of :mod:`contract.profile` (a square
JPEG of at most 640x640, cut from the middle of any image Pillow reads), with its refusal
as the media error a group picture answers with (``undecodable_media``)."""

from __future__ import annotations

from contract.profile import InvalidImage, profile_jpeg
from contract.protocol import ErrorCode
from node_agent.media import MediaError, MediaPayload


def picture_jpeg(payload: MediaPayload) -> bytes:
    """The JPEG WhatsApp takes as a picture, or MediaError(undecodable_media) for bytes
    that are not an image. CPU-bound: run it in a thread."""
    try:
        return profile_jpeg(payload.data)
    except InvalidImage as exc:
        raise MediaError(
            ErrorCode.UNDECODABLE_MEDIA, f"the picture is not an image Pillow can read: {exc}"
        ) from None
