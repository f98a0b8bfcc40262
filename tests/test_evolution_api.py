"""The Evolution API v2 facade (issue 20, docs/evolution.md), driven by a client nobody
here wrote: the ``evolutionapi`` package from PyPI (``EvolutionClient``, sync, on
``requests``: called through ``asyncio.to_thread``). Real processes: a control plane with
``ZAPFLEET_EVOLUTION=1`` beside the suite's sim agent, NATS and Valkey. What the client
sends arrives at a second sim instance (its events, checked with EventLog).

Golden shapes are Evolution's documented ones:
- connect / 404 body: https://doc.evolution-api.com/v2/api-reference/instance-controller/instance-connect
- create / connectionState / logout / delete bodies: EvolutionAPI/evolution-api,
  src/api/controllers/instance.controller.ts
- sendText answer: https://doc.evolution-api.com/v2/api-reference/message-controller/send-text
- 401 body: EvolutionAPI/evolution-api, src/api/guards/auth.guard.ts (UnauthorizedException)
"""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import pytest_asyncio
import requests
from evolutionapi.client import EvolutionClient
from evolutionapi.exceptions import EvolutionAuthenticationError, EvolutionNotFoundError
from evolutionapi.models.chat import (
    CheckIsWhatsappNumber,
    Presence,
    ProfilePicture,
    ReadMessage,
    UpdateMessage,
)
from evolutionapi.models.chat import (
    MediaMessage as MediaMessageRequest,
)
from evolutionapi.models.group import (
    CreateGroup,
    GroupSubject,
    UpdateParticipant,
    UpdateSetting,
)
from evolutionapi.models.instance import InstanceConfig
from evolutionapi.models.message import (
    Contact,
    ContactMessage,
    LocationMessage,
    MediaMessage,
    PollMessage,
    QuotedMessage,
    ReactionMessage,
    TextMessage,
)
from evolutionapi.models.presence import PresenceStatus
from evolutionapi.models.profile import FetchProfile, PrivacySettings, ProfileName, ProfileStatus
from nats.aio.client import Client as NATS
from PIL import Image

from contract.protocol import Event
from control_plane.app import create_app
from control_plane.evolution._common import instance_tenant
from control_plane.settings import ControlPlaneSettings
from node_agent.engines.sim import lid_of, link
from node_agent.media_convert import ffmpeg_path
from tests.agent_support import EventLog, phone
from tests.conftest import (
    ADMIN_KEY,
    ARTIFACTS,
    LIMIT_CLASSES,
    Stack,
    spawn,
    stop_process,
    wait_until_ready,
)
from tests.helpers import new_tenant, unique
from zapfleet._env import SettingsError
from zapfleet.devservers import free_port, wait_for_port


@dataclass
class Facade:
    base_url: str
    admin: EvolutionClient  # the global key


@pytest.fixture(scope="module")
def facade(stack: Stack) -> Iterator[Facade]:
    """A control plane with the facade on at the root paths (the suite's shared one runs
    without it), beside the suite's sim agent."""
    port = free_port()
    process = spawn(
        "control-plane-evolution",
        ["control-plane"],
        {
            "ZAPFLEET_NATS_URL": stack.nats_url,
            "ZAPFLEET_VALKEY_URL": stack.valkey_url,
            "ZAPFLEET_ADMIN_KEY": ADMIN_KEY,
            "ZAPFLEET_HTTP_PORT": str(port),
            "ZAPFLEET_DEFAULT_ENGINE": "sim",
            "ZAPFLEET_EVOLUTION": "1",
            "ZAPFLEET_RECONCILER": "false",  # the suite's control plane reconciles
            "ZAPFLEET_WEBHOOKS_IN_PROCESS": "false",
            "ZAPFLEET_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
            **{f"ZAPFLEET_RATE_{c}": "1000000/60" for c in LIMIT_CLASSES},
        },
        ARTIFACTS / "logs",
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, 60, None)
        wait_until_ready(f"{base_url}/monitoring/ready", process)
        yield Facade(base_url=base_url, admin=EvolutionClient(base_url, ADMIN_KEY))
    finally:
        stop_process(process)


@dataclass
class Instance:
    name: str
    token: str  # the ``hash`` instance create answered
    phone: str
    log: EventLog

    @property
    def jid(self) -> str:
        return f"{self.phone}@s.whatsapp.net"

    async def seen(self, type_: str, predicate: Callable[[Event], bool]) -> Event:
        return await self.log.wait_for(
            lambda e: e.session_id == self.name and e.type == type_ and predicate(e), 15
        )


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The client is synchronous (requests): off the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def create_and_pair(facade: Facade, nc: NATS, name: str, number: str) -> Instance:
    log = EventLog()
    await log.start(nc, instance_tenant(name))
    created = await call(
        facade.admin.instances.create_instance,
        InstanceConfig(instanceName=name, qrcode=True, integration="WHATSAPP-BAILEYS"),
    )
    # instance.controller.ts: instance, hash, webhook, websocket, rabbitmq, sqs, settings, qrcode
    assert created["instance"]["instanceName"] == name
    assert created["instance"]["status"] == "created"
    assert created["instance"]["integration"] == "WHATSAPP-BAILEYS"
    assert set(created) >= {"instance", "hash", "webhook", "settings", "qrcode"}
    assert created["settings"] == {
        "rejectCall": False,
        "msgCall": "",
        "groupsIgnore": False,
        "alwaysOnline": False,
        "readMessages": False,
        "readStatus": False,
        "syncFullHistory": False,
    }
    token = created["hash"]
    assert isinstance(token, str) and token.startswith("zf_")
    qr = created["qrcode"]
    assert qr["base64"].startswith("data:image/png;base64,")
    png = base64.b64decode(qr["base64"].split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert (await link(nc, qr["code"], number)).ok
    instance = Instance(name=name, token=token, phone=number, log=log)
    await wait_open(facade, instance)
    return instance


async def wait_open(facade: Facade, instance: Instance, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = await call(
            facade.admin.instance_operations.get_connection_state, instance.name, instance.token
        )
        if state["instance"]["state"] == "open":
            assert state == {"instance": {"instanceName": instance.name, "state": "open"}}
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{instance.name} never opened: {state}")


@dataclass
class Pair:
    facade: Facade
    nc: NATS
    client: EvolutionClient  # base URL + a key that is not the instance's: tokens per call
    ann: Instance
    bob: Instance


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pair(facade: Facade, nats_url: str) -> AsyncIterator[Pair]:
    nc = await nats.connect(nats_url)
    ann = await create_and_pair(facade, nc, unique("ann"), phone())
    bob = await create_and_pair(facade, nc, unique("bob"), phone())
    # the instance token is a zapfleet key too: zapfleet's own API turns pacing off (an
    # Evolution client has no such knob; instances keep zapfleet's default pacing)
    for instance in (ann, bob):
        async with httpx.AsyncClient(
            base_url=facade.base_url, headers={"X-API-Key": instance.token}
        ) as api:
            patched = await api.patch(
                f"/v1/sessions/{instance.name}/settings", json={"pacing": {"enabled": False}}
            )
            assert patched.status_code == 200, patched.text
    yield Pair(
        facade=facade,
        nc=nc,
        client=EvolutionClient(facade.base_url, "not-a-key"),
        ann=ann,
        bob=bob,
    )
    for instance in (ann, bob):
        await instance.log.stop()
    await nc.close()


def sent_key(answer: dict[str, Any], to: Instance | str) -> str:
    """The Baileys-like answer of every send: key, message, messageTimestamp, PENDING."""
    remote = to.jid if isinstance(to, Instance) else to
    assert answer["key"]["remoteJid"] == remote, answer
    assert answer["key"]["fromMe"] is True
    assert answer["key"]["id"].startswith("m_")
    assert answer["status"] == "PENDING"
    assert int(answer["messageTimestamp"]) >= int(time.time()) - 60
    return str(answer["key"]["id"])


async def received(pair: Pair, sender: Instance, receiver: Instance, message_id: str) -> Event:
    """What ``receiver`` got of ``sender``'s message ``message_id`` (our id: its
    ``message.sent`` names the WhatsApp id the receiver sees)."""
    sent = await sender.seen("message.sent", lambda e: e.data["message_id"] == message_id)
    engine_id = sent.data["engine_message_id"]
    return await receiver.seen("message.received", lambda e: e.data["message_id"] == engine_id)


def png_file(tmp_path: Path) -> str:
    path = tmp_path / "picture.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path, format="PNG")
    return str(path)


def wav_file(tmp_path: Path) -> str:
    path = tmp_path / "memo.wav"
    subprocess.run(
        [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "sine=frequency=440:duration=1", "-f", "wav", str(path)],
        check=True,
    )  # fmt: skip
    return str(path)


# -- messages ----------------------------------------------------------------------------------


async def test_every_message_kind_reaches_the_other_instance(pair: Pair, tmp_path: Path) -> None:
    client, ann, bob = pair.client, pair.ann, pair.bob
    send = client.messages

    text = await call(
        send.send_text, ann.name, TextMessage(number=bob.phone, text="hello bob"), ann.token
    )
    text_id = sent_key(text, bob)
    assert text["message"] == {"extendedTextMessage": {"text": "hello bob"}}
    hello = await received(pair, ann, bob, text_id)
    assert (hello.data["type"], hello.data["text"], hello.data["from"]) == (
        "text",
        "hello bob",
        ann.phone,
    )

    # a reply (quoted) by jid: this client's send_text drops quoted/mentioned, so the
    # same model goes through its own post()
    reply = await call(
        client.post,
        f"message/sendText/{bob.name}",
        data=TextMessage(
            number=ann.jid,
            text="a reply",
            quoted=QuotedMessage(key={"id": hello.data["message_id"]}),
        ).__dict__,
        instance_token=bob.token,
    )
    seen = await received(pair, bob, ann, sent_key(reply, ann))
    assert seen.data["text"] == "a reply"
    assert seen.data["content"]["reply_to"] == hello.data["message_id"]

    image = await call(
        send.send_media,
        ann.name,
        MediaMessage(
            number=bob.phone,
            mediatype="image",
            mimetype="image/png",
            caption="a red picture",
            fileName="picture.png",
        ),
        ann.token,
        png_file(tmp_path),
    )
    assert image["message"]["imageMessage"]["caption"] == "a red picture"
    got = await received(pair, ann, bob, sent_key(image, bob))
    assert (got.data["type"], got.data["text"]) == ("image", "a red picture")
    assert got.data["content"]["media"]["mimetype"] == "image/png"

    audio = await call(
        send.send_whatsapp_audio, ann.name, {"number": bob.phone}, ann.token, wav_file(tmp_path)
    )
    assert audio["message"]["audioMessage"]["ptt"] is True
    got = await received(pair, ann, bob, sent_key(audio, bob))
    assert got.data["type"] == "audio" and got.data["content"]["voice_note"] is True
    assert got.data["content"]["media"]["mimetype"] == "audio/ogg; codecs=opus"

    sticker = await call(
        send.send_sticker, ann.name, {"number": bob.phone}, ann.token, png_file(tmp_path)
    )
    got = await received(pair, ann, bob, sent_key(sticker, bob))
    assert got.data["type"] == "sticker"
    assert got.data["content"]["media"]["mimetype"] == "image/webp"

    location = await call(
        send.send_location,
        ann.name,
        LocationMessage(
            number=bob.phone, name="Office", address="Main St 1", latitude=52.52, longitude=13.4
        ),
        ann.token,
    )
    assert location["message"]["locationMessage"]["degreesLatitude"] == 52.52
    got = await received(pair, ann, bob, sent_key(location, bob))
    assert got.data["type"] == "location"
    assert (got.data["content"]["latitude"], got.data["content"]["longitude"]) == (52.52, 13.4)
    assert got.data["content"]["name"] == "Office"

    card = Contact(fullName="Carla", wuid="15550009999", phoneNumber="+15550009999")
    contact = await call(
        send.send_contact, ann.name, ContactMessage(number=bob.phone, contact=[card]), ann.token
    )
    assert contact["message"]["contactMessage"]["displayName"] == "Carla"
    got = await received(pair, ann, bob, sent_key(contact, bob))
    assert got.data["type"] == "contact"
    assert got.data["content"]["display_name"] == "Carla"

    poll = await call(
        send.send_poll,
        ann.name,
        PollMessage(number=bob.phone, name="Lunch?", selectableCount=1, values=["yes", "no"]),
        ann.token,
    )
    assert poll["message"]["pollCreationMessage"]["options"] == [
        {"optionName": "yes"},
        {"optionName": "no"},
    ]
    got = await received(pair, ann, bob, sent_key(poll, bob))
    assert got.data["type"] == "poll"
    assert got.data["content"]["options"] == ["yes", "no"]

    # bob reacts to ann's poll: ann sees the reaction on her message (our id)
    reaction = await call(
        send.send_reaction,
        bob.name,
        ReactionMessage(
            key={"remoteJid": ann.jid, "fromMe": False, "id": got.data["message_id"]},
            reaction="👍",
        ),
        bob.token,
    )
    sent_key(reaction, ann)
    reacted = await ann.seen(
        "message.reaction", lambda e: e.data["message_id"] == poll["key"]["id"]
    )
    assert reacted.data["emoji"] == "👍"


async def test_edit_delete_mark_read_and_find_messages(pair: Pair) -> None:
    client, ann, bob = pair.client, pair.ann, pair.bob
    sent = await call(
        client.messages.send_text, ann.name, TextMessage(number=bob.phone, text="typo"), ann.token
    )
    message_id = sent_key(sent, bob)
    got = await received(pair, ann, bob, message_id)
    engine_id = got.data["message_id"]

    edited = await call(
        client.chat.update_message,
        ann.name,
        UpdateMessage(
            number=bob.phone,
            key={"remoteJid": bob.jid, "fromMe": True, "id": message_id},
            text="fixed",
        ),
        ann.token,
    )
    assert edited["message"]["protocolMessage"]["type"] == "MESSAGE_EDIT"
    seen = await bob.seen("message.edited", lambda e: e.data["message_id"] == engine_id)
    assert seen.data["text"] == "fixed"

    # bob marks it read: ann gets the read receipt of her message
    read = await call(
        client.chat.mark_message_as_read,
        bob.name,
        [ReadMessage(remote_jid=ann.jid, from_me=False, id=engine_id)],
        bob.token,
    )
    assert read == {"message": "Read messages", "read": "success"}
    await ann.seen(
        "message.ack",
        lambda e: e.data["message_id"] == message_id and e.data["status"] == "read",
    )

    found = await call(client.chat.get_messages, ann.name, bob.jid, ann.token)
    records = found["messages"]["records"]
    assert found["messages"]["currentPage"] == 1
    assert found["messages"]["total"] == len(records) >= 1
    mine = next(r for r in records if r["key"]["id"] == message_id)
    assert mine["key"] == {"id": message_id, "fromMe": True, "remoteJid": bob.jid}
    assert mine["messageType"] == "conversation"

    # deleteMessageForEveryone: a DELETE with a body (this client's delete() takes none)
    deleted = await asyncio.to_thread(
        requests.delete,
        f"{pair.facade.base_url}/chat/deleteMessageForEveryone/{ann.name}",
        headers={"apikey": ann.token},
        json={"id": message_id, "remoteJid": bob.jid, "fromMe": True},
        timeout=10,
    )
    assert deleted.ok, deleted.text
    assert deleted.json()["message"]["protocolMessage"]["type"] == "REVOKE"
    await bob.seen("message.revoked", lambda e: e.data["message_id"] == engine_id)


async def test_whatsapp_numbers(pair: Pair) -> None:
    nobody = phone()
    checked = await call(
        pair.client.chat.check_is_whatsapp_numbers,
        pair.ann.name,
        CheckIsWhatsappNumber(numbers=[pair.bob.phone, nobody]),
        pair.ann.token,
    )
    assert checked == [
        {"exists": True, "jid": pair.bob.jid, "number": pair.bob.phone},
        {"exists": False, "jid": f"{nobody}@s.whatsapp.net", "number": nobody},
    ]


# -- groups ------------------------------------------------------------------------------------


async def test_groups(pair: Pair) -> None:
    group_api, ann, bob = pair.client.group, pair.ann, pair.bob
    created = await call(
        group_api.create_group,
        ann.name,
        CreateGroup(subject="Team", participants=[bob.phone], description="our team"),
        ann.token,
    )
    group = created["id"]
    assert group.endswith("@g.us")
    assert (created["subject"], created["desc"], created["owner"]) == (
        "Team",
        "our team",
        ann.jid,
    )
    admins = {p["id"]: p["admin"] for p in created["participants"]}
    assert admins == {ann.jid: "superadmin", bob.jid: None}

    listed = await call(group_api.fetch_all_groups, ann.name, ann.token, True)
    assert [g["id"] for g in listed if g["id"] == group] == [group]
    assert "participants" in next(g for g in listed if g["id"] == group)
    bare = await call(group_api.fetch_all_groups, ann.name, ann.token, False)
    assert "participants" not in next(g for g in bare if g["id"] == group)

    promoted = await call(
        group_api.update_participant,
        ann.name,
        group,
        UpdateParticipant(action="promote", participants=[bob.phone]),
        ann.token,
    )
    assert promoted == {
        "updateParticipants": [{"status": "200", "jid": bob.jid, "content": "promoted"}]
    }
    members = await call(group_api.get_participants, ann.name, group, ann.token)
    assert {p["id"]: p["admin"] for p in members["participants"]} == {
        ann.jid: "superadmin",
        bob.jid: "admin",
    }

    invite = await call(group_api.get_invite_code, ann.name, group, ann.token)
    assert invite["inviteUrl"] == f"https://chat.whatsapp.com/{invite['inviteCode']}"
    revoked = await call(group_api.revoke_invite_code, ann.name, group, ann.token)
    assert revoked["revoked"] is True and revoked["inviteCode"] != invite["inviteCode"]

    assert await call(
        group_api.update_setting, ann.name, group, UpdateSetting(action="announcement"), ann.token
    ) == {"updateSetting": True}
    assert await call(
        group_api.update_group_subject, ann.name, group, GroupSubject(subject="Team 2"), ann.token
    ) == {"update": "success"}
    info = await call(group_api.get_group_info, ann.name, group, ann.token)
    assert (info["subject"], info["announce"], info["restrict"]) == ("Team 2", True, False)

    # a text to the group jid reaches bob, in the group
    sent = await call(
        pair.client.post,
        f"message/sendText/{ann.name}",
        data=TextMessage(number=group, text="hi team", mentioned=[bob.phone]).__dict__,
        instance_token=ann.token,
    )
    got = await received(pair, ann, bob, sent_key(sent, group))
    assert (got.data["chat"], got.data["from"], got.data["text"]) == (group, ann.phone, "hi team")
    assert got.data["content"]["mentions"] == [bob.phone]

    left = await call(group_api.leave_group, bob.name, group, bob.token)
    assert left == {"groupJid": group, "leave": True}
    # ann's cached group info is dropped when the group event reaches her control plane
    deadline = time.monotonic() + 10
    while True:
        after = await call(group_api.get_participants, ann.name, group, ann.token)
        if [p["id"] for p in after["participants"]] == [ann.jid] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert [p["id"] for p in after["participants"]] == [ann.jid]


# -- settings, keys, errors --------------------------------------------------------------------


async def test_settings_map_onto_the_call_settings(pair: Pair) -> None:
    url = f"{pair.facade.base_url}/settings"
    headers = {"apikey": pair.bob.token}
    async with httpx.AsyncClient(headers=headers) as api:
        answer = await api.post(
            f"{url}/set/{pair.bob.name}",
            json={"rejectCall": True, "msgCall": "busy", "alwaysOnline": True},
        )
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert body["settings"]["instanceName"] == pair.bob.name
        assert body["settings"]["settings"]["rejectCall"] is True
        assert body["settingsNotApplied"] == ["alwaysOnline"]
        found = (await api.get(f"{url}/find/{pair.bob.name}")).json()
        assert (found["rejectCall"], found["msgCall"], found["alwaysOnline"]) == (
            True,
            "busy",
            False,
        )
        # the same setting through zapfleet's own API
        calls = await api.get(
            f"{pair.facade.base_url}/v1/sessions/{pair.bob.name}/settings/calls",
            headers={"X-API-Key": pair.bob.token},
        )
        assert calls.json()["reject"] is True and calls.json()["reply_text"] == "busy"


async def test_an_instance_token_sees_only_its_instance(pair: Pair) -> None:
    client, ann, bob = pair.client, pair.ann, pair.bob
    with pytest.raises(EvolutionNotFoundError):
        await call(client.instance_operations.get_connection_state, ann.name, bob.token)
    async with httpx.AsyncClient(base_url=pair.facade.base_url) as api:
        other = await api.get(
            f"/instance/connectionState/{ann.name}", headers={"apikey": bob.token}
        )
        # doc.evolution-api.com/v2/api-reference/instance-controller/instance-connect (404)
        assert other.status_code == 404
        assert other.json() == {
            "status": 404,
            "error": "Not Found",
            "response": {"message": [f'The "{ann.name}" instance does not exist']},
        }
        sent = await api.post(
            f"/message/sendText/{ann.name}",
            headers={"apikey": bob.token},
            json={"number": bob.phone, "text": "as ann?"},
        )
        assert sent.status_code == 404, sent.text
        assert sent.json()["response"]["message"] == [f'The "{ann.name}" instance does not exist']
        mine = await api.get("/instance/fetchInstances", headers={"apikey": bob.token})
        assert [i["name"] for i in mine.json()] == [bob.name]
        assert mine.json()[0]["connectionStatus"] == "open"
        assert mine.json()[0]["ownerJid"] == bob.jid
        everyone = await api.get(
            "/instance/fetchInstances",
            headers={"apikey": ADMIN_KEY},
            params={"instanceName": ann.name},
        )
        assert [i["name"] for i in everyone.json()] == [ann.name]
        for key in (None, "zf_0123456789abcdef_nope", "wrong"):
            refused = await api.get(
                "/instance/fetchInstances", headers={"apikey": key} if key else {}
            )
            assert refused.status_code == 401
            assert refused.json() == {
                "status": 401,
                "error": "Unauthorized",
                "response": {"message": "Unauthorized"},
            }
        unsupported = await api.post(
            f"/chat/archiveChat/{ann.name}", headers={"apikey": ann.token}, json={}
        )
        assert unsupported.status_code == 501
        assert "POST /chat/archiveChat/{instance}" in unsupported.json()["response"]["message"][0]
    with pytest.raises(EvolutionAuthenticationError):
        await call(EvolutionClient(pair.facade.base_url, "wrong").instances.fetch_instances)


async def test_a_tenant_key_creates_instances_in_its_own_tenant(
    facade: Facade, stack: Stack, nc: NATS
) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as admin:
        tenant, key = await new_tenant(admin, "evo")
    client = EvolutionClient(facade.base_url, key)
    name = unique("own")
    created = await call(client.instances.create_instance, InstanceConfig(instanceName=name))
    assert created["hash"] == key
    assert "qrcode" not in created
    listed = await call(client.instances.fetch_instances)
    assert [i["name"] for i in listed] == [name]
    async with httpx.AsyncClient(base_url=facade.base_url, headers={"X-API-Key": key}) as api:
        session = await api.get(f"/v1/sessions/{name}")
        assert session.status_code == 200 and session.json()["tenant"] == tenant
    # the global key does not see a tenant's instance without X-Tenant-Id
    async with httpx.AsyncClient(base_url=facade.base_url) as api:
        hidden = await api.get(f"/instance/connectionState/{name}", headers={"apikey": ADMIN_KEY})
        assert hidden.status_code == 404
        seen = await api.get(
            f"/instance/connectionState/{name}",
            headers={"apikey": ADMIN_KEY, "X-Tenant-Id": tenant},
        )
        assert seen.json()["instance"]["instanceName"] == name
    taken = await call(client.instances.create_instance, InstanceConfig(instanceName=name))
    assert taken == {
        "status": 403,
        "error": "Forbidden",
        "response": {"message": [f'This name "{name}" is already in use.']},
    }
    # a pairing code for a number (the sim routes it by number, as WhatsApp does)
    number = phone()
    code = await call(client.get, f"instance/connect/{name}?number={number}")
    assert code["pairingCode"] and code["base64"].startswith("data:image/png;base64,")
    assert (await link(nc, code["pairingCode"], number)).ok
    await wait_open(facade, Instance(name=name, token=key, phone=number, log=EventLog()))
    logged_out = await call(client.instance_operations.logout, name, key)
    assert logged_out["status"] == "SUCCESS"
    deleted = await call(client.instance_operations.delete, name, key)
    assert deleted["status"] == "SUCCESS"


# -- the end of an instance --------------------------------------------------------------------


async def test_logout_then_delete_revokes_the_instance_token(facade: Facade, nc: NATS) -> None:
    instance = await create_and_pair(facade, nc, unique("gone"), phone())
    ops = facade.admin.instance_operations
    async with httpx.AsyncClient(base_url=facade.base_url) as api:
        busy = await api.delete(
            f"/instance/delete/{instance.name}", headers={"apikey": instance.token}
        )
        assert busy.status_code == 400
        assert busy.json()["response"]["message"] == [
            f'The "{instance.name}" instance needs to be disconnected'
        ]
    # instance.controller.ts: logout and delete answers
    assert await call(ops.logout, instance.name, instance.token) == {
        "status": "SUCCESS",
        "error": False,
        "response": {"message": "Instance logged out"},
    }
    state = await call(ops.get_connection_state, instance.name, instance.token)
    assert state == {"instance": {"instanceName": instance.name, "state": "close"}}
    # Evolution's way back: connect shows a fresh QR code, the phone scans it
    qr = await call(ops.connect, instance.name, instance.token)
    assert qr["base64"].startswith("data:image/png;base64,") and qr["count"] == 1
    assert (await link(nc, qr["code"], instance.phone)).ok
    await wait_open(facade, instance)
    await call(ops.logout, instance.name, instance.token)
    assert await call(ops.delete, instance.name, instance.token) == {
        "status": "SUCCESS",
        "error": False,
        "response": {"message": "Instance deleted"},
    }
    await instance.log.stop()
    with pytest.raises(EvolutionAuthenticationError):
        await call(ops.get_connection_state, instance.name, instance.token)
    with pytest.raises(EvolutionNotFoundError):
        await call(ops.get_connection_state, instance.name, ADMIN_KEY)


# -- recipients, media in JSON, downloads --------------------------------------------------


async def test_lid_and_jid_recipients_json_media_and_its_download(pair: Pair) -> None:
    client, ann, bob = pair.client, pair.ann, pair.bob
    # bob keeps received files: getBase64FromMediaMessage reads them back
    async with httpx.AsyncClient(
        base_url=pair.facade.base_url, headers={"X-API-Key": bob.token}
    ) as api:
        stored = await api.put(f"/v1/sessions/{bob.name}/settings/media", json={"inbound": "store"})
        assert stored.status_code == 200, stored.text
    by_lid = await call(
        client.messages.send_text,
        ann.name,
        TextMessage(number=lid_of(bob.phone), text="lid"),
        ann.token,
    )
    got = await received(pair, ann, bob, sent_key(by_lid, lid_of(bob.phone)))
    assert got.data["text"] == "lid"

    picture = io.BytesIO()
    Image.new("RGB", (40, 30), (0, 90, 0)).save(picture, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(picture.getvalue()).decode()
    document = await call(
        client.post,
        f"message/sendMedia/{ann.name}",
        data={
            "number": bob.jid,
            "mediatype": "document",
            "fileName": "green.png",
            "caption": "a file",
            "media": data_url,
        },
        instance_token=ann.token,
    )
    assert document["message"]["documentMessage"]["fileName"] == "green.png"
    got = await received(pair, ann, bob, sent_key(document, bob))
    assert got.data["type"] == "document"
    assert got.data["content"]["media"]["filename"] == "green.png"

    downloaded = await call(
        client.chat.get_base64_from_media_message,
        bob.name,
        MediaMessageRequest(message={"key": {"id": got.data["message_id"]}}),
        bob.token,
    )
    assert downloaded["mimetype"] == "image/png"
    assert downloaded["fileName"] == "green.png"
    assert base64.b64decode(downloaded["base64"]) == picture.getvalue()
    assert downloaded["size"] == {"fileLength": len(picture.getvalue())}


# -- profile, contacts, presence, instance lifecycle -------------------------------------------


async def test_profile_contacts_presence_and_restart(pair: Pair) -> None:
    client, ann, bob = pair.client, pair.ann, pair.bob
    assert await call(
        client.profile.update_profile_name, ann.name, ProfileName(name="Ann A."), ann.token
    ) == {"update": "success"}
    assert await call(
        client.profile.update_profile_status, ann.name, ProfileStatus(status="busy"), ann.token
    ) == {"update": "success"}
    profile = await call(
        client.profile.fetch_profile, bob.name, FetchProfile(number=ann.phone), bob.token
    )
    assert profile["wuid"] == ann.jid and profile["numberExists"] is True
    assert profile["status"]["status"] == "busy"
    picture = await call(
        client.chat.fetch_profile_picture_url, bob.name, ProfilePicture(number=ann.phone), bob.token
    )
    assert picture["wuid"] == ann.jid and "profilePictureUrl" in picture

    wanted = {
        "readreceipts": "none",
        "profile": "contacts",
        "status": "contacts",
        "online": "match_last_seen",
        "last": "contacts",
        "groupadd": "contacts",
    }
    updated = await call(
        client.profile.update_privacy_settings, ann.name, PrivacySettings(**wanted), ann.token
    )
    assert updated == {"update": "success", "data": wanted}
    assert await call(client.profile.fetch_privacy_settings, ann.name, ann.token) == wanted

    # bob has talked to ann: she is one of his contacts
    contacts = await call(
        client.post, f"chat/findContacts/{bob.name}", data={}, instance_token=bob.token
    )
    assert ann.jid in {c["remoteJid"] for c in contacts}

    presence = await call(
        client.chat.send_presence,
        ann.name,
        Presence(number=bob.phone, delay=200, presence="composing"),
        ann.token,
    )
    assert presence == {"presence": "composing"}
    for state in ("typing", "paused"):
        await bob.seen(
            "chat.presence", lambda e, s=state: e.data["state"] == s and e.data["from"] == ann.phone
        )

    ops = pair.facade.admin.instance_operations
    assert await call(ops.connect, ann.name, ann.token) == {
        "instance": {"instanceName": ann.name, "state": "open"}
    }
    away = await call(ops.set_presence, ann.name, PresenceStatus.UNAVAILABLE, ann.token)
    assert away["status"] == 501 and "setPresence" in away["response"]["message"][0]
    restarted = await call(ops.restart, ann.name, ann.token)
    assert restarted["instance"]["instanceName"] == ann.name
    assert restarted["instance"]["state"] in ("open", "connecting")
    await wait_open(pair.facade, ann)


async def test_a_webhook_in_create_is_stored_on_the_session(facade: Facade) -> None:
    name = unique("hooked")
    config = InstanceConfig(instanceName=name)
    config.__dict__["webhook"] = {
        "url": "http://127.0.0.1:9/evolution",
        "byEvents": False,
        "base64": False,
        "events": ["MESSAGES_UPSERT", "SEND_MESSAGE"],
    }
    created = await call(facade.admin.instances.create_instance, config)
    assert created["webhook"] == {
        "webhookUrl": "http://127.0.0.1:9/evolution",
        "webhookByEvents": False,
        "webhookBase64": False,
    }
    token = created["hash"]
    async with httpx.AsyncClient(base_url=facade.base_url) as api:
        # the same webhook as a webhook/set of the instance: in Evolution format
        found = (await api.get(f"/webhook/find/{name}", headers={"apikey": token})).json()
        assert (found["url"], found["events"], found["enabled"]) == (
            "http://127.0.0.1:9/evolution",
            ["MESSAGES_UPSERT", "SEND_MESSAGE"],
            True,
        )
        # an event Evolution does not know is refused before anything is created
        unknown = unique("unknown-event")
        refused = await api.post(
            "/instance/create",
            headers={"apikey": ADMIN_KEY},
            json={
                "instanceName": unknown,
                "webhook": {"url": "http://127.0.0.1:9/e", "events": ["NOT_AN_EVENT"]},
            },
        )
        assert refused.status_code == 400, refused.text
        missing = await api.get(
            f"/instance/connectionState/{unknown}", headers={"apikey": ADMIN_KEY}
        )
        assert missing.status_code == 404
        # the SSRF guard holds: cloud metadata is no webhook
        refused = await api.post(
            "/instance/create",
            headers={"apikey": ADMIN_KEY},
            json={"instanceName": unique("meta"), "webhook": {"url": "http://169.254.169.254/x"}},
        )
        assert refused.status_code == 400
        assert refused.json()["error"] == "Bad Request"
        deleted = await api.delete(f"/instance/delete/{name}", headers={"apikey": token})
        assert deleted.status_code == 200, deleted.text


def test_the_facade_is_mounted_under_its_prefix_and_only_when_on() -> None:
    def paths(**settings: Any) -> set[str]:
        app = create_app(ControlPlaneSettings(admin_key="k" * 20, **settings))
        return {r.path for r in app.routes}

    assert "/message/sendText/{instance:str}" not in paths()
    assert "/message/sendText/{instance:str}" in paths(evolution=True)
    prefixed = paths(evolution=True, evolution_prefix="/evolution")
    assert "/evolution/message/sendText/{instance:str}" in prefixed
    assert "/message/sendText/{instance:str}" not in prefixed
    assert "/v1/sessions" in prefixed
    schema = create_app(ControlPlaneSettings(admin_key="k" * 20, evolution=True)).openapi_schema
    assert not [p for p in (schema.paths or {}) if p.startswith(("/instance", "/message"))]
    for bad in ("evolution", "/evolution/", "/v1"):
        with pytest.raises(SettingsError):
            ControlPlaneSettings(admin_key="k" * 20, evolution_prefix=bad).validate()
