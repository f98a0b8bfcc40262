"""neonize media, offline (issue 15): the outbound sticker and voice-note protos field by
field, inbound media protos (constructed here) decoded into InboundMedia and
``message.received`` content, and downloads through ``download_any`` under the FFI lock's
shared side (NEONIZE.md rules). WhatsApp is out of reach, so the client behind the
download is a stand-in recording what the Go side would have been given."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from neonize.proto import Neonize_pb2 as nz
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

from contract.protocol import SessionSpec
from node_agent.engines._base import EngineError, Inbound, InboundMedia
from node_agent.engines.neonize import NeonizeConfig, NeonizeEngine, NeonizeSession
from node_agent.engines.neonize.generation import _Generation
from node_agent.engines.neonize.protos import (
    audio_message,
    describe_message,
    inbound_media,
    sticker_message,
)
from node_agent.media import MediaPayload

UPLOADED: dict[str, Any] = {
    "URL": "https://mmg.whatsapp.net/x",
    "directPath": "/v/t62/x",
    "fileEncSHA256": b"e" * 32,
    "fileLength": 1234,
    "fileSHA256": b"s" * 32,
    "mediaKey": b"k" * 32,
    "mimetype": "audio/ogg; codecs=opus",
}


def test_a_voice_note_is_a_ptt_audio_message_with_seconds_and_waveform() -> None:
    bars = bytes(range(0, 64))
    payload = MediaPayload(
        data=b"OggS", mimetype="audio/ogg; codecs=opus", seconds=2.4, waveform=bars
    )
    message = audio_message(UPLOADED, payload, voice_note=True)
    audio = message.audioMessage
    assert audio.PTT is True
    assert audio.seconds == 2
    assert audio.waveform == bars
    assert audio.mimetype == "audio/ogg; codecs=opus"
    assert (audio.URL, audio.directPath) == (UPLOADED["URL"], UPLOADED["directPath"])
    assert (audio.fileLength, audio.mediaKey) == (1234, b"k" * 32)
    assert (audio.fileSHA256, audio.fileEncSHA256) == (b"s" * 32, b"e" * 32)
    # plain audio: no PTT, no waveform; a sub-second clip still says 1 s
    plain = audio_message(
        UPLOADED, MediaPayload(data=b"x", mimetype="audio/mpeg", seconds=0.3), False
    )
    assert plain.audioMessage.PTT is False
    assert plain.audioMessage.seconds == 1
    assert not plain.audioMessage.HasField("waveform")


def test_a_sticker_is_a_sticker_message_with_its_size() -> None:
    fields = {**UPLOADED, "mimetype": "image/webp"}
    payload = MediaPayload(data=b"RIFF", mimetype="image/webp", width=512, height=512)
    sticker = sticker_message(fields, payload).stickerMessage
    assert sticker.mimetype == "image/webp"
    assert (sticker.width, sticker.height) == (512, 512)
    assert sticker.isAnimated is False
    assert sticker.directPath == "/v/t62/x" and sticker.mediaKey == b"k" * 32
    animated = MediaPayload(data=b"RIFF", mimetype="image/webp", animated=True)
    assert sticker_message(fields, animated).stickerMessage.isAnimated is True


@pytest.mark.parametrize(
    ("message", "kind", "expected"),
    [
        (
            e2e.Message(
                imageMessage=e2e.ImageMessage(
                    mimetype="image/jpeg", fileLength=2048, fileSHA256=b"\x01" * 32, caption="hi"
                )
            ),
            "image",
            InboundMedia(mimetype="image/jpeg", size=2048, sha256="01" * 32),
        ),
        (
            e2e.Message(
                documentMessage=e2e.DocumentMessage(
                    mimetype="application/pdf", fileLength=99, fileName="report.pdf"
                )
            ),
            "document",
            InboundMedia(mimetype="application/pdf", size=99, filename="report.pdf"),
        ),
        (
            e2e.Message(
                audioMessage=e2e.AudioMessage(
                    mimetype="audio/ogg; codecs=opus", fileLength=5000, seconds=7, PTT=True
                )
            ),
            "audio",
            InboundMedia(mimetype="audio/ogg; codecs=opus", size=5000, seconds=7.0),
        ),
        (
            e2e.Message(stickerMessage=e2e.StickerMessage(mimetype="image/webp", fileLength=800)),
            "sticker",
            InboundMedia(mimetype="image/webp", size=800),
        ),
        (
            e2e.Message(
                videoMessage=e2e.VideoMessage(mimetype="video/mp4", fileLength=10**6, seconds=3)
            ),
            "video",
            InboundMedia(mimetype="video/mp4", size=10**6, seconds=3.0),
        ),
    ],
)
def test_inbound_media_protos_decode_to_their_description(
    message: Any, kind: str, expected: InboundMedia
) -> None:
    found = inbound_media(message)
    assert found is not None
    assert (found.mimetype, found.size, found.filename, found.sha256, found.seconds) == (
        expected.mimetype,
        expected.size,
        expected.filename,
        expected.sha256,
        expected.seconds,
    )
    assert found.handle is message  # download_any takes the whole message
    assert describe_message(message)[0] == kind
    assert inbound_media(e2e.Message(conversation="text")) is None


class StandInClient:
    """What the Go side would be handed: the message proto, once per download."""

    def __init__(self, engine: NeonizeEngine, fail: bool = False) -> None:
        self.engine = engine
        self.fail = fail
        self.calls: list[Any] = []
        self.lock_was_shared: list[bool] = []

    async def download_any(self, message: Any) -> bytes:
        self.lock_was_shared.append(self.engine.lock._readers > 0 and not self.engine.lock._writer)
        self.calls.append(message)
        await asyncio.sleep(0)
        if self.fail:
            raise RuntimeError("DownloadError: media expired")
        return b"decrypted bytes"


def online_session(client_fail: bool = False) -> tuple[NeonizeSession, StandInClient, list[Any]]:
    engine = NeonizeEngine(NeonizeConfig())
    emitted: list[Any] = []
    session = NeonizeSession(
        engine, SessionSpec(session_id="s", tenant="t", engine="neonize"), emitted.append
    )
    client = StandInClient(engine, client_fail)
    gen = _Generation("u1", client)
    gen.registered, gen.link_up, gen.phase = True, True, "online"
    session._gen = gen
    return session, client, emitted


async def test_a_received_image_is_reported_with_its_media_and_downloaded_under_the_lock() -> None:
    session, client, emitted = online_session()
    image = e2e.Message(
        imageMessage=e2e.ImageMessage(mimetype="image/png", fileLength=15, caption="look")
    )
    event = nz.Message(
        Info=nz.MessageInfo(
            ID="3EB0ABC",
            Timestamp=1_760_000_000,
            Pushname="Ann",
            MessageSource=nz.MessageSource(
                Sender=nz.JID(User="15550001111", Server="s.whatsapp.net"),
                Chat=nz.JID(User="15550001111", Server="s.whatsapp.net"),
                IsFromMe=False,
                IsGroup=False,
            ),
        ),
        Message=image,
    )
    await session._on_message(event)
    [inbound] = emitted
    assert isinstance(inbound, Inbound)
    assert (inbound.message_id, inbound.sender, inbound.type) == ("3EB0ABC", "15550001111", "image")
    assert inbound.text == "look"
    assert inbound.timestamp == 1_760_000_000.0
    assert inbound.media is not None
    assert (inbound.media.mimetype, inbound.media.size) == ("image/png", 15)

    data = await session.download(inbound.media)
    assert data == b"decrypted bytes"
    assert client.calls == [event.Message]
    assert client.lock_was_shared == [True]
    assert not session.engine.lock.busy


async def test_a_failed_or_impossible_download_is_an_engine_error() -> None:
    session, _, _ = online_session(client_fail=True)
    media = InboundMedia(mimetype="image/png", size=1, handle=e2e.Message())
    with pytest.raises(EngineError, match="media download failed"):
        await session.download(media)
    with pytest.raises(EngineError, match="no media"):
        await session.download(InboundMedia(mimetype="image/png", size=1))
    assert session._gen is not None
    session._gen.link_up = False
    with pytest.raises(EngineError, match="not connected"):
        await session.download(media)


def test_view_once_media_sets_view_once_and_is_recognised_wrapped_or_flagged() -> None:
    """Outbound: the media part carries ``viewOnce`` (what current clients send).
    Inbound: a flagged part, or one inside the older ``viewOnceMessageV2`` wrapper, is
    described as its media type with ``view_once``; its file is found inside the wrapper."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    from contract.protocol import ImageContent, Media, VideoContent
    from node_agent.engines.neonize.protos import (
        describe_message,
        image_message,
        inbound_media,
        video_message,
    )

    media = Media(base64="aGk=")
    image = image_message({}, ImageContent(media=media, caption="c", view_once=True), None)
    assert image.imageMessage.viewOnce is True and image.imageMessage.caption == "c"
    plain = image_message({}, ImageContent(media=media), None)
    assert plain.imageMessage.HasField("viewOnce") is False
    video = video_message({}, VideoContent(media=media, view_once=True))
    assert video.videoMessage.viewOnce is True

    part = e2e.ImageMessage(mimetype="image/jpeg", fileLength=10, caption="see")
    wrapped = e2e.Message(
        viewOnceMessageV2=e2e.FutureProofMessage(message=e2e.Message(imageMessage=part))
    )
    assert describe_message(wrapped) == (
        "image",
        "see",
        {"mimetype": "image/jpeg", "size": 10, "view_once": True},
    )
    found = inbound_media(wrapped)
    assert found is not None and found.mimetype == "image/jpeg" and found.size == 10
    flagged = e2e.Message(
        imageMessage=e2e.ImageMessage(mimetype="image/png", fileLength=3, viewOnce=True)
    )
    assert describe_message(flagged)[2]["view_once"] is True
    assert "view_once" not in describe_message(e2e.Message(imageMessage=part))[2]
