"""Outbound media that WhatsApp only shows right in one format: stickers and voice notes.

- **Stickers** are WebP, at most 512x512. A WebP that decodes and fits is sent as it is
  (animated ones too); anything else Pillow can decode (PNG, JPEG, GIF's first frame, …)
  is fitted into a transparent 512x512 square and encoded as WebP, stepping the quality
  down until it is under ``STICKER_MAX_BYTES`` (WhatsApp's 100 KB for static stickers).
- **Voice notes** are OGG/Opus, mono, 48 kHz, with their duration and a 64-value
  waveform (0-100, the bars WhatsApp draws). Any audio ffmpeg can decode is converted; the
  duration and waveform come from the same ffmpeg run (a second output: 8 kHz PCM on
  stdout), so a note costs one process.

ffmpeg is the static binary of the ``imageio-ffmpeg`` wheel (a pinned dependency: nothing
to install on the host), or the one named by ``ZAPFLEET_FFMPEG``. Both conversions run
in a worker thread (CPU work) and raise :class:`MediaError` with
``ErrorCode.UNDECODABLE_MEDIA`` for input they cannot decode: for inline media that is a
422 when the message is accepted; for URL media, fetched just before the send, it is the
``failed`` ack of the message.
"""

from __future__ import annotations

import array
import asyncio
import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from contract.protocol import ErrorCode
from node_agent.media import MediaError, MediaPayload

STICKER_SIZE = 512
STICKER_MAX_BYTES = 100 * 1024
ANIMATED_STICKER_MAX_BYTES = 500 * 1024
WAVEFORM_BARS = 64
PCM_RATE = 8000
FFMPEG_TIMEOUT_S = 120.0
FFMPEG_SETTING = "ZAPFLEET_FFMPEG"


def ffmpeg_path() -> str:
    """The ffmpeg binary: ``ZAPFLEET_FFMPEG``, else the imageio-ffmpeg wheel's, else PATH."""
    configured = os.environ.get(FFMPEG_SETTING)
    if configured:
        return configured
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:  # the wheel is missing or has no binary for this platform
        found = shutil.which("ffmpeg")
        if found is None:
            raise MediaError(
                ErrorCode.INTERNAL, "ffmpeg is not available: voice notes cannot be converted"
            ) from None
        return found


def _undecodable(what: str, detail: str) -> MediaError:
    return MediaError(ErrorCode.UNDECODABLE_MEDIA, f"{what}: {detail}")


# -- stickers ------------------------------------------------------------------------------


def sticker_webp(payload: MediaPayload) -> MediaPayload:
    """``payload`` as a WhatsApp sticker (WebP ≤ 512x512); blocking, run it in a thread."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(payload.data)) as image:
            image.load()
            animated = bool(getattr(image, "is_animated", False))
            if (
                image.format == "WEBP"
                and image.width <= STICKER_SIZE
                and image.height <= STICKER_SIZE
            ):
                limit = ANIMATED_STICKER_MAX_BYTES if animated else STICKER_MAX_BYTES
                if payload.size <= limit:
                    return MediaPayload(
                        data=payload.data,
                        mimetype="image/webp",
                        filename=payload.filename,
                        width=image.width,
                        height=image.height,
                        animated=animated,
                    )
            frame = image.convert("RGBA")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _undecodable("the sticker is not an image that can be converted", str(exc)) from None
    frame.thumbnail((STICKER_SIZE, STICKER_SIZE))
    canvas = Image.new("RGBA", (STICKER_SIZE, STICKER_SIZE), (0, 0, 0, 0))
    canvas.paste(frame, ((STICKER_SIZE - frame.width) // 2, (STICKER_SIZE - frame.height) // 2))
    data = b""
    for quality in (80, 60, 40, 20):
        out = io.BytesIO()
        canvas.save(out, format="WEBP", quality=quality, method=4)
        data = out.getvalue()
        if len(data) <= STICKER_MAX_BYTES:
            break
    if len(data) > STICKER_MAX_BYTES:
        raise MediaError(
            ErrorCode.MEDIA_TOO_LARGE,
            f"the sticker is {len(data)} bytes as WebP, WhatsApp's limit is {STICKER_MAX_BYTES}",
        )
    name = payload.filename.rsplit(".", 1)[0] + ".webp" if payload.filename else None
    return MediaPayload(
        data=data,
        mimetype="image/webp",
        filename=name,
        width=STICKER_SIZE,
        height=STICKER_SIZE,
    )


# -- voice notes -----------------------------------------------------------------------------


def voice_note_ogg(payload: MediaPayload, timeout_s: float = FFMPEG_TIMEOUT_S) -> MediaPayload:
    """``payload`` as a WhatsApp voice note (OGG/Opus mono 48 kHz) with its duration and
    waveform; blocking, run it in a thread."""
    with tempfile.TemporaryDirectory(prefix="zf-voice-") as tmp:
        source = Path(tmp) / "in"
        target = Path(tmp) / "out.ogg"
        source.write_bytes(payload.data)
        command = [
            ffmpeg_path(),
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-i",
            str(source),
            "-map",
            "0:a:0",
            "-vn",
            "-c:a",
            "libopus",
            "-b:a",
            "32k",
            "-ac",
            "1",
            "-ar",
            "48000",
            "-application",
            "voip",
            "-f",
            "ogg",
            str(target),
            "-map",
            "0:a:0",
            "-ac",
            "1",
            "-ar",
            str(PCM_RATE),
            "-f",
            "s16le",
            "pipe:1",
        ]
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise _undecodable(
                "the voice note", f"conversion took over {timeout_s:.0f} s"
            ) from None
        if done.returncode != 0 or not target.exists() or not done.stdout:
            detail = done.stderr.decode(errors="replace").strip().splitlines()
            raise _undecodable(
                "the voice note is not audio ffmpeg can decode",
                detail[-1] if detail else f"ffmpeg exited {done.returncode}",
            )
        data = target.read_bytes()
    samples = array.array("h")
    samples.frombytes(done.stdout[: len(done.stdout) // 2 * 2])
    seconds = len(samples) / PCM_RATE
    name = payload.filename.rsplit(".", 1)[0] + ".ogg" if payload.filename else None
    return MediaPayload(
        data=data,
        mimetype="audio/ogg; codecs=opus",
        filename=name,
        seconds=round(seconds, 3),
        waveform=waveform(samples),
    )


def waveform(samples: array.array[int], bars: int = WAVEFORM_BARS) -> bytes:
    """``bars`` values 0-100: the mean loudness of each slice, scaled to the loudest."""
    if not samples:
        return bytes(bars)
    step = max(1, len(samples) // bars)
    levels = []
    for index in range(bars):
        chunk = samples[index * step : (index + 1) * step]
        levels.append(sum(abs(v) for v in chunk) / len(chunk) if chunk else 0.0)
    loudest = max(levels) or 1.0
    return bytes(min(100, round(level * 100 / loudest)) for level in levels)


async def convert_for(kind: str, payload: MediaPayload, voice_note: bool) -> MediaPayload:
    """The payload converted for its message kind (sticker, voice note), else unchanged."""
    if kind == "sticker":
        return await asyncio.to_thread(sticker_webp, payload)
    if kind == "audio" and voice_note:
        return await asyncio.to_thread(voice_note_ogg, payload)
    return payload


__all__ = ["convert_for", "ffmpeg_path", "sticker_webp", "voice_note_ogg", "waveform"]
