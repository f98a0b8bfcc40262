"""The Evolution API facade (issue 20, docs/evolution.md) driven by the request builders
of the npm package ``n8n-nodes-evolution-api`` 1.0.4 — Evolution's n8n community node,
code nobody here wrote. tests/evolution_n8n/harness.js loads the node's own operation
modules (``dist/nodes/EvolutionApi/execute/<resource>/<operation>.js``) and runs them with
a minimal n8n ``IExecuteFunctions`` whose ``helpers.request`` talks HTTP (Node's fetch)
to the suite's real control plane; one Node process runs every operation of the module,
one JSON line in and one out per operation. ``npm ci`` installs the pinned node from
tests/evolution_n8n/package-lock.json.

What the node sends must arrive: texts, media, contacts, polls and reactions at a second
sim instance (its events, EventLog), a read receipt back at the sender, an edit and a
revoke, group changes, and an Evolution webhook the node set. Every operation's answer is
what the node returns to the n8n workflow (``{"success": true, "data": <Evolution's
answer>}``); the routes zapfleet does not offer come back as the node's failure with
Evolution's 501 body naming the route."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from PIL import Image

from contract.protocol import Event
from control_plane.evolution._common import instance_tenant
from node_agent.engines.sim import link
from node_agent.media_convert import ffmpeg_path
from tests.agent_support import EventLog, phone
from tests.conftest import ADMIN_KEY, Stack, WebhookReceiver
from tests.helpers import unique
from tests.test_evolution_webhooks import ahook

HARNESS_DIR = Path(__file__).parent / "evolution_n8n"
# operations whose output item is Evolution's answer itself, not {success, data}
RAW_ANSWER = {"messages/sendDocument"}


@pytest.fixture(scope="module")
def harness() -> Path:
    """``npm ci`` from the committed lockfile (scripts off: the node's published
    package.json keeps its own ``preinstall: npx only-allow pnpm``)."""
    npm = shutil.which("npm")
    assert npm is not None, "npm (Node.js 20) is needed: sudo apt-get install nodejs npm"
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=HARNESS_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return HARNESS_DIR / "harness.js"


class N8nNode:
    """One Node process running the n8n node's operations, one at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def run(
        self,
        op: str,
        apikey: str | None = None,
        continue_on_fail: bool = False,
        **params: Any,
    ) -> dict[str, Any]:
        """The harness's line for ``op``: ``ok`` + the node's ``json``, or ``error``."""
        assert self.process.stdin is not None and self.process.stdout is not None
        spec = {"op": op, "params": params, "apikey": apikey, "continueOnFail": continue_on_fail}
        self.process.stdin.write(json.dumps(spec).encode() + b"\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        if not line:
            stderr = await self.process.stderr.read() if self.process.stderr else b""
            raise AssertionError(f"the harness died running {op}: {stderr.decode()}")
        result: dict[str, Any] = json.loads(line)
        assert result["op"] == op
        return result

    async def data(self, op: str, apikey: str | None = None, **params: Any) -> Any:
        """Run ``op``; it must succeed: the node's ``json`` is ``{success: true, data}``."""
        result = await self.run(op, apikey, **params)
        assert result["ok"], result
        if op in RAW_ANSWER:
            return result["json"]
        assert result["json"]["success"] is True, result
        return result["json"]["data"]

    async def refused(self, op: str, apikey: str | None = None, **params: Any) -> dict[str, Any]:
        """Run ``op`` with n8n's "continue on fail": the node's output is its own error
        json; returns the failed request (``method``, ``url``, ``status``, ``body``)."""
        result = await self.run(op, apikey, True, **params)
        assert result["ok"], result
        assert result["json"]["success"] is False, result
        assert result["requests"], result
        failed: dict[str, Any] = result["requests"][-1]
        return failed


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def node(harness: Path, stack: Stack) -> AsyncIterator[N8nNode]:
    node_bin = shutil.which("node")
    assert node_bin is not None, "node (Node.js 20) is needed"
    process = await asyncio.create_subprocess_exec(
        node_bin,
        str(harness),
        stack.base_url,
        ADMIN_KEY,  # the n8n credential: the global key
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=1 << 24,
    )
    runner = N8nNode(process)
    yield runner
    assert process.stdin is not None
    process.stdin.close()
    assert await asyncio.wait_for(process.wait(), 10) == 0


@dataclass
class Instance:
    name: str
    token: str  # the ``hash`` instance/create answered
    phone: str
    log: EventLog

    @property
    def jid(self) -> str:
        return f"{self.phone}@s.whatsapp.net"

    async def seen(self, type_: str, predicate: Callable[[Event], bool]) -> Event:
        return await self.log.wait_for(
            lambda e: e.session_id == self.name and e.type == type_ and predicate(e), 15
        )


async def wait_open(node: N8nNode, name: str, timeout_s: float = 15) -> dict[str, Any]:
    """fetchInstances (the node has no connectionState operation) until ``open``."""
    deadline = time.monotonic() + timeout_s
    listed: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        listed = await node.data("instance/fetchInstances", instanceName=name)
        if listed and listed[0]["connectionStatus"] == "open":
            return listed[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} never opened: {listed}")


async def create_and_pair(node: N8nNode, nc: NATS, stack: Stack, prefix: str) -> Instance:
    name, number = unique(prefix), phone()
    log = EventLog()
    await log.start(nc, instance_tenant(name))
    created = await node.data(
        "instance/createInstanceBasic", instanceName=name, token="", number=""
    )
    # instance.controller.ts createInstance: instance, hash, webhook, settings, ...
    assert created["instance"]["instanceName"] == name
    assert created["instance"]["status"] == "created"
    assert created["instance"]["integration"] == "WHATSAPP-BAILEYS"
    token = created["hash"]
    assert isinstance(token, str) and token.startswith("zf_")
    # the node asks for no QR code in the create: instance/connect shows it
    qr = await node.data("instance/instanceConnect", instanceName=name)
    assert qr["base64"].startswith("data:image/png;base64,")
    png = base64.b64decode(qr["base64"].split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert (await link(nc, qr["code"], number)).ok
    opened = await wait_open(node, name)
    assert opened["name"] == name
    assert opened["ownerJid"] == f"{number}@s.whatsapp.net"
    # the token is a zapfleet key too: pacing off (an Evolution client has no such knob)
    async with httpx.AsyncClient(base_url=stack.base_url, headers={"X-API-Key": token}) as api:
        patched = await api.patch(
            f"/v1/sessions/{name}/settings", json={"pacing": {"enabled": False}}
        )
        assert patched.status_code == 200, patched.text
    return Instance(name=name, token=token, phone=number, log=log)


@dataclass
class Pair:
    base_url: str
    node: N8nNode
    nc: NATS
    ann: Instance
    bob: Instance


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pair(node: N8nNode, stack: Stack) -> AsyncIterator[Pair]:
    nc = await nats.connect(stack.nats_url)
    ann = await create_and_pair(node, nc, stack, "n8n-ann")
    bob = await create_and_pair(node, nc, stack, "n8n-bob")
    yield Pair(base_url=stack.base_url, node=node, nc=nc, ann=ann, bob=bob)
    for instance in (ann, bob):
        await instance.log.stop()
    await nc.close()


def sent_key(data: dict[str, Any], remote: str) -> str:
    """Evolution's answer of every send (Baileys-like): key, message, PENDING."""
    assert data["key"]["remoteJid"] == remote, data
    assert data["key"]["fromMe"] is True
    assert data["key"]["id"].startswith("m_")
    assert data["status"] == "PENDING"
    return str(data["key"]["id"])


async def received(sender: Instance, receiver: Instance, message_id: str) -> Event:
    """What ``receiver`` got of ``sender``'s message ``message_id`` (our id)."""
    sent = await sender.seen("message.sent", lambda e: e.data["message_id"] == message_id)
    engine_id = sent.data["engine_message_id"]
    return await receiver.seen("message.received", lambda e: e.data["message_id"] == engine_id)


def ffmpeg_made(source: str, container: str) -> bytes:
    """One second of lavfi ``source`` (a tone, a test picture) as ``container``."""
    # mp4 to a pipe: fragmented (no seeking back to write the index)
    codec = ["-c:v", "mpeg4", "-movflags", "frag_keyframe+empty_moov"] if container == "mp4" else []
    done = subprocess.run(
        [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", source,
         "-t", "1", *codec, "-f", container, "pipe:1"],
        capture_output=True,
        check=True,
    )  # fmt: skip
    return done.stdout


def png_base64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 160, 60)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# -- messages ----------------------------------------------------------------------------------


async def test_the_n8n_node_sends_every_kind_and_it_arrives(pair: Pair) -> None:  # noqa: PLR0915 - one flow
    node, ann, bob = pair.node, pair.ann, pair.bob

    text = await node.data(
        "messages/sendText", instanceName=ann.name, remoteJid=bob.phone, messageText="hi bob"
    )
    text_id = sent_key(text, bob.jid)
    assert text["message"] == {"extendedTextMessage": {"text": "hi bob"}}
    hello = await received(ann, bob, text_id)
    assert (hello.data["type"], hello.data["text"], hello.data["from"]) == (
        "text",
        "hi bob",
        ann.phone,
    )

    # a reply by jid, with the node's quoted option, sent with bob's instance token
    reply = await node.data(
        "messages/sendText",
        apikey=bob.token,
        instanceName=bob.name,
        remoteJid=ann.jid,
        messageText="a reply",
        options_message={"quoted": {"messageQuoted": {"messageId": hello.data["message_id"]}}},
    )
    got = await received(bob, ann, sent_key(reply, ann.jid))
    assert got.data["text"] == "a reply"
    assert got.data["content"]["reply_to"] == hello.data["message_id"]

    # bob keeps received media, for getMediaBase64
    async with httpx.AsyncClient(base_url=pair.base_url, headers={"X-API-Key": bob.token}) as api:
        stored = await api.put(f"/v1/sessions/{bob.name}/settings/media", json={"inbound": "store"})
        assert stored.status_code == 200, stored.text
    image = await node.data(
        "messages/sendImage",
        instanceName=ann.name,
        remoteJid=bob.phone,
        media=png_base64(),
        mimetype="image/png",
        caption="a green picture",
        fileName="green.png",
    )
    assert image["message"]["imageMessage"]["caption"] == "a green picture"
    got = await received(ann, bob, sent_key(image, bob.jid))
    assert (got.data["type"], got.data["text"]) == ("image", "a green picture")
    assert got.data["content"]["media"]["mimetype"] == "image/png"
    media = await node.data(
        "chat/getMediaBase64",
        instanceName=bob.name,
        messageId=got.data["message_id"],
        convertToMp4=False,
    )
    assert (media["mediaType"], media["mimetype"]) == ("imageMessage", "image/png")
    assert Image.open(io.BytesIO(base64.b64decode(media["base64"]))).size == (64, 48)

    audio = await node.data(
        "messages/sendAudio",
        instanceName=ann.name,
        remoteJid=bob.phone,
        media=base64.b64encode(ffmpeg_made("sine=frequency=440:duration=1", "wav")).decode(),
        mimetype="audio/wav",
        fileName="memo.wav",
    )
    assert audio["message"]["audioMessage"]["ptt"] is True
    got = await received(ann, bob, sent_key(audio, bob.jid))
    assert got.data["type"] == "audio" and got.data["content"]["voice_note"] is True

    video = await node.data(
        "messages/sendVideo",
        instanceName=ann.name,
        remoteJid=bob.phone,
        media=base64.b64encode(ffmpeg_made("testsrc=size=64x48:rate=5", "mp4")).decode(),
        mimetype="video/mp4",
        caption="a clip",
        fileName="clip.mp4",
    )
    got = await received(ann, bob, sent_key(video, bob.jid))
    assert (got.data["type"], got.data["text"]) == ("video", "a clip")

    document = await node.data(
        "messages/sendDocument",
        instanceName=ann.name,
        remoteJid=bob.phone,
        media=base64.b64encode(b"quarterly numbers\n").decode(),
        mimetype="text/plain",
        caption="the report",
        fileName="report.txt",
    )
    got = await received(ann, bob, sent_key(document, bob.jid))
    assert got.data["type"] == "document"
    assert got.data["content"]["media"]["filename"] == "report.txt"

    contact = await node.data(
        "messages/sendContact",
        instanceName=ann.name,
        remoteJid=bob.phone,
        contacts={
            "contactValues": [
                {"fullName": "Carla", "wuid": "15550009999", "phoneNumber": "+15550009999"}
            ]
        },
    )
    assert contact["message"]["contactMessage"]["displayName"] == "Carla"
    got = await received(ann, bob, sent_key(contact, bob.jid))
    assert (got.data["type"], got.data["content"]["display_name"]) == ("contact", "Carla")

    poll = await node.data(
        "messages/sendPoll",
        instanceName=ann.name,
        remoteJid=bob.phone,
        caption="Lunch?",
        options_display={"metadataValues": [{"optionValue": "yes"}, {"optionValue": "no"}]},
    )
    assert poll["message"]["pollCreationMessage"]["options"] == [
        {"optionName": "yes"},
        {"optionName": "no"},
    ]
    got = await received(ann, bob, sent_key(poll, bob.jid))
    assert got.data["type"] == "poll" and got.data["content"]["options"] == ["yes", "no"]

    # bob reacts to ann's poll: ann sees the reaction on her message (our id)
    reaction = await node.data(
        "messages/sendReaction",
        instanceName=bob.name,
        remoteJid=ann.jid,
        messageId=got.data["message_id"],
        fromMe=False,
        reaction="👍",
    )
    sent_key(reaction, ann.jid)
    reacted = await ann.seen(
        "message.reaction", lambda e: e.data["message_id"] == poll["key"]["id"]
    )
    assert reacted.data["emoji"] == "👍"

    # bob marks ann's first text read: ann gets the read receipt of it
    read = await node.data(
        "chat/readMessages",
        instanceName=bob.name,
        remoteJid=ann.jid,
        fromMe=False,
        messageId=hello.data["message_id"],
    )
    assert read == {"message": "Read messages", "read": "success"}
    await ann.seen(
        "message.ack", lambda e: e.data["message_id"] == text_id and e.data["status"] == "read"
    )

    # ann edits, then revokes her first text
    edited = await node.data(
        "chat/updateMessage",
        instanceName=ann.name,
        remoteJid=bob.jid,
        messageId=text_id,
        text="hi bob (edited)",
    )
    assert edited["message"]["protocolMessage"]["type"] == "MESSAGE_EDIT"
    seen = await bob.seen(
        "message.edited", lambda e: e.data["message_id"] == hello.data["message_id"]
    )
    assert seen.data["text"] == "hi bob (edited)"
    deleted = await node.data(
        "chat/deleteMessage",
        instanceName=ann.name,
        remoteJid=bob.phone,
        messageId=text_id,
        fromMe=True,
    )
    assert deleted["message"]["protocolMessage"]["type"] == "REVOKE"
    await bob.seen("message.revoked", lambda e: e.data["message_id"] == hello.data["message_id"])

    found = await node.data(
        "chat/findMessages", instanceName=ann.name, remoteJid=bob.phone, page=1, offset=50
    )
    records = found["messages"]["records"]
    assert found["messages"]["currentPage"] == 1
    mine = next(r for r in records if r["key"]["id"] == image["key"]["id"])
    assert mine["key"] == {"id": image["key"]["id"], "fromMe": True, "remoteJid": bob.jid}
    assert mine["messageType"] == "imageMessage"

    chats = await node.data(
        "chat/findChats", instanceName=bob.name, remoteJid=ann.phone, messageId=""
    )
    assert [c["remoteJid"] for c in chats] == [ann.jid]

    nobody = phone()
    checked = await node.data(
        "chat/checkNumber", instanceName=ann.name, numbers=f"{bob.phone}, {nobody}"
    )
    assert checked == [
        {"exists": True, "jid": bob.jid, "number": bob.phone},
        {"exists": False, "jid": f"{nobody}@s.whatsapp.net", "number": nobody},
    ]

    typing = await node.data(
        "chat/sendPresence",
        instanceName=ann.name,
        remoteJid=bob.phone,
        presence="composing",
        delay=300,
    )
    assert typing["presence"] == "composing"
    # bob sees ann typing, then paused once the delay is over
    contacts = await node.data(
        "chat/findContacts", instanceName=bob.name, listAll=False, remoteJid=ann.phone
    )
    assert [c["remoteJid"] for c in contacts] == [ann.jid]
    everyone = await node.data("chat/findContacts", instanceName=bob.name, listAll=True)
    assert ann.jid in {c["remoteJid"] for c in everyone}

    for status in ("block", "unblock"):
        assert await node.data(
            "chat/blockContact", instanceName=bob.name, remoteJid=ann.phone, status=status
        ) == {"accepted": True}

    for state in ("typing", "paused"):
        await bob.seen(
            "chat.presence", lambda e, s=state: (e.data["from"], e.data["state"]) == (ann.phone, s)
        )


# -- groups ------------------------------------------------------------------------------------


async def test_the_n8n_node_runs_a_group(pair: Pair) -> None:
    node, ann, bob = pair.node, pair.ann, pair.bob
    created = await node.data(
        "groups/createGroup",
        instanceName=ann.name,
        subject="n8n team",
        description="made by n8n",
        participants=bob.phone,
    )
    group = created["id"]
    assert group.endswith("@g.us")
    assert (created["subject"], created["desc"], created["owner"]) == (
        "n8n team",
        "made by n8n",
        ann.jid,
    )
    assert {p["id"]: p["admin"] for p in created["participants"]} == {
        ann.jid: "superadmin",
        bob.jid: None,
    }
    await bob.seen("group.joined", lambda e: e.data["group_id"] == group)

    listed = await node.data(
        "groups/fetchGroups", instanceName=ann.name, searchMethod="fetchAll", getParticipants=True
    )
    mine = next(g for g in listed if g["id"] == group)
    assert {p["id"] for p in mine["participants"]} == {ann.jid, bob.jid}
    info = await node.data(
        "groups/fetchGroups", instanceName=ann.name, searchMethod="groupJid", groupJid=group
    )
    assert (info["id"], info["subject"]) == (group, "n8n team")

    promoted = await node.data(
        "groups/updateParticipants",
        instanceName=ann.name,
        groupJid=group,
        action="promote",
        participants=bob.phone,
    )
    assert promoted == {
        "updateParticipants": [{"status": "200", "jid": bob.jid, "content": "promoted"}]
    }
    members = await node.data("groups/findParticipants", instanceName=ann.name, groupJid=group)
    assert {p["id"]: p["admin"] for p in members["participants"]} == {
        ann.jid: "superadmin",
        bob.jid: "admin",
    }

    assert await node.data(
        "groups/updateGroupName", instanceName=ann.name, groupJid=group, subject="n8n team 2"
    ) == {"update": "success"}
    assert await node.data(
        "groups/updateGroupDescription",
        instanceName=ann.name,
        groupJid=group,
        description="still n8n",
    ) == {"update": "success"}
    assert await node.data(
        "groups/updateSettings", instanceName=ann.name, groupJid=group, action="announcement"
    ) == {"updateSetting": True}
    assert await node.data(
        "groups/toggleEphemeral", instanceName=ann.name, groupJid=group, expiration=86400
    ) == {"success": True}
    assert await node.data(
        "groups/updateGroupPicture", instanceName=ann.name, groupJid=group, image=png_base64()
    ) == {"update": "success"}
    await bob.seen(
        "group.updated", lambda e: e.data["group_id"] == group and "picture" in e.data["changes"]
    )
    info = await node.data(
        "groups/fetchGroups", instanceName=ann.name, searchMethod="groupJid", groupJid=group
    )
    assert (info["subject"], info["desc"], info["announce"]) == ("n8n team 2", "still n8n", True)

    # a text with a mention to the group jid reaches bob, in the group
    sent = await node.data(
        "messages/sendText",
        instanceName=ann.name,
        remoteJid=group,
        messageText="hi team",
        options_message={"mentions": {"mentionsSettings": {"mentioned": bob.phone}}},
    )
    got = await received(ann, bob, sent_key(sent, group))
    assert (got.data["chat"], got.data["from"], got.data["text"]) == (group, ann.phone, "hi team")
    assert got.data["content"]["mentions"] == [bob.phone]

    invite = await node.data("groups/fetchInviteCode", instanceName=ann.name, groupJid=group)
    assert invite["inviteUrl"] == f"https://chat.whatsapp.com/{invite['inviteCode']}"
    revoked = await node.data("groups/revokeInviteCode", instanceName=ann.name, groupJid=group)
    assert revoked["revoked"] is True and revoked["inviteCode"] != invite["inviteCode"]

    # bob leaves, then joins again with the new invite code (the node's joinGroup)
    left = await node.data("groups/leaveGroup", instanceName=bob.name, groupJid=group)
    assert left == {"groupJid": group, "leave": True}
    by_code = await node.data(
        "groups/fetchGroups",
        instanceName=bob.name,
        searchMethod="inviteCode",
        inviteCode=revoked["inviteCode"],
    )
    assert (by_code["id"], by_code["subject"]) == (group, "n8n team 2")
    joined = await node.data(
        "groups/joinGroup", instanceName=bob.name, inviteCode=revoked["inviteCode"]
    )
    assert joined == {"accepted": True, "groupJid": group}  # group.controller acceptInviteCode
    deadline = time.monotonic() + 10
    ids: set[str] = set()
    while time.monotonic() < deadline:
        members = await node.data("groups/findParticipants", instanceName=ann.name, groupJid=group)
        ids = {p["id"] for p in members["participants"]}
        if ids == {ann.jid, bob.jid}:
            break
        await asyncio.sleep(0.1)
    assert ids == {ann.jid, bob.jid}


# -- instance settings, profile, webhook, what is not supported --------------------------------

SIX = ("create", "find", "update", "delete", "fetchSessions", "changeStatus")
# (operation, the name of its resourceFor<...> parameter, its branches): the node's
# chatbot integrations
CHATBOT_BRANCHES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("integrations/setTypebot", "Typebot", tuple(f"{b}Typebot" for b in SIX)),
    ("integrations/setEvolutionBot", "EvolutionBot", tuple(f"{b}EvolutionBot" for b in SIX)),
    ("integrations/setDifyBot", "DifyBot", tuple(f"{b}Dify" for b in SIX[:5])),
    ("integrations/setFlowiseBot", "FlowiseBot", tuple(f"{b}Flowise" for b in SIX)),
)

BOT_ID = "bot-1"
# what each branch of the node's chatbot integrations asks for (a superset: each reads its own)
BOT: dict[str, Any] = {
    "url": "https://bot.example",
    "typebot": "bot",
    "apiUrl": "https://bot.example",
    "apiKey": "k",
    "apiKeyBot": "k",
    "botType": "chatBot",
    "ignoreJids": "",
    "typebotId": BOT_ID,
    "difyBotId": BOT_ID,
    "flowiseBotId": BOT_ID,
    "evolutionBotId": BOT_ID,
    "remoteJid": "15550001111@s.whatsapp.net",
    "status": "paused",
    "startSession": False,
    "variables": [],
    "triggerType": "keyword",
    "triggerOperator": "equals",
    "triggerValue": "hi",
    "expire": 0,
    "keywordFinish": "#exit",
    "delayMessage": 1000,
    "unknownMessage": "?",
    "listeningFromMe": False,
    "stopBotFromMe": False,
    "keepOpen": False,
    "debounceTime": 0,
}


async def test_the_n8n_node_sets_settings_profile_and_webhook(
    pair: Pair, webhook_receiver: WebhookReceiver
) -> None:
    node, ann, bob = pair.node, pair.ann, pair.bob
    settings = await node.data(
        "instance/instanceSettings",
        instanceName=bob.name,
        rejectCall=True,
        msgCall="busy",
        groupsIgnore=False,
        alwaysOnline=False,
        readMessages=False,
        syncFullHistory=False,
        readStatus=False,
    )
    assert settings["settings"]["instanceName"] == bob.name
    assert settings["settings"]["settings"]["rejectCall"] is True
    assert settings["settings"]["settings"]["msgCall"] == "busy"
    assert "settingsNotApplied" not in settings  # every one asked is applied (false = ours)

    assert await node.data(
        "profile/updateProfileName", instanceName=ann.name, name="Ann from n8n"
    ) == {"update": "success"}
    assert await node.data(
        "profile/updateProfileStatus", instanceName=ann.name, status="automating"
    ) == {"update": "success"}
    profile = await node.data("profile/fetchProfile", instanceName=bob.name, remoteJid=ann.phone)
    assert (profile["wuid"], profile["name"], profile["status"]["status"]) == (
        ann.jid,
        "Ann from n8n",
        "automating",
    )
    picture = await node.data("chat/fetchProfilePicture", instanceName=bob.name, number=ann.phone)
    assert picture["wuid"] == ann.jid
    wanted = {
        "readreceipts": "none",
        "profile": "contacts",
        "status": "contacts",
        "online": "match_last_seen",
        "last": "none",
        "groupadd": "contacts",
    }
    updated = await node.data("profile/updatePrivacySettings", instanceName=ann.name, **wanted)
    assert updated["update"] == "success"
    privacy = await node.data("profile/fetchPrivacySettings", instanceName=ann.name)
    assert {k: privacy[k] for k in wanted} == wanted

    # the node's field is "URL da imagem"; zapfleet takes the picture as base64 (a data URL)
    assert await node.data(
        "profile/updateProfilePicture",
        instanceName=ann.name,
        picture=f"data:image/png;base64,{png_base64()}",
    ) == {"update": "success"}
    pictured = await node.data("chat/fetchProfilePicture", instanceName=bob.name, number=ann.phone)
    assert pictured["profilePictureUrl"]
    assert await node.data("profile/removeProfilePicture", instanceName=ann.name) == {
        "update": "success"
    }

    # the webhook the node sets (Evolution v2 body: {"webhook": {...}}) gets bob's messages
    url = webhook_receiver.url
    hook_set = await node.data(
        "events/setWebhook",
        instanceName=bob.name,
        resourceForWebhook="setWebhook",
        enabled=True,
        webhookUrl=url,
        webhookByEvents=False,
        webhookBase64=False,
        webhookEvents=["MESSAGES_UPSERT"],
    )
    assert (hook_set["url"], hook_set["enabled"], hook_set["events"]) == (
        url,
        True,
        ["MESSAGES_UPSERT"],
    )
    found = await node.data(
        "events/setWebhook", instanceName=bob.name, resourceForWebhook="findWebhook"
    )
    assert found == hook_set
    sent = await node.data(
        "messages/sendText", instanceName=ann.name, remoteJid=bob.phone, messageText="hooked?"
    )
    got = await received(ann, bob, sent_key(sent, bob.jid))
    path, body = await ahook(
        webhook_receiver,
        lambda _, b: (
            b.get("event") == "messages.upsert" and b["data"]["key"]["id"] == got.data["message_id"]
        ),
    )
    assert path == "/" or path.endswith(url.rsplit("/", 1)[-1])
    assert (body["instance"], body["data"]["message"]["conversation"]) == (bob.name, "hooked?")
    assert body["data"]["key"]["fromMe"] is False

    # turning it off with the URL field empty: the node sends its placeholder "vazio",
    # which Evolution stores (webhook.controller.ts set: isURL with require_tld false
    # takes a bare host name; disabled: no events)
    off = await node.data(
        "events/setWebhook",
        instanceName=bob.name,
        resourceForWebhook="setWebhook",
        enabled=False,
        webhookUrl="",
        webhookByEvents=False,
        webhookBase64=False,
        webhookEvents=["MESSAGES_UPSERT"],
    )
    assert (off["url"], off["enabled"], off["events"]) == ("vazio", False, [])
    # switched on again, the URL must be one zapfleet delivers to
    refused = await node.refused(
        "events/setWebhook",
        instanceName=bob.name,
        resourceForWebhook="setWebhook",
        enabled=True,
        webhookUrl="",
        webhookByEvents=False,
        webhookBase64=False,
        webhookEvents=["MESSAGES_UPSERT"],
    )
    assert (refused["status"], refused["body"]["error"]) == (400, "Bad Request")
    # (that nothing is sent while it is off is not asserted here: the dispatcher follows
    # the record when it handles an event, which may be after it is on again)
    loud = await node.data(
        "events/setWebhook",
        instanceName=bob.name,
        resourceForWebhook="setWebhook",
        enabled=True,
        webhookUrl=url,
        webhookByEvents=False,
        webhookBase64=False,
        webhookEvents=["MESSAGES_UPSERT"],
    )
    assert loud["enabled"] is True
    again = await node.data(
        "messages/sendText", instanceName=ann.name, remoteJid=bob.phone, messageText="heard"
    )
    heard = await received(ann, bob, sent_key(again, bob.jid))
    await ahook(
        webhook_receiver,
        lambda _, b: (
            b.get("event") == "messages.upsert"
            and b["data"]["key"]["id"] == heard.data["message_id"]
        ),
    )


async def test_the_routes_zapfleet_lacks_answer_the_node_501(pair: Pair) -> None:
    """What zapfleet does not offer: the node reports Evolution's 501 naming the route."""
    node, ann, bob = pair.node, pair.ann, pair.bob
    unsupported: dict[str, dict[str, Any]] = {
        "instance/setPresence": {"presence": "available"},
        "chat/manageArchive": {"chat": ann.jid, "archive": True, "fromMe": False, "messageId": "x"},
        "chat/markChatUnread": {"chat": ann.jid, "fromMe": False, "messageId": "x"},
        "profile/fetchBusinessProfile": {"remoteJid": ann.phone},
        "chat/findStatusMessages": {
            "remoteJid": ann.phone,
            "messageId": "",
            "page": 1,
            "offset": 10,
        },
        "groups/sendInviteLink": {
            "groupJid": "1@g.us",
            "description": "join",
            "numbers": ann.phone,
        },
        "messages/sendStories": {"content": "hi", "type": "text", "statusJidList": ""},
        "messages/sendButtons": {
            "remoteJid": ann.phone,
            "title": "t",
            "description": "d",
            "footer": "f",
            "buttons": {"buttonValues": [{"type": "reply", "displayText": "ok", "id": "1"}]},
        },
        "events/setRabbitMQ": {
            "resourceForRabbitMQ": "setRabbitMQ",
            "enabled": True,
            "rabbitMQEvents": ["MESSAGES_UPSERT"],
        },
        "instance/setProxy": {"resourceForProxy": "findProxy"},
        "events/setProxy": {
            "enabled": True,
            "proxyHost": "proxy.example",
            "proxyPort": 3128,
            "proxyProtocol": "http",
            "proxyUsername": "",
            "proxyPassword": "",
        },
        "messages/sendList": {
            "remoteJid": ann.phone,
            "title": "t",
            "description": "d",
            "buttonText": "pick",
            "sections": {
                "sectionValues": [{"title": "s", "rows": {"rowValues": [{"title": "r"}]}}]
            },
        },
        "messages/sendPix": {
            "remoteJid": ann.phone,
            "name": "Ann",
            "keyType": "email",
            "key": "a@b.c",
        },
        "integrations/setChatwoot": {
            "resourceForChatwoot": "setChatwoot",
            "chatwootAccountId": "1",
            "chatwootToken": "t",
            "chatwootUrl": "https://chatwoot.example",
            "chatwootSignMsg": False,
            "chatwootReopenConversation": False,
            "chatwootConversationPending": False,
            "chatwootNameInbox": "n8n",
            "chatwootMergeBrazilContacts": False,
            "chatwootImportContacts": False,
            "chatwootImportMessages": False,
            "chatwootDaysLimitImportMessages": 0,
            "chatwootAutoCreate": False,
            "chatwootOrganization": "",
            "chatwootLogo": "",
        },
        "events/setRabbitMQ#find": {"resourceForRabbitMQ": "findRabbitMQ"},
        "integrations/setChatwoot#find": {"resourceForChatwoot": "findChatwoot"},
        "instance/setProxy#set": {
            "resourceForProxy": "setProxy",
            "enabled": True,
            "proxyHost": "proxy.example",
            "proxyPort": 3128,
            "proxyProtocol": "http",
            "proxyUsername": "",
            "proxyPassword": "",
        },
    }
    runs = [(op.partition("#")[0], params) for op, params in unsupported.items()]
    # every branch of the node's chatbot integrations (Evolution's chatbot routes)
    for op, family, suffixes in CHATBOT_BRANCHES:
        for suffix in suffixes:
            runs.append((op, {f"resourceFor{family}": suffix, **BOT}))
    runs.append(("integrations/setTypebot", {"resourceForTypebot": "startTypebot", **BOT}))
    assert len(runs) == 41
    for op, params in runs:
        failed = await node.refused(op, instanceName=bob.name, **params)
        assert failed["status"] == 501, (op, params, failed)
        assert failed["body"]["error"] == "Not Implemented", (op, failed)
        (message,) = failed["body"]["response"]["message"]
        # the route: /proxy/find, /typebot/fetch/{botId}, ... (the instance is last)
        route = failed["url"].split("?")[0].removesuffix(f"/{bob.name}")
        route = route.replace(f"/{BOT_ID}", "/{botId}")
        assert message.startswith(f"{failed['method']} {route}"), (op, message)
        assert "is not supported by zapfleet's Evolution" in message, (op, message)


# -- an instance's life --------------------------------------------------------------------------


async def test_the_n8n_node_creates_restarts_logs_out_and_deletes(
    node: N8nNode, stack: Stack, webhook_receiver: WebhookReceiver
) -> None:
    nc = await nats.connect(stack.nats_url)
    name, number = unique("n8n-carl"), phone()
    log = EventLog()
    await log.start(nc, instance_tenant(name))
    # the node's create options: instance settings and a webhook, in Evolution v2's body
    created = await node.data(
        "instance/createInstanceBasic",
        instanceName=name,
        token="",
        number="",
        options_Create_instance={
            "instanceSettings": {"settings": {"rejectCall": True, "msgCall": "no calls"}},
            "webhook": {
                "webhookSettings": {
                    "webhookUrl": webhook_receiver.url,
                    "webhookByEvents": False,
                    "webhookBase64": False,
                    "webhookEvents": ["CONNECTION_UPDATE"],
                }
            },
        },
    )
    assert (created["settings"]["rejectCall"], created["settings"]["msgCall"]) == (
        True,
        "no calls",
    )
    token = created["hash"]
    hook = await node.data(
        "events/setWebhook", token, instanceName=name, resourceForWebhook="findWebhook"
    )
    assert (hook["url"], hook["events"]) == (webhook_receiver.url, ["CONNECTION_UPDATE"])

    qr = await node.data("instance/instanceConnect", token, instanceName=name)
    assert (await link(nc, qr["code"], number)).ok
    opened = await wait_open(node, name)
    assert opened["Setting"]["rejectCall"] is True
    _, body = await ahook(
        webhook_receiver,
        lambda _, b: (
            b.get("instance") == name
            and b.get("event") == "connection.update"
            and b["data"]["state"] == "open"
        ),
    )
    assert body["data"]["wuid"] == f"{number}@s.whatsapp.net"

    # the instance token sees its instance only
    listed = await node.data("instance/fetchInstances", token, instanceName="")
    assert [i["name"] for i in listed] == [name]

    restarted = await node.data("instance/restartInstance", token, instanceName=name)
    assert restarted["instance"]["instanceName"] == name
    # the session starts again (its second STARTING), then is open again
    await log.wait_count(
        lambda e: (
            e.session_id == name and e.type == "session.status" and e.data["state"] == "STARTING"
        ),
        2,
        15,
    )
    await wait_open(node, name)

    # an open instance is not deleted (Evolution: log out first)
    refused = await node.refused("instance/deleteInstance", token, instanceName=name)
    assert refused["status"] == 400
    assert refused["body"]["response"]["message"] == [
        f'The "{name}" instance needs to be disconnected'
    ]
    out = await node.data("instance/logoutInstance", token, instanceName=name)
    assert out == {
        "status": "SUCCESS",
        "error": False,
        "response": {"message": "Instance logged out"},
    }
    closed = await node.data("instance/fetchInstances", instanceName=name)
    assert closed[0]["connectionStatus"] == "close"
    deleted = await node.data("instance/deleteInstance", instanceName=name)
    assert deleted == {
        "status": "SUCCESS",
        "error": False,
        "response": {"message": "Instance deleted"},
    }
    gone = await node.refused("instance/fetchInstances", instanceName=name)
    assert (gone["status"], gone["body"]["response"]["message"]) == (
        404,
        [f'The "{name}" instance does not exist'],
    )
    # its token went with its tenant: Evolution's 401
    revoked = await node.refused("instance/fetchInstances", token, instanceName="")
    assert (revoked["status"], revoked["body"]["error"]) == (401, "Unauthorized")
    await log.stop()
    await nc.close()


def test_every_operation_of_the_node_is_run_here_and_listed_in_the_docs(harness: Path) -> None:
    """The node's 65 operation modules: each one is run by this module and named in
    docs/evolution.md (section Tests), so the coverage claim stays true on an upgrade."""
    execute = (
        harness.parent / "node_modules/n8n-nodes-evolution-api/dist/nodes/EvolutionApi/execute"
    )
    operations = sorted(
        f"{path.parent.name}/{path.stem}"
        for path in execute.glob("*/*.js")
        if path.parent.name != "execute"
    )
    assert len(operations) == 65, operations
    source = Path(__file__).read_text()
    docs = (Path(__file__).parents[1] / "docs" / "evolution.md").read_text()
    tests_section = docs.split("\n## Tests\n", 1)[1]
    assert [op for op in operations if f'"{op}"' not in source] == []
    assert [op for op in operations if f"`{op}`" not in tests_section] == []
