"""Pictures WhatsApp shows as avatars (groups, issue 16; usable for profile pictures):
a square JPEG of at most 640x640, cut from the middle of any image Pillow can read."""

from __future__ import annotations

import io

from contract.protocol import ErrorCode
from node_agent.media import MediaError, MediaPayload

PICTURE_SIZE = 640  # WhatsApp keeps avatars at 640x640
PICTURE_QUALITY = 85
MAX_PIXELS = 40_000_000  # a decompression bomb is refused, not decoded


def picture_jpeg(payload: MediaPayload) -> bytes:
    """The JPEG WhatsApp takes as a picture, or MediaError(undecodable_media) for bytes
    that are not an image. CPU-bound: run it in a thread."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(payload.data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(f"{image.width}x{image.height} is too many pixels")
            image.load()
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(
            ErrorCode.UNDECODABLE_MEDIA, f"the picture is not an image Pillow can read: {exc}"
        ) from None
    side = min(rgb.width, rgb.height)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    if side > PICTURE_SIZE:
        square = square.resize((PICTURE_SIZE, PICTURE_SIZE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    square.save(out, format="JPEG", quality=PICTURE_QUALITY)
    return out.getvalue()
