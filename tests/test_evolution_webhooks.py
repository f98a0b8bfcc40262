"""Evolution API webhooks end to end (docs/evolution-webhooks.md): ``webhook/set`` and
``webhook/find`` with Evolution's ``apikey`` header on the control plane, sim sessions
sending each other texts, images and group messages, and a real HTTP receiver whose
every body the ``evolutionapi`` package (PyPI) parses with its own types.

What is compared with Evolution, field by field: the envelope of
``webhook.controller.ts`` (``event``, ``instance``, ``data``, ``destination``,
``date_time``, ``sender``, ``server_url``, ``apikey``), the message data of
``prepareMessage`` (whatsapp.baileys.service.ts), the receipt data of its
``messages.update`` handler, ``connection.update`` / ``qrcode.updated`` of its
``connectionUpdate`` (EvolutionAPI/evolution-api 2.3.6), and the ``webhook_by_events``
paths of https://doc.evolution-api.com/v2/en/configuration/webhooks."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
from evolutionapi.typing import message_types as evo
from evolutionapi.typing.message_handlers import get_message_content, is_image_message
from evolutionapi.typing.webhook import WebhookProcessor
from evolutionapi.typing.webhook_processor import WebhookEventProcessor
from nats.aio.client import Client as NATS

from node_agent.engines.sim import link
from tests.conftest import Stack, WebhookReceiver
from tests.helpers import new_tenant, unique, wait_state
from tests.test_evolution_events import conforms
from tests.test_media_out import b64, pair, png, wait_event

__all__ = ["pair"]  # the fixture (tests/test_media_out.py)

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def hook(
    receiver: WebhookReceiver, match: Callable[[str, dict[str, Any]], bool], timeout_s: float = 20
) -> tuple[str, dict[str, Any]]:
    """The first (path, body) the receiver got that ``match``es."""
    deadline = time.monotonic() + timeout_s
    while True:
        for path, body in zip(list(receiver.paths), list(receiver.events), strict=False):
            if match(path, body):
                return path, body
        if time.monotonic() > deadline:
            seen = [
                (p, b.get("event")) for p, b in zip(receiver.paths, receiver.events, strict=False)
            ]
            raise AssertionError(f"no matching Evolution webhook; got {seen}")
        time.sleep(0.05)


async def ahook(
    receiver: WebhookReceiver, match: Callable[[str, dict[str, Any]], bool], timeout_s: float = 20
) -> tuple[str, dict[str, Any]]:
    return await asyncio.to_thread(hook, receiver, match, timeout_s)


def parsed_by_evolutionapi(body: dict[str, Any]) -> Any:
    """What the evolutionapi package's processors hand to a handler of the event."""
    handled: list[Any] = []
    processor = WebhookEventProcessor()
    processor.register(body["event"], handled.append)
    assert processor.process_event(body)
    if body["event"] == "messages.upsert":
        typed: list[Any] = []
        upserts = WebhookProcessor()
        upserts.register_handler("messages.upsert", typed.append)
        assert upserts.process_webhook(body)
        assert typed[0] == handled[0]
    return handled[0]


def assert_envelope(body: dict[str, Any], stack: Stack, instance: str, url: str, own: str) -> None:
    assert set(body) == {
        "event",
        "instance",
        "data",
        "destination",
        "date_time",
        "sender",
        "server_url",
        "apikey",
    }
    assert body["instance"] == instance
    assert body["destination"] == url  # the configured URL, without the by-events path
    assert ISO.match(body["date_time"]), body["date_time"]
    assert body["sender"] == f"{own}@s.whatsapp.net"
    assert body["server_url"] == stack.base_url
    assert body["apikey"] is None
    assert conforms(body, evo.WebhookEvent) == []


async def test_an_evolution_client_sets_its_webhook_and_gets_messages_receipts_and_states(  # noqa: PLR0915 - one flow, step by step
    stack: Stack, webhook_receiver: WebhookReceiver, pair: tuple[httpx.AsyncClient, str, str, str]
) -> None:
    api, sender, receiver, to = pair
    key = api.headers["X-API-Key"]
    sender_phone = (await api.get(f"/v1/sessions/{sender}")).json()["phone"]
    stored = await api.put(f"/v1/sessions/{receiver}/settings/media", json={"inbound": "store"})
    assert stored.status_code == 200, stored.text
    url = webhook_receiver.url
    events = [
        "MESSAGES_UPSERT",
        "MESSAGES_UPDATE",
        "SEND_MESSAGE",
        "CONNECTION_UPDATE",
        "GROUPS_UPSERT",
        "GROUP_PARTICIPANTS_UPDATE",
    ]
    async with httpx.AsyncClient(base_url=stack.base_url, headers={"apikey": key}) as evolution:
        answer = await evolution.post(
            f"/webhook/set/{receiver}",
            json={
                "webhook": {
                    "enabled": True,
                    "url": url,
                    "headers": {"x-from-evolution": "yes"},
                    "byEvents": True,
                    "base64": True,
                    "events": events,
                }
            },
        )
        assert answer.status_code == 201, answer.text
        record = answer.json()
        internal = record["instanceId"]  # Evolution's instance uuid: the session's internal key
        assert isinstance(internal, str) and internal
        assert {k: v for k, v in record.items() if k not in ("id", "createdAt", "updatedAt")} == {
            "url": url,
            "headers": {"x-from-evolution": "yes"},
            "enabled": True,
            "events": events,
            "webhookByEvents": True,
            "webhookBase64": True,
            "instanceId": internal,
        }
        assert ISO.match(record["updatedAt"]) and ISO.match(record["createdAt"])
        found = await evolution.get(f"/webhook/find/{receiver}")
        assert (found.status_code, found.json()) == (200, record)
        # Evolution's answers to a wrong instance and a wrong key
        missing = await evolution.get("/webhook/find/nobody-here")
        assert (missing.status_code, missing.json()) == (
            404,
            {
                "status": 404,
                "error": "Not Found",
                "response": {"message": ['The "nobody-here" instance does not exist']},
            },
        )
        for headers in ({"apikey": "wrong"}, {}):
            refused = await evolution.get(
                f"/webhook/find/{receiver}", headers={"apikey": "", **headers}
            )
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"] == "Unauthorized"
        bad = await evolution.post(
            f"/webhook/set/{receiver}",
            json={"webhook": {"enabled": True, "url": url, "events": ["NOPE"]}},
        )
        assert (bad.status_code, bad.json()["error"]) == (400, "Bad Request")
        async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as admin:
            _, other_key = await new_tenant(admin, "evo-other")
        other = await evolution.get(f"/webhook/find/{receiver}", headers={"apikey": other_key})
        assert other.status_code == 404  # another tenant's instance does not exist for it

    # 1. a text from the sender: messages.upsert at <url>/messages-upsert
    sent = await api.post(
        f"/v1/sessions/{sender}/messages", json={"type": "text", "to": "+" + to, "text": "Olá!"}
    )
    assert sent.status_code == 202, sent.text
    out = await wait_event(
        api, sender, "message.sent", lambda e: e["data"]["message_id"] == sent.json()["message_id"]
    )
    engine_id = out["data"]["engine_message_id"]
    path, body = await ahook(
        webhook_receiver,
        lambda p, b: b["event"] == "messages.upsert" and b["data"]["key"]["id"] == engine_id,
    )
    assert path == "/hook/messages-upsert"
    assert body["event"] == "messages.upsert"
    assert_envelope(body, stack, receiver, url, to)
    data = body["data"]
    assert data["key"] == {
        "remoteJid": f"{sender_phone}@s.whatsapp.net",
        "fromMe": False,
        "id": engine_id,
    }
    assert data["message"] == {"conversation": "Olá!"}
    assert data["messageType"] == "conversation"
    assert data["status"] == "DELIVERY_ACK"
    assert isinstance(data["messageTimestamp"], int)
    assert abs(data["messageTimestamp"] - time.time()) < 120
    assert data["instanceId"] == internal
    assert isinstance(data["pushName"], str) and data["pushName"]
    assert conforms(data, evo.MessageData) == []
    assert get_message_content(parsed_by_evolutionapi(body)) == "Olá!"
    headers = next(
        h
        for (h, _), p in zip(webhook_receiver.requests, webhook_receiver.paths, strict=True)
        if p == path
    )
    assert headers["x-from-evolution"] == "yes"  # the configured headers
    assert headers["Zapfleet-Event-Type"] == "message.received"

    # 2. an image: imageMessage, with the file itself (base64) and a signed URL
    image = png(40, 30)
    sent = await api.post(
        f"/v1/sessions/{sender}/messages",
        json={
            "type": "image",
            "to": "+" + to,
            "caption": "olha",
            "media": {"base64": b64(image), "mimetype": "image/png", "filename": "p.png"},
        },
    )
    assert sent.status_code == 202, sent.text
    path, body = await ahook(
        webhook_receiver,
        lambda p, b: b["event"] == "messages.upsert" and b["data"]["messageType"] == "imageMessage",
    )
    assert path == "/hook/messages-upsert"
    assert_envelope(body, stack, receiver, url, to)
    message = body["data"]["message"]
    assert base64.b64decode(message["base64"]) == image
    part = message["imageMessage"]
    assert (part["mimetype"], part["caption"], part["fileLength"]) == (
        "image/png",
        "olha",
        str(len(image)),
    )
    assert message["mediaUrl"] == part["url"]
    async with httpx.AsyncClient() as anonymous:
        fetched = await anonymous.get(part["url"])
        assert (fetched.status_code, fetched.content) == (200, image)
    assert is_image_message(parsed_by_evolutionapi(body))
    assert conforms(body["data"], evo.MessageData) == []

    # 3. the receiver sends: send.message, then its receipts as messages.update
    reply = await api.post(
        f"/v1/sessions/{receiver}/messages",
        json={"type": "text", "to": "+" + sender_phone, "text": "Oi"},
    )
    assert reply.status_code == 202, reply.text
    message_id = reply.json()["message_id"]
    path, body = await ahook(
        webhook_receiver,
        lambda p, b: b["event"] == "send.message" and b["data"]["key"]["id"] == message_id,
    )
    assert path == "/hook/send-message"
    assert_envelope(body, stack, receiver, url, to)
    assert body["data"]["key"] == {
        "remoteJid": f"{sender_phone}@s.whatsapp.net",
        "fromMe": True,
        "id": message_id,
    }
    path, body = await ahook(
        webhook_receiver,
        lambda p, b: (
            b["event"] == "messages.update"
            and b["data"]["keyId"] == message_id
            and b["data"]["status"] == "READ"
        ),
    )
    assert path == "/hook/messages-update"
    assert_envelope(body, stack, receiver, url, to)
    update = body["data"]
    assert conforms(update, evo.MessageUpdateData) == []
    assert (update["remoteJid"], update["fromMe"], update["instanceId"]) == (
        f"{sender_phone}@s.whatsapp.net",
        True,
        internal,
    )
    statuses = {
        b["data"]["status"]
        for b in list(webhook_receiver.events)
        if b["event"] == "messages.update" and b["data"]["keyId"] == message_id
    }
    assert statuses <= {"SERVER_ACK", "DELIVERY_ACK", "READ"} and "READ" in statuses

    # 4. a group: groups.upsert when added, then a group text with key.participant
    created = await api.post(
        f"/v1/sessions/{sender}/groups", json={"subject": "Evo", "participants": ["+" + to]}
    )
    assert created.status_code == 201, created.text
    group_id = created.json()["group"]["id"]
    path, body = await ahook(
        webhook_receiver,
        lambda p, b: (
            b["event"] in ("groups.upsert", "group-participants.update")
            and group_id in str(b["data"])
        ),
    )
    assert path in ("/hook/groups-upsert", "/hook/group-participants-update")
    said = await api.post(
        f"/v1/sessions/{sender}/messages", json={"type": "text", "to": group_id, "text": "todos"}
    )
    assert said.status_code == 202, said.text
    path, body = await ahook(
        webhook_receiver,
        lambda p, b: b["event"] == "messages.upsert" and b["data"]["key"]["remoteJid"] == group_id,
    )
    assert path == "/hook/messages-upsert"
    assert body["data"]["key"]["participant"] == f"{sender_phone}@s.whatsapp.net"
    assert body["data"]["key"]["fromMe"] is False
    assert body["data"]["message"] == {"conversation": "todos"}
    assert get_message_content(parsed_by_evolutionapi(body)) == "todos"

    # 5. the connection: a stop is close, a start connecting then open
    stopped = await api.post(f"/v1/sessions/{receiver}/stop")
    assert stopped.status_code in (200, 202), stopped.text
    path, body = await ahook(
        webhook_receiver,
        lambda p, b: b["event"] == "connection.update" and b["data"]["state"] == "close",
    )
    assert path == "/hook/connection-update"
    assert body["data"] == {"instance": receiver, "state": "close", "statusReason": 428}
    mark = len(webhook_receiver.events)
    started = await api.post(f"/v1/sessions/{receiver}/start")
    assert started.status_code in (200, 202), started.text
    await wait_state(api, receiver, "CONNECTED")
    path, body = await ahook(
        webhook_receiver,
        lambda p, b: b["event"] == "connection.update" and b["data"]["state"] == "open",
    )
    assert path == "/hook/connection-update"
    assert_envelope(body, stack, receiver, url, to)
    assert body["data"] == {
        "instance": receiver,
        "wuid": f"{to}@s.whatsapp.net",
        "profileName": None,
        "profilePictureUrl": None,
        "state": "open",
        "statusReason": 200,
    }
    assert conforms(body["data"], evo.ConnectionUpdateData) == []
    states = [
        b["data"]["state"]
        for b in list(webhook_receiver.events)[mark:]
        if b["event"] == "connection.update"
    ]
    assert states[0] == "connecting" and "open" in states, states


async def test_a_new_instance_gets_its_qr_code_as_qrcode_updated(
    stack: Stack, nc: NATS, webhook_receiver: WebhookReceiver
) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as admin:
        tenant, key = await new_tenant(admin, "evo-qr")
    name = unique("qr")
    async with httpx.AsyncClient(
        base_url=stack.base_url, headers={"X-API-Key": key}, timeout=20
    ) as api:
        created = await api.post("/v1/sessions", json={"session_id": name, "engine": "sim"})
        assert created.status_code == 201, created.text
        await wait_state(api, name, "PAIRING")
        async with httpx.AsyncClient(base_url=stack.base_url, headers={"apikey": key}) as evolution:
            answer = await evolution.post(
                f"/webhook/set/{name}",
                json={  # the flat form of Evolution's docs
                    "url": webhook_receiver.url,
                    "enabled": True,
                    "webhook_by_events": False,
                    "webhook_base64": False,
                    "events": ["QRCODE_UPDATED", "CONNECTION_UPDATE"],
                },
            )
            assert answer.status_code == 201, answer.text
            assert answer.json()["webhookByEvents"] is False
        # a restart shows a new QR code
        assert (await api.post(f"/v1/sessions/{name}/stop")).status_code in (200, 202)
        assert (await api.post(f"/v1/sessions/{name}/start")).status_code in (200, 202)
        await wait_state(api, name, "PAIRING")
        path, body = await ahook(
            webhook_receiver, lambda p, b: b["event"] == "qrcode.updated" and b["instance"] == name
        )
        assert path == "/hook"  # not by events: the URL as configured
        assert set(body) == {
            "event",
            "instance",
            "data",
            "destination",
            "date_time",
            "sender",
            "server_url",
            "apikey",
        }
        assert body["sender"] is None  # not paired yet
        qrcode = parsed_by_evolutionapi(body)  # the package's processor: data["qrcode"]
        assert conforms(body["data"], evo.QRCodeInfo) == []
        assert qrcode["qrcode"]["instance"] == name and qrcode["qrcode"]["pairingCode"] is None
        assert qrcode["qrcode"]["base64"].startswith("data:image/png;base64,")
        assert base64.b64decode(qrcode["qrcode"]["base64"].split(",", 1)[1]).startswith(b"\x89PNG")
        current = (await api.get(f"/v1/sessions/{name}/qr")).json()["qr"]
        codes = [
            b["data"]["qrcode"]["code"]
            for b in list(webhook_receiver.events)
            if b.get("event") == "qrcode.updated" and b["instance"] == name
        ]
        assert current in codes or await _rotated(api, name, webhook_receiver, codes)
        # the phone scans it: connection.update open names the new account
        number = f"1555072{secrets.randbelow(9000) + 1000}"
        code = (await api.get(f"/v1/sessions/{name}/qr")).json()["qr"]
        assert (await link(nc, code, number)).ok
        await wait_state(api, name, "CONNECTED")
        _, opened = await ahook(
            webhook_receiver,
            lambda p, b: (
                b["event"] == "connection.update"
                and b["instance"] == name
                and b["data"]["state"] == "open"
            ),
        )
        assert opened["data"]["wuid"] == opened["sender"] == f"{number}@s.whatsapp.net"
        # set through zapfleet's own API, the session's webhook is a zapfleet one again
        patched = await api.patch(
            f"/v1/sessions/{name}/settings", json={"webhook_url": webhook_receiver.url}
        )
        assert patched.status_code == 200, patched.text
        async with httpx.AsyncClient(base_url=stack.base_url, headers={"apikey": key}) as evolution:
            found = await evolution.get(f"/webhook/find/{name}")
            assert (found.status_code, found.text) == (200, "null")
        await api.delete(f"/v1/sessions/{name}")
        assert tenant


async def _rotated(
    api: httpx.AsyncClient, name: str, receiver: WebhookReceiver, codes: list[str]
) -> bool:
    """The code shown now arrived too (it may have rotated since the last webhook)."""
    current = (await api.get(f"/v1/sessions/{name}/qr")).json()["qr"]
    _, body = await ahook(
        receiver,
        lambda p, b: b["event"] == "qrcode.updated" and b["data"]["qrcode"]["code"] == current,
    )
    return bool(body)
