"""Own-profile helpers (issue 16): profile pictures as WhatsApp takes them.

WhatsApp shows a profile picture as a square JPEG of at most 640x640; anything else is
refused or cropped by the phone. :func:`profile_jpeg` turns any image Pillow decodes into
that (centre crop, downscale) and refuses what is not an image with ``invalid_image``.
The control plane calls it before anything reaches an agent (bad input is a 422 there);
the agent calls it again, so an RPC from elsewhere cannot push other bytes to WhatsApp.
"""

from __future__ import annotations

import io

PICTURE_SIZE = 640
MAX_PICTURE_BYTES = 5 * 1024 * 1024  # what the API accepts before normalising
MAX_PICTURE_PIXELS = 40_000_000  # a decompression bomb is not a picture


class InvalidImage(ValueError):
    """The bytes are not an image that can be a profile picture."""


def profile_jpeg(data: bytes) -> bytes:
    """``data`` as a square JPEG ≤ 640x640; :class:`InvalidImage` when it cannot be.
    Blocking (Pillow): run it in a thread."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidImage("the picture is empty")
    if len(data) > MAX_PICTURE_BYTES:
        raise InvalidImage(f"the picture has {len(data)} bytes; at most {MAX_PICTURE_BYTES}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PICTURE_PIXELS:
                raise InvalidImage(f"the picture is {image.width}x{image.height}: too large")
            image.load()
            frame = image.convert("RGB")
    except InvalidImage:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"the picture is not an image: {exc}") from None
    side = min(frame.width, frame.height)
    left, top = (frame.width - side) // 2, (frame.height - side) // 2
    square = frame.crop((left, top, left + side, top + side))
    if side > PICTURE_SIZE:
        square = square.resize((PICTURE_SIZE, PICTURE_SIZE))
    out = io.BytesIO()
    square.save(out, format="JPEG", quality=85)
    return out.getvalue()
