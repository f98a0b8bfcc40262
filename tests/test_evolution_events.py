"""The Evolution API v2 webhook format (control_plane/evolution/events.py), event by event.

Golden payloads: each expected body below is written field by field from Evolution API's
own definitions, not from our code:

- the envelope (``event``, ``instance``, ``data``, ``destination``, ``date_time``,
  ``sender``, ``server_url``, ``apikey``): ``webhookData`` in Evolution's
  src/api/integrations/event/webhook/webhook.controller.ts (EvolutionAPI/evolution-api,
  release 2.3.6), ``date_time`` from ``sendDataWebhook`` (src/api/services/channel.service.ts);
- ``messages.upsert`` / ``send.message`` data: ``prepareMessage`` in
  src/api/integrations/channel/whatsapp/whatsapp.baileys.service.ts (``key``,
  ``pushName``, ``status``, ``message``, ``contextInfo``, ``messageType`` — extended text
  folded into ``conversation`` —, ``messageTimestamp``, ``instanceId``, ``source``);
  ``messages.update``: its ``messages.update`` handler (``keyId``, ``remoteJid``,
  ``fromMe``, ``participant``, ``status`` from src/utils/renderStatus.ts, ``pollUpdates``,
  ``instanceId``); ``connection.update`` / ``qrcode.updated``: its ``connectionUpdate``;
- event names and the ``webhook_by_events`` paths: the table of
  https://doc.evolution-api.com/v2/en/configuration/webhooks ("Webhook by Events");
- the shapes a client codes against: the TypedDicts of the ``evolutionapi`` package
  (PyPI, ``evolutionapi.typing.message_types``: ``WebhookEvent``, ``MessageData``,
  ``MessageKey``, ``MessageUpdateData``, ``QRCodeData``, ``ConnectionUpdateData``), and
  its ``WebhookProcessor`` / ``get_message_content`` parse every body here.
"""

from __future__ import annotations

import base64
import json
import typing
from pathlib import Path
from typing import Any, get_args, get_origin, is_typeddict

import pytest
from evolutionapi.typing import message_types as evo
from evolutionapi.typing.message_handlers import (
    get_message_content,
    is_image_message,
    is_text_message,
)
from evolutionapi.typing.webhook import WebhookProcessor

from contract.event_data import check
from contract.protocol import EventType
from control_plane.evolution._common import EvolutionError
from control_plane.evolution.events import (
    BODY_EVENT,
    EVOLUTION_EVENT,
    EVOLUTION_EVENTS,
    UNMAPPED,
    Context,
    EvolutionFilter,
    envelope,
    url_suffix,
)
from control_plane.evolution.webhook import parse_webhook
from tests.test_event_schemas import EXAMPLE

ROOT = Path(__file__).resolve().parent.parent
CTX = Context(
    instance="sales-1",
    instance_id="ses_0001",
    destination="https://hooks.example/evo",
    server_url="https://zapfleet.example",
    sender="15550001111@s.whatsapp.net",
)


def examples() -> dict[str, dict[str, Any]]:
    """One example event per type: the ones of docs/events.md."""
    found = [json.loads(raw) for raw in EXAMPLE.findall((ROOT / "docs/events.md").read_text())]
    return {e["type"]: e for e in found if isinstance(e, dict) and "type" in e and "data" in e}


def conforms(value: Any, kind: Any, where: str = "") -> list[str]:
    """Where ``value`` differs from the evolutionapi TypedDict ``kind``: a field missing
    (unless Optional), null (unless Optional) or of another type."""
    problems: list[str] = []
    if not isinstance(value, dict):
        return [f"{where or 'value'} is not an object"]
    for name, hint in typing.get_type_hints(kind).items():
        path = f"{where}.{name}" if where else name
        args = get_args(hint)
        optional = type(None) in args
        if name not in value:
            if not optional:
                problems.append(f"{path} missing")
            continue
        item = value[name]
        if item is None:
            if not optional:
                problems.append(f"{path} is null")
            continue
        kinds = [a for a in args if a is not type(None)] if optional else [hint]
        if len(kinds) > 1 or get_origin(kinds[0]) is typing.Union:
            if not isinstance(item, dict):  # a union of message TypedDicts
                problems.append(f"{path} is not an object")
            continue
        expected = kinds[0]
        if is_typeddict(expected):
            problems += conforms(item, expected, path)
        elif expected is Any:
            continue
        elif get_origin(expected) in (dict, list):
            if not isinstance(item, get_origin(expected)):
                problems.append(f"{path} is {type(item).__name__}")
        elif expected is int and (isinstance(item, bool) or not isinstance(item, int)):
            problems.append(f"{path} is {type(item).__name__}, not int")
        elif isinstance(expected, type) and not isinstance(item, expected):
            problems.append(f"{path} is {type(item).__name__}, not {expected.__name__}")
    return problems


def assert_fields(body: dict[str, Any], golden: dict[str, Any], where: str = "") -> None:
    """Field by field: the same keys, and each value equal (nested objects recursively)."""
    assert set(body) == set(golden), (where, sorted(set(body) ^ set(golden)))
    for name, expected in golden.items():
        path = f"{where}.{name}" if where else name
        if isinstance(expected, dict) and isinstance(body[name], dict):
            assert_fields(body[name], expected, path)
        else:
            assert body[name] == expected, (path, body[name], expected)


def env(event: str, date_time: str, data: Any) -> dict[str, Any]:
    return {
        "event": event,
        "instance": "sales-1",
        "data": data,
        "destination": "https://hooks.example/evo",
        "date_time": date_time,
        "sender": "15550001111@s.whatsapp.net",
        "server_url": "https://zapfleet.example",
        "apikey": None,
    }


def test_every_event_type_is_mapped_or_documented_as_unmapped() -> None:
    assert set(EVOLUTION_EVENT) | set(UNMAPPED) == set(EventType)
    assert not set(EVOLUTION_EVENT) & set(UNMAPPED)
    text = (ROOT / "docs/evolution-webhooks.md").read_text()
    for event_type in [*EVOLUTION_EVENT, *UNMAPPED]:
        assert f"`{event_type.value}`" in text, event_type  # the doc lists every type
    for event_type, example in examples().items():
        body = envelope(example, CTX)
        if EventType(event_type) in UNMAPPED:
            assert body is None, event_type
            continue
        assert body is not None, event_type
        assert body["event"] == BODY_EVENT[EVOLUTION_EVENT[EventType(event_type)]]
        assert conforms(body, evo.WebhookEvent) == [], event_type


def test_a_received_group_text_is_a_messages_upsert_with_baileys_fields() -> None:
    body = envelope(examples()["message.received"], CTX)
    assert body is not None
    golden = env(
        "messages.upsert",
        "2024-06-10T06:15:00.250Z",  # ts 1718000100.25, Date.toISOString()
        {
            "key": {
                "remoteJid": "120363012345678901@g.us",
                "fromMe": False,
                "id": "3EB0C767D097B7C7C030",
                "participant": "15550002222@s.whatsapp.net",
            },
            "pushName": "15550002222",  # Evolution's fallback in a group: the number
            "status": "DELIVERY_ACK",
            "message": {"conversation": "Hello!"},
            "contextInfo": None,
            "messageType": "conversation",
            "messageTimestamp": 1718000100,
            "instanceId": "ses_0001",
            "source": "unknown",  # Baileys getDevice: 3E + 18 characters is no known device
        },
    )
    assert_fields(body, golden)
    assert conforms(body["data"], evo.MessageData) == []
    handled: list[Any] = []
    processor = WebhookProcessor()
    processor.register_handler("messages.upsert", handled.append)
    assert processor.process_webhook(json.dumps(body).encode())
    assert is_text_message(handled[0]) and get_message_content(handled[0]) == "Hello!"


def test_received_media_carries_the_file_as_base64_and_its_url() -> None:
    image = b"\x89PNG\r\n\x1a\n-not-really-a-png"
    event = {
        "id": "e1",
        "type": "message.received",
        "tenant": "acme",
        "session_id": "sales-1",
        "ts": 1718000200.0,
        "data": {
            "message_id": "3A0123456789ABCDEF01",
            "from": "15550002222",
            "from_lid": None,
            "chat": "15550002222",
            "is_group": False,
            "type": "image",
            "text": "look",
            "content": {"reply_to": "3EB0AA", "mentions": ["15550003333"]},
            "timestamp": 1718000199.0,
            "media": {
                "mimetype": "image/png",
                "size": len(image),
                "sha256": "00" * 32,
                "id": "md_1",
                "stored": True,
            },
        },
    }
    ctx = Context(
        **{
            **{f: getattr(CTX, f) for f in CTX.__slots__},
            "media_url": "https://zapfleet.example/v1/media/tok",
            "media_base64": base64.b64encode(image).decode(),
        }
    )
    body = envelope(event, ctx)
    assert body is not None
    data = body["data"]
    assert_fields(
        data,
        {
            "key": {
                "remoteJid": "15550002222@s.whatsapp.net",
                "fromMe": False,
                "id": "3A0123456789ABCDEF01",
            },
            "pushName": "15550002222",
            "status": "DELIVERY_ACK",
            "message": {
                "imageMessage": {
                    "url": "https://zapfleet.example/v1/media/tok",
                    "mimetype": "image/png",
                    "caption": "look",
                    "fileSha256": base64.b64encode(bytes(32)).decode(),  # Baileys: base64
                    "fileLength": str(len(image)),  # a Long: a string in JSON
                },
                "mediaUrl": "https://zapfleet.example/v1/media/tok",
                "base64": base64.b64encode(image).decode(),
            },
            "contextInfo": {"stanzaId": "3EB0AA", "mentionedJid": ["15550003333@s.whatsapp.net"]},
            "messageType": "imageMessage",
            "messageTimestamp": 1718000199,
            "instanceId": "ses_0001",
            "source": "ios",  # 3A + 18: an iPhone
        },
    )
    assert conforms(data, evo.MessageData) == []
    assert is_image_message(data)
    assert base64.b64decode(data["message"]["base64"]) == image


def test_receipts_are_messages_update_and_sends_are_send_message() -> None:
    ack = envelope(examples()["message.ack"], CTX)
    assert ack is not None
    assert_fields(
        ack,
        env(
            "messages.update",
            "2024-06-10T06:16:43.900Z",
            {
                "messageId": "m_4f2a9c0d1e2b3a4c5d6e",
                "keyId": "m_4f2a9c0d1e2b3a4c5d6e",  # the id the send answered with
                "remoteJid": "15550002222@s.whatsapp.net",
                "fromMe": True,
                "participant": None,
                "status": "READ",
                "instanceId": "ses_0001",
            },
        ),
    )
    assert conforms(ack["data"], evo.MessageUpdateData) == []
    for status, evolution in (
        ("server", "SERVER_ACK"),
        ("delivered", "DELIVERY_ACK"),
        ("failed", "ERROR"),
    ):
        example = examples()["message.ack"]
        other = {**example, "data": {**example["data"], "status": status}}
        mapped = envelope(other, CTX)
        assert mapped is not None and mapped["data"]["status"] == evolution
    sent = envelope(examples()["message.sent"], CTX)
    assert sent is not None
    assert sent["event"] == "send.message"
    assert sent["data"]["key"] == {
        "remoteJid": "15550002222@s.whatsapp.net",
        "fromMe": True,
        "id": "m_4f2a9c0d1e2b3a4c5d6e",
    }
    assert sent["data"]["messageType"] == "conversation"
    assert (sent["data"]["status"], sent["data"]["pushName"]) == ("PENDING", "Você")
    assert conforms(sent["data"], evo.MessageData) == []


def test_connection_update_and_qrcode_updated() -> None:
    status = examples()["session.status"]
    opened = envelope(status, CTX)
    assert opened is not None
    assert_fields(
        opened,
        env(
            "connection.update",
            "2024-06-10T06:13:20.123Z",
            {
                "instance": "sales-1",
                "wuid": "15550001111@s.whatsapp.net",
                "profileName": None,
                "profilePictureUrl": None,
                "state": "open",
                "statusReason": 200,
            },
        ),
    )
    assert conforms(opened["data"], evo.ConnectionUpdateData) == []
    for state, reason, expected in (
        ("PAIRING", None, ("connecting", 200)),
        ("RECONNECTING", "stream error", ("connecting", 200)),
        ("DISCONNECTED", "connection lost", ("close", 428)),
        ("LOGGED_OUT", "logged out from the phone", ("close", 401)),
        ("STOPPED", "logged out by request: pair again to use it", ("close", 401)),
    ):
        event = {**status, "data": {**status["data"], "state": state, "reason": reason}}
        mapped = envelope(event, CTX)
        assert mapped is not None
        assert (mapped["data"]["state"], mapped["data"]["statusReason"]) == expected, state
    qr = envelope(examples()["session.qr"], CTX)
    assert qr is not None
    code = examples()["session.qr"]["data"]["qr"]
    data_url = qr["data"]["qrcode"]["base64"]
    assert qr["event"] == "qrcode.updated"
    assert qr["data"]["qrcode"] == {
        "instance": "sales-1",
        "pairingCode": None,
        "code": code,
        "base64": data_url,
    }
    assert conforms(qr["data"], evo.QRCodeInfo) == []
    assert data_url.startswith("data:image/png;base64,")
    assert base64.b64decode(data_url.split(",", 1)[1]).startswith(b"\x89PNG")


def test_deletes_edits_reactions_presence_calls_and_groups() -> None:
    found = examples()
    revoked = envelope(found["message.revoked"], CTX)
    assert revoked is not None and revoked["event"] == "messages.delete"
    assert revoked["data"] == {
        "remoteJid": "15550002222@s.whatsapp.net",
        "fromMe": False,
        "id": "3EB0C767D097B7C7C030",
    }
    assert conforms(revoked["data"], evo.MessageDeleteData) == []
    edited = envelope(found["message.edited"], CTX)
    assert edited is not None and edited["event"] == "messages.edited"
    assert edited["data"]["editedMessage"] == {"conversation": "Hello again!"}
    assert edited["data"]["type"] == "MESSAGE_EDIT"
    reaction = envelope(found["message.reaction"], CTX)
    assert reaction is not None and reaction["event"] == "messages.upsert"
    assert reaction["data"]["messageType"] == "reactionMessage"
    assert reaction["data"]["message"]["reactionMessage"]["key"]["id"] == "m_4f2a9c0d1e2b3a4c5d6e"
    assert reaction["data"]["message"]["reactionMessage"]["text"] == "👍"
    presence = envelope(found["chat.presence"], CTX)
    assert presence is not None and presence["event"] == "presence.update"
    assert presence["data"] == {
        "id": "15550002222@s.whatsapp.net",
        "presences": {"15550002222@s.whatsapp.net": {"lastKnownPresence": "composing"}},
    }
    call = envelope(found["call.received"], CTX)
    assert call is not None and call["event"] == "call"
    assert (call["data"]["status"], call["data"]["from"]) == ("offer", "15550002222@s.whatsapp.net")
    joined = envelope(found["group.joined"], CTX)
    assert joined is not None and joined["event"] == "groups.upsert"
    assert joined["data"][0]["participants"][0] == {
        "id": "15550001111@s.whatsapp.net",
        "admin": "superadmin",
    }
    added = envelope(found["group.participants"], CTX)
    assert added is not None and added["event"] == "group-participants.update"
    assert added["data"] == {
        "id": "120363012345678901@g.us",
        "author": "15550001111@s.whatsapp.net",
        "participants": ["15550003333@s.whatsapp.net"],
        "action": "add",
    }
    updated = envelope(found["group.updated"], CTX)
    assert updated is not None and updated["event"] == "groups.update"
    assert updated["data"] == [
        {
            "id": "120363012345678901@g.us",
            "author": "15550001111@s.whatsapp.net",
            "subject": "Launch team",
            "announce": True,
        }
    ]


def test_by_events_paths_are_the_documented_ones() -> None:
    """https://doc.evolution-api.com/v2/en/configuration/webhooks, "Webhook by Events"."""
    documented = {
        "QRCODE_UPDATED": "qrcode-updated",
        "CONNECTION_UPDATE": "connection-update",
        "MESSAGES_UPSERT": "messages-upsert",
        "MESSAGES_UPDATE": "messages-update",
        "MESSAGES_DELETE": "messages-delete",
        "SEND_MESSAGE": "send-message",
        "PRESENCE_UPDATE": "presence-update",
        "GROUPS_UPSERT": "groups-upsert",
        "GROUP_UPDATE": "groups-update",  # Evolution sends it as groups.update
        "GROUP_PARTICIPANTS_UPDATE": "group-participants-update",
        "MESSAGES_EDITED": "messages-edited",
        "CALL": "call",
    }
    assert {name: url_suffix(name) for name in BODY_EVENT} == documented


def test_the_filter_takes_evolution_names() -> None:
    accepts = EvolutionFilter(["MESSAGES_UPSERT", "GROUPS_UPDATE"])
    assert accepts("message.received") and accepts("message.reaction")
    assert accepts("group.updated")
    assert not accepts("message.ack") and not accepts("session.status")
    assert not accepts("node.down")
    nothing = EvolutionFilter([])
    assert not any(nothing(t.value) for t in EventType)
    everything = EvolutionFilter(list(EVOLUTION_EVENTS))
    assert {t for t in EventType if everything(t.value)} == set(EVOLUTION_EVENT)


def test_webhook_set_takes_both_of_evolutions_body_forms() -> None:
    nested = parse_webhook(
        {
            "webhook": {
                "enabled": True,
                "url": "https://hooks.example/evo",
                "headers": {"authorization": "Bearer abc"},
                "byEvents": True,
                "base64": True,
                "events": ["MESSAGES_UPSERT", "SEND_MESSAGE"],
            }
        }
    )
    assert (nested.by_events, nested.base64, nested.events) == (
        True,
        True,
        ["MESSAGES_UPSERT", "SEND_MESSAGE"],
    )
    assert nested.headers == {"authorization": "Bearer abc"}
    flat = parse_webhook(
        {
            "url": "https://hooks.example/evo",
            "webhook_by_events": True,
            "webhook_base64": False,
            "events": ["QRCODE_UPDATED"],
            "enabled": True,
        }
    )
    assert (flat.by_events, flat.base64, flat.events) == (True, False, ["QRCODE_UPDATED"])
    # Evolution's WebhookController.set: no events = every event; disabled = none
    every = parse_webhook({"webhook": {"enabled": True, "url": "https://h.example"}})
    assert "MESSAGES_UPSERT" in every.events and "CONNECTION_UPDATE" in every.events
    off = parse_webhook(
        {"webhook": {"enabled": False, "url": "https://h.example", "events": ["CALL"]}}
    )
    assert off.events == [] and off.enabled is False


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"webhook": {"url": "https://h.example"}}, "enabled"),
        ({"webhook": {"enabled": True}}, "url"),
        ({"webhook": {"enabled": True, "url": ""}}, "url"),
        ({"webhook": {"enabled": True, "url": "https://h", "events": ["NOPE"]}}, "NOPE"),
        ({"webhook": {"enabled": True, "url": "https://h", "byEvents": "yes"}}, "byEvents"),
        (
            {"webhook": {"enabled": True, "url": "https://h", "headers": {"jwt_key": "k"}}},
            "jwt_key",
        ),
        ([1, 2], "object"),
        (
            {"webhook": {"enabled": True, "url": "https://h", "headers": {"x": "a\r\nb: c"}}},
            "control",
        ),
        (
            {"webhook": {"enabled": True, "url": "https://h", "headers": {"Content-Length": "1"}}},
            "zapfleet",
        ),
        (
            {"webhook": {"enabled": True, "url": "https://h", "headers": {"bad name": "1"}}},
            "header name",
        ),
        ({"webhook": {"enabled": True, "url": "https://h", "headers": {"x": "€"}}}, "Latin-1"),
    ],
)
def test_webhook_set_refuses_what_evolution_refuses(body: Any, why: str) -> None:
    with pytest.raises(EvolutionError) as raised:
        parse_webhook(body)
    assert raised.value.status_code == 400
    assert why in json.dumps(raised.value.message)


# -- the neonize engine's messages ------------------------------------------------------


def _neonize_received(
    message: Any, *, group: bool = False, message_id: str = "3A0011223344556677AA"
) -> dict[str, Any]:
    """A whatsmeow message event as the neonize engine reports it (``inbound_of``), in
    the ``message.received`` the supervisor builds of it (node_agent/supervisor.py)."""
    from neonize.proto.Neonize_pb2 import JID, Message, MessageInfo, MessageSource

    from node_agent.engines.neonize.protos import inbound_of

    def jid_of(user: str, server: str) -> Any:
        return JID(User=user, Server=server, RawAgent=0, Device=0, Integrator=0, IsEmpty=False)

    sender = jid_of("15550003333", "s.whatsapp.net")
    chat = jid_of("120363012345678901", "g.us") if group else sender
    source = MessageSource(Chat=chat, Sender=sender, IsFromMe=False, IsGroup=group)
    info = MessageInfo(MessageSource=source, ID=message_id, Timestamp=1718000000, Pushname="Ann")
    inbound = inbound_of(Message(Info=info, Message=message))
    assert inbound is not None
    chat_id = inbound.chat or inbound.sender or ""
    data: dict[str, Any] = {
        "message_id": inbound.message_id,
        "from": inbound.sender,
        "from_lid": inbound.sender_lid,
        "chat": chat_id,
        "is_group": chat_id.endswith("@g.us"),
        "type": inbound.type,
        "text": inbound.text,
        "content": inbound.content,
        "timestamp": inbound.timestamp,
    }
    if inbound.media is not None:
        data["media"] = {"mimetype": inbound.media.mimetype, "size": inbound.media.size}
    assert check("message.received", data) is None
    return {
        "id": "e",
        "type": "message.received",
        "tenant": "acme",
        "session_id": "sales-1",
        "ts": 1718000000.5,
        "data": data,
    }


def test_messages_of_the_neonize_engine_keep_the_push_name_quotes_and_kinds() -> None:
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    from node_agent.engines.neonize.protos import build_poll, build_text

    reply = build_text("@15550001111 yes", reply_to="3EB0QUOTED", mentions=["15550001111"])
    body = envelope(_neonize_received(reply, group=True), CTX)
    assert body is not None
    data = body["data"]
    assert data["pushName"] == "Ann"  # whatsmeow's Pushname
    assert data["key"] == {
        "remoteJid": "120363012345678901@g.us",
        "fromMe": False,
        "id": "3A0011223344556677AA",
        "participant": "15550003333@s.whatsapp.net",
    }
    assert (data["messageType"], data["message"]) == (
        "conversation",
        {"conversation": "@15550001111 yes"},
    )
    assert data["contextInfo"] == {
        "stanzaId": "3EB0QUOTED",
        "mentionedJid": ["15550001111@s.whatsapp.net"],
    }
    assert (data["source"], data["messageTimestamp"]) == ("ios", 1718000000)
    assert conforms(data, evo.MessageData) == []

    image = e2e.Message(
        imageMessage=e2e.ImageMessage(mimetype="image/jpeg", fileLength=1234, caption="pic")
    )
    mapped = envelope(_neonize_received(image), CTX)
    assert mapped is not None
    assert mapped["data"]["message"] == {
        "imageMessage": {"mimetype": "image/jpeg", "caption": "pic", "fileLength": "1234"}
    }
    assert is_image_message(mapped["data"])

    location = e2e.Message(
        locationMessage=e2e.LocationMessage(degreesLatitude=-23.5, degreesLongitude=-46.6)
    )
    mapped = envelope(_neonize_received(location), CTX)
    assert mapped is not None
    assert mapped["data"]["message"] == {
        "locationMessage": {"degreesLatitude": -23.5, "degreesLongitude": -46.6}
    }

    contact = e2e.Message(contactMessage=e2e.ContactMessage(displayName="Bea", vcard="BEGIN:VCARD"))
    mapped = envelope(_neonize_received(contact), CTX)
    assert mapped is not None
    assert mapped["data"]["messageType"] == "contactMessage"
    assert mapped["data"]["message"]["contactMessage"]["displayName"] == "Bea"

    poll = build_poll("Lunch?", ["Sushi", "Pizza"], 1)
    mapped = envelope(_neonize_received(poll), CTX)
    assert mapped is not None
    assert mapped["data"]["messageType"] == "pollCreationMessageV3"
    assert mapped["data"]["message"]["pollCreationMessageV3"] == {
        "name": "Lunch?",
        "options": [{"optionName": "Sushi"}, {"optionName": "Pizza"}],
        "selectableOptionsCount": 1,
    }


def test_webhook_find_answers_the_documented_fields() -> None:
    """https://doc.evolution-api.com/v2/en/configuration/webhooks, "Locating Webhook":
    ``{"enabled": true, "url": "[url]", "webhookByEvents": false, "events": [...]}`` —
    and the rest of Evolution's ``Webhook`` record (prisma/postgresql-schema.prisma:
    ``id``, ``headers``, ``webhookBase64``, ``createdAt``, ``updatedAt``, ``instanceId``)."""
    from contract.protocol import SessionRecord, SessionSpec
    from control_plane.evolution.webhook import webhook_view

    record = SessionRecord(
        spec=SessionSpec(session_id="sales-1", tenant="acme", uid="u0123"),
        webhook_url="https://hooks.example/evo",
        webhook_events=["MESSAGES_UPSERT"],
        webhook_format="evolution",
        created_at=1718000000.0,
        updated_at=1718000001.5,
    )
    view = webhook_view(record)
    assert view is not None
    assert {k: view[k] for k in ("enabled", "url", "webhookByEvents", "events")} == {
        "enabled": True,
        "url": "https://hooks.example/evo",
        "webhookByEvents": False,
        "events": ["MESSAGES_UPSERT"],
    }
    assert view == {
        "id": "wh_u0123",
        "url": "https://hooks.example/evo",
        "headers": None,
        "enabled": True,
        "events": ["MESSAGES_UPSERT"],
        "webhookByEvents": False,
        "webhookBase64": False,
        "createdAt": "2024-06-10T06:13:20.000Z",
        "updatedAt": "2024-06-10T06:13:21.500Z",
        "instanceId": "u0123",
    }
    record.webhook_format = None  # a zapfleet-format webhook is not Evolution's
    assert webhook_view(record) is None
