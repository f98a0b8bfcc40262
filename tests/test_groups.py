"""Groups (issue 16) end to end on the sim engine, through the real control plane and
agent processes: each operation once through REST and once through the NATS commands
(``zf.api.<tenant>.<op>``), with the ``group.*`` events every member's session publishes
checked field by field, the problem+json errors of bad input, and the Valkey cache of
group metadata dropped by group events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from contract.protocol import Event
from node_agent.engines.sim import (
    SIM_BUCKET,
    lid_of,
    link,
    seed_account,
    set_group_add_privacy,
)
from tests.agent_support import EventLog, phone
from tests.conftest import Stack
from tests.helpers import assert_problem, new_tenant, unique, wait_state


@dataclass
class Account:
    name: str
    phone: str


@dataclass
class Groups:
    api: httpx.AsyncClient
    nc: NATS
    tenant: str
    key: str
    log: EventLog
    a: Account
    b: Account
    c: Account
    admin: dict[str, str]  # the admin key's headers

    def url(self, who: Account, tail: str = "") -> str:
        return f"/v1/sessions/{who.name}/groups{tail}"

    async def command(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = await self.nc.request(
            f"zf.api.{self.tenant}.{op}",
            msgspec.json.encode(body),
            timeout=10,
            headers={"X-API-Key": self.key},
        )
        answer: dict[str, Any] = msgspec.json.decode(reply.data)
        return answer

    async def ok(self, op: str, body: dict[str, Any]) -> Any:
        answer = await self.command(op, body)
        assert answer["kind"] == "ok", answer
        return answer["value"]

    async def event(self, who: Account, type_: str, group_id: str, **match: Any) -> Event:
        return await self.log.wait_for(
            lambda e: (
                e.session_id == who.name
                and e.type == type_
                and e.data.get("group_id") == group_id
                and all(e.data.get(k) == v for k, v in match.items())
            )
        )

    async def create(self, owner: Account, subject: str, members: list[Account]) -> str:
        created = await self.api.post(
            self.url(owner), json={"subject": subject, "participants": [m.phone for m in members]}
        )
        assert created.status_code == 201, created.text
        return str(created.json()["group"]["id"])


async def _pair(api: httpx.AsyncClient, nc: NATS, name: str, number: str) -> Account:
    created = await api.post("/v1/sessions", json={"session_id": name})
    assert created.status_code == 201, created.text
    await wait_state(api, name, "PAIRING")
    code = (await api.get(f"/v1/sessions/{name}/qr")).json()["qr"]
    assert (await link(nc, code, number)).ok
    await wait_state(api, name, "CONNECTED")
    return Account(name=name, phone=number)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def g(stack: Stack, nats_url: str) -> AsyncIterator[Groups]:
    import nats

    nc = await nats.connect(nats_url)
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as admin:
        tenant, key = await new_tenant(admin, "grp")
    log = EventLog()
    await log.start(nc, tenant)
    async with httpx.AsyncClient(
        base_url=stack.base_url, headers={"X-API-Key": key}, timeout=15
    ) as api:
        a, b, c = [await _pair(api, nc, unique(n), phone()) for n in ("ann", "bob", "cid")]
        yield Groups(
            api=api, nc=nc, tenant=tenant, key=key, log=log, a=a, b=b, c=c, admin=stack.headers
        )
        for account in (a, b, c):
            await api.delete(f"/v1/sessions/{account.name}")
    await log.stop()
    await nc.close()


def _member(group: dict[str, Any], number: str) -> dict[str, Any]:
    found = [m for m in group["participants"] if m["id"] == number]
    assert found, group
    return found[0]


# -- create, list, info ------------------------------------------------------------------


async def test_create_by_rest_answers_per_participant_and_members_hear_it(g: Groups) -> None:
    nobody, private, careful = phone(), phone(), phone()
    for number in (private, careful):
        await seed_account(g.nc, unique("u"), number)
    await set_group_add_privacy(g.nc, private, "none")
    await set_group_add_privacy(g.nc, careful, "contacts")
    created = await g.api.post(
        g.url(g.a),
        json={"subject": "Team", "participants": [g.b.phone, "+" + nobody, private, careful]},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    group = body["group"]
    assert body["session_id"] == g.a.name
    assert [(r["participant"], r["status"]) for r in body["results"]] == [
        (g.b.phone, "added"),
        (nobody, "not_on_whatsapp"),
        (private, "privacy_forbids"),
        (careful, "invite_sent"),
    ]
    assert group["subject"] == "Team" and group["owner"] == g.a.phone
    assert group["settings"] == {
        "announce": False,
        "locked": False,
        "ephemeral_s": 0,
        "approval": False,
    }
    assert _member(group, g.a.phone)["role"] == "superadmin"
    assert _member(group, g.b.phone) == {
        "id": g.b.phone,
        "role": "member",
        "phone": g.b.phone,
        "lid": lid_of(g.b.phone),
    }
    joined = await g.event(g.b, "group.joined", group["id"])
    assert joined.data["by"] == g.a.phone and joined.data["reason"] == "added"
    assert joined.data["group"]["subject"] == "Team"
    assert {m["id"] for m in joined.data["group"]["participants"]} == {g.a.phone, g.b.phone}
    mine = await g.event(g.a, "group.joined", group["id"])
    assert (mine.data["by"], mine.data["reason"]) == (g.a.phone, "created")
    # b lists it and reads it; c, not in it, gets 404
    listed = await g.api.get(g.url(g.b))
    assert listed.status_code == 200
    assert group["id"] in [x["id"] for x in listed.json()["groups"]]
    info = await g.api.get(g.url(g.b, f"/{group['id']}"))
    assert info.status_code == 200 and info.json()["subject"] == "Team"
    assert info.json()["invite_link"] is None  # b is no admin
    assert_problem(await g.api.get(g.url(g.c, f"/{group['id']}")), 404, "group_not_found")


async def test_create_list_and_info_by_nats_command(g: Groups) -> None:
    created = await g.ok(
        "group_create", {"session_id": g.b.name, "subject": "Cmd", "participants": [g.c.phone]}
    )
    group_id = created["group"]["id"]
    assert [(r["participant"], r["status"]) for r in created["results"]] == [(g.c.phone, "added")]
    joined = await g.event(g.c, "group.joined", group_id)
    assert (joined.data["by"], joined.data["reason"]) == (g.b.phone, "added")
    listed = await g.ok("groups_list", {"session_id": g.c.name})
    assert group_id in [x["id"] for x in listed["groups"]]
    info = await g.ok("group_info", {"session_id": g.c.name, "group_id": group_id})
    assert info["subject"] == "Cmd" and _member(info, g.b.phone)["role"] == "superadmin"
    missing = await g.command("group_info", {"session_id": g.a.name, "group_id": group_id})
    assert (missing["kind"], missing["code"], missing["status"]) == ("err", "group_not_found", 404)
    bad = await g.command("group_info", {"session_id": g.a.name, "group_id": g.b.phone})
    assert (bad["code"], bad["status"]) == ("invalid_chat_id", 422)


# -- participants and leave ----------------------------------------------------------------


async def test_participants_by_rest_with_roles_and_events(g: Groups) -> None:
    group = await g.create(g.a, "Roles", [g.b])
    path = g.url(g.b, f"/{group}/participants")
    refused = await g.api.post(path, json={"action": "add", "participants": [g.c.phone]})
    assert_problem(refused, 403, "not_group_admin")
    promoted = await g.api.post(
        g.url(g.a, f"/{group}/participants"),
        json={"action": "promote", "participants": [g.b.phone]},
    )
    assert promoted.status_code == 200, promoted.text
    assert promoted.json() == {
        "session_id": g.a.name,
        "group_id": group,
        "action": "promote",
        "results": [{"participant": g.b.phone, "status": "promoted"}],
    }
    seen = await g.event(g.b, "group.participants", group, action="promote")
    assert (seen.data["by"], seen.data["participants"]) == (g.a.phone, [g.b.phone])
    added = await g.api.post(path, json={"action": "add", "participants": [g.c.phone]})
    assert [r["status"] for r in added.json()["results"]] == ["added"]
    for member in (g.a, g.b):
        seen = await g.event(member, "group.participants", group, action="add")
        assert (seen.data["by"], seen.data["participants"]) == (g.b.phone, [g.c.phone])
    joined = await g.event(g.c, "group.joined", group)
    assert (joined.data["by"], joined.data["reason"]) == (g.b.phone, "added")
    removed = await g.api.post(
        g.url(g.a, f"/{group}/participants"),
        json={"action": "remove", "participants": [g.c.phone, phone()]},
    )
    assert [r["status"] for r in removed.json()["results"]] == ["removed", "not_a_participant"]
    left = await g.event(g.c, "group.left", group)
    assert (left.data["by"], left.data["reason"]) == (g.a.phone, "removed")
    # bad input: refused before anything reaches WhatsApp
    for body, status, code in (
        ({"action": "add", "participants": ["123"]}, 422, "invalid_number"),
        ({"action": "add", "participants": ["120363000000000001@g.us"]}, 422, "invalid_number"),
        ({"action": "add", "participants": ["1@g.us"]}, 422, "invalid_chat_id"),
        ({"action": "kick", "participants": [g.c.phone]}, 400, "invalid_body"),
        ({"action": "add", "participants": []}, 400, "invalid_body"),
    ):
        assert_problem(await g.api.post(path, json=body), status, code)
    assert_problem(
        await g.api.post(
            g.url(g.a, "/nogroup/participants"), json={"action": "add", "participants": [g.c.phone]}
        ),
        422,
        "invalid_chat_id",
    )


async def test_participants_and_leave_by_nats_command(g: Groups) -> None:
    group = await g.create(g.a, "CmdRoles", [g.b, g.c])
    changed = await g.ok(
        "group_participants",
        {
            "session_id": g.a.name,
            "group_id": group,
            "action": "promote",
            "participants": [g.c.phone],
        },
    )
    assert changed["results"] == [{"participant": g.c.phone, "status": "promoted"}]
    seen = await g.event(g.b, "group.participants", group, action="promote")
    assert (seen.data["by"], seen.data["participants"]) == (g.a.phone, [g.c.phone])
    demoted = await g.ok(
        "group_participants",
        {
            "session_id": g.c.name,
            "group_id": group,
            "action": "demote",
            "participants": [g.c.phone],
        },
    )
    assert demoted["results"] == [{"participant": g.c.phone, "status": "demoted"}]
    refused = await g.command(
        "group_participants",
        {
            "session_id": g.c.name,
            "group_id": group,
            "action": "remove",
            "participants": [g.b.phone],
        },
    )
    assert (refused["code"], refused["status"]) == ("not_group_admin", 403)
    left = await g.ok("group_leave", {"session_id": g.c.name, "group_id": group})
    assert left == {"session_id": g.c.name, "group_id": group, "left": True}
    gone = await g.event(g.c, "group.left", group)
    assert (gone.data["by"], gone.data["reason"]) == (g.c.phone, "left")
    for member in (g.a, g.b):
        seen = await g.event(member, "group.participants", group, action="leave")
        assert (seen.data["by"], seen.data["participants"]) == (g.c.phone, [g.c.phone])
    again = await g.command("group_leave", {"session_id": g.c.name, "group_id": group})
    assert (again["code"], again["status"]) == ("group_not_found", 404)


async def test_leave_by_rest(g: Groups) -> None:
    group = await g.create(g.a, "Bye", [g.b])
    left = await g.api.post(g.url(g.b, f"/{group}/leave"))
    assert left.status_code == 200, left.text
    assert left.json() == {"session_id": g.b.name, "group_id": group, "left": True}
    gone = await g.event(g.b, "group.left", group)
    assert (gone.data["by"], gone.data["reason"]) == (g.b.phone, "left")
    seen = await g.event(g.a, "group.participants", group, action="leave")
    assert seen.data["participants"] == [g.b.phone]
    assert group not in [x["id"] for x in (await g.api.get(g.url(g.b))).json()["groups"]]
    assert_problem(await g.api.post(g.url(g.b, f"/{group}/leave")), 404, "group_not_found")


# -- invite links and settings -------------------------------------------------------------


async def test_invite_links_and_settings_by_rest(g: Groups) -> None:
    group = await g.create(g.a, "Links", [g.b])
    assert_problem(await g.api.get(g.url(g.b, f"/{group}/invite")), 403, "not_group_admin")
    invite = await g.api.get(g.url(g.a, f"/{group}/invite"))
    assert invite.status_code == 200, invite.text
    link_ = invite.json()["link"]
    assert link_.startswith("https://chat.whatsapp.com/")
    assert (await g.api.get(g.url(g.a, f"/{group}"))).json()["invite_link"] == link_
    preview = await g.api.post(g.url(g.c, "/link-info"), json={"link": link_})
    assert preview.status_code == 200 and preview.json()["id"] == group
    joined = await g.api.post(g.url(g.c, "/join"), json={"link": link_})
    assert joined.status_code == 200, joined.text
    assert (joined.json()["group_id"], joined.json()["status"]) == (group, "joined")
    assert _member(joined.json()["group"], g.c.phone)["role"] == "member"
    mine = await g.event(g.c, "group.joined", group)
    assert (mine.data["by"], mine.data["reason"]) == (g.c.phone, "invite")
    seen = await g.event(g.a, "group.participants", group, action="join")
    assert (seen.data["by"], seen.data["participants"]) == (g.c.phone, [g.c.phone])
    revoked = await g.api.post(g.url(g.a, f"/{group}/invite/revoke"))
    assert revoked.status_code == 200 and revoked.json()["link"] != link_
    updated = await g.event(g.b, "group.updated", group)
    assert (updated.data["by"], updated.data["changes"]) == (g.a.phone, {"invite_link": "revoked"})
    assert_problem(
        await g.api.post(g.url(g.b, "/join"), json={"link": link_}), 422, "invalid_invite_link"
    )
    assert_problem(
        await g.api.post(g.url(g.b, "/link-info"), json={"link": "https://example.com/x/y/zzz"}),
        422,
        "invalid_invite_link",
    )
    # settings
    changed = await g.api.patch(
        g.url(g.a, f"/{group}"),
        json={"subject": "Renamed", "description": "about us", "announce": True},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["subject"] == "Renamed"
    assert changed.json()["description"] == "about us"
    assert changed.json()["settings"]["announce"] is True
    changes = {"subject": "Renamed", "description": "about us", "announce": True}
    for member in (g.b, g.c):
        seen = await g.event(member, "group.updated", group, changes=changes)
        assert seen.data["by"] == g.a.phone
    assert_problem(
        await g.api.patch(g.url(g.b, f"/{group}"), json={"locked": True}), 403, "not_group_admin"
    )
    assert_problem(await g.api.patch(g.url(g.a, f"/{group}"), json={}), 400, "invalid_body")
    assert_problem(
        await g.api.patch(g.url(g.a, f"/{group}"), json={"ephemeral_s": 5}), 400, "invalid_body"
    )


async def test_invite_links_join_and_settings_by_nats_command(g: Groups) -> None:
    group = await g.create(g.b, "CmdLinks", [])
    invite = await g.ok("group_invite", {"session_id": g.b.name, "group_id": group})
    preview = await g.ok("group_link_info", {"session_id": g.a.name, "link": invite["link"]})
    assert (preview["id"], preview["subject"]) == (group, "CmdLinks")
    joined = await g.ok("group_join", {"session_id": g.a.name, "link": invite["link"]})
    assert (joined["group_id"], joined["status"], joined["group"]["id"]) == (group, "joined", group)
    seen = await g.event(g.b, "group.participants", group, action="join")
    assert seen.data["participants"] == [g.a.phone]
    fresh = await g.ok("group_invite", {"session_id": g.b.name, "group_id": group, "revoke": True})
    assert fresh["link"] != invite["link"]
    stale = await g.command("group_join", {"session_id": g.c.name, "link": invite["link"]})
    assert (stale["code"], stale["status"]) == ("invalid_invite_link", 422)
    info = await g.ok(
        "group_update",
        {"session_id": g.b.name, "group_id": group, "locked": True, "ephemeral_s": 604800},
    )
    assert info["settings"] == {
        "announce": False,
        "locked": True,
        "ephemeral_s": 604800,
        "approval": False,
    }
    changes = {"locked": True, "ephemeral_s": 604800}
    seen = await g.event(g.a, "group.updated", group, changes=changes)
    assert seen.data["by"] == g.b.phone
    refused = await g.command(
        "group_update", {"session_id": g.a.name, "group_id": group, "subject": "mine"}
    )
    assert (refused["code"], refused["status"]) == ("not_group_admin", 403)


# -- cache -----------------------------------------------------------------------------------


async def invalidated(nc: NATS, stored: str, timeout_s: float = 10) -> None:
    """Wait until an event on subject ``stored`` is in the stream and the group-cache
    invalidator has handled every event stored so far."""
    js = nc.jetstream()
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            await js.get_last_msg("ZF_EVENTS", stored)
            break
        except NotFoundError:
            assert asyncio.get_running_loop().time() < deadline, stored
            await asyncio.sleep(0.02)
    while True:
        info = await js.consumer_info("ZF_EVENTS", "zf-api-cache-groups")
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        assert asyncio.get_running_loop().time() < deadline, info
        await asyncio.sleep(0.02)


async def test_group_metadata_is_cached_and_dropped_by_group_events(g: Groups) -> None:
    """A second read is served from Valkey (a change made behind the API's back, with no
    event, stays unseen); a group event drops the entry (the next read is fresh)."""
    group = await g.create(g.a, "Cached", [g.b])
    await g.event(g.b, "group.joined", group)
    # that event (stored in the stream) must pass the invalidator before the first read
    await invalidated(g.nc, stored=f"zf.events.{g.tenant}.{g.b.name}.group.joined")
    first = await g.api.get(g.url(g.b, f"/{group}"))
    assert first.json()["subject"] == "Cached"
    listed = await g.api.get(g.url(g.b))
    assert "Cached" in [x["subject"] for x in listed.json()["groups"]]
    kv = await g.nc.jetstream().key_value(SIM_BUCKET)
    key = "group." + group.partition("@")[0]
    record = msgspec.json.decode((await kv.get(key)).value)
    record["subject"] = "Silently renamed"
    await kv.put(key, msgspec.json.encode(record))
    assert (await g.api.get(g.url(g.b, f"/{group}"))).json()["subject"] == "Cached"
    assert "Cached" in [x["subject"] for x in (await g.api.get(g.url(g.b))).json()["groups"]]
    # a's change (through a's session) reaches b's session as group.updated: b's entries go
    await g.api.patch(g.url(g.a, f"/{group}"), json={"description": "new"})
    await g.event(g.b, "group.updated", group)
    for _ in range(100):  # the invalidator consumes the event asynchronously
        fresh = (await g.api.get(g.url(g.b, f"/{group}"))).json()
        if fresh["description"] == "new":
            break
        await asyncio.sleep(0.05)
    assert (fresh["subject"], fresh["description"]) == ("Silently renamed", "new")
    subjects = [x["subject"] for x in (await g.api.get(g.url(g.b))).json()["groups"]]
    assert "Silently renamed" in subjects
    # the admin drops the groups cache (as after a Valkey outage): the next read is fresh
    record = msgspec.json.decode((await kv.get(key)).value)
    record["subject"] = "Renamed again"
    await kv.put(key, msgspec.json.encode(record))
    assert (await g.api.get(g.url(g.b, f"/{group}"))).json()["subject"] == "Silently renamed"
    cleared = await g.api.post(
        "/monitoring/cache/clear", params={"cache": "groups"}, headers=g.admin
    )
    assert cleared.status_code == 200 and cleared.json()["deleted"] >= 1, cleared.text
    assert (await g.api.get(g.url(g.b, f"/{group}"))).json()["subject"] == "Renamed again"


# -- join requests -------------------------------------------------------------------------


async def test_join_requests_by_rest(g: Groups) -> None:
    group = await g.create(g.a, "Gated", [g.b])
    gate = await g.api.patch(g.url(g.a, f"/{group}"), json={"approval": True})
    assert gate.status_code == 200 and gate.json()["settings"]["approval"] is True
    link_ = (await g.api.get(g.url(g.a, f"/{group}/invite"))).json()["link"]
    asked = await g.api.post(g.url(g.c, "/join"), json={"link": link_})
    assert asked.status_code == 200, asked.text
    assert asked.json() == {
        "session_id": g.c.name,
        "group_id": group,
        "status": "requested",
        "group": None,
    }
    seen = await g.event(g.a, "group.participants", group, action="request")
    assert (seen.data["by"], seen.data["participants"]) == (g.c.phone, [g.c.phone])
    listed = await g.api.get(g.url(g.a, f"/{group}/requests"))
    assert listed.status_code == 200, listed.text
    [request] = listed.json()["requests"]
    assert (request["participant"], request["phone"], request["lid"]) == (
        g.c.phone,
        g.c.phone,
        lid_of(g.c.phone),
    )
    assert_problem(await g.api.get(g.url(g.b, f"/{group}/requests")), 403, "not_group_admin")
    path = g.url(g.a, f"/{group}/requests")
    answered = await g.api.post(
        path, json={"action": "approve", "participants": [g.c.phone, g.b.phone]}
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["results"] == [
        {"participant": g.c.phone, "status": "approved"},
        {"participant": g.b.phone, "status": "not_requested"},
    ]
    joined = await g.event(g.c, "group.joined", group)
    assert (joined.data["by"], joined.data["reason"]) == (g.a.phone, "approved")
    added = await g.event(g.b, "group.participants", group, action="add")
    assert (added.data["by"], added.data["participants"]) == (g.a.phone, [g.c.phone])
    assert (await g.api.get(g.url(g.a, f"/{group}/requests"))).json()["requests"] == []
    assert_problem(
        await g.api.post(path, json={"action": "maybe", "participants": [g.c.phone]}),
        400,
        "invalid_body",
    )


async def test_join_requests_by_nats_command(g: Groups) -> None:
    group = await g.create(g.b, "CmdGated", [])
    await g.ok("group_update", {"session_id": g.b.name, "group_id": group, "approval": True})
    invite = await g.ok("group_invite", {"session_id": g.b.name, "group_id": group})
    asked = await g.ok("group_join", {"session_id": g.c.name, "link": invite["link"]})
    assert (asked["status"], asked["group"]) == ("requested", None)
    await g.event(g.b, "group.participants", group, action="request")
    listed = await g.ok("group_requests", {"session_id": g.b.name, "group_id": group})
    assert [r["participant"] for r in listed["requests"]] == [g.c.phone]
    refused = await g.command(
        "group_requests_update",
        {
            "session_id": g.c.name,
            "group_id": group,
            "action": "reject",
            "participants": [g.c.phone],
        },
    )
    assert (refused["code"], refused["status"]) == ("group_not_found", 404)
    rejected = await g.ok(
        "group_requests_update",
        {
            "session_id": g.b.name,
            "group_id": group,
            "action": "reject",
            "participants": [g.c.phone],
        },
    )
    assert rejected["results"] == [{"participant": g.c.phone, "status": "rejected"}]
    seen = await g.event(g.b, "group.participants", group, action="reject")
    assert (seen.data["by"], seen.data["participants"]) == (g.b.phone, [g.c.phone])
    listed = await g.ok("group_requests", {"session_id": g.b.name, "group_id": group})
    assert listed["requests"] == []


async def test_an_add_refused_by_privacy_sends_an_invite_the_receiver_can_use(g: Groups) -> None:
    """c only accepts adds from contacts: a's add answers ``invite_sent``, c's session
    receives the invite as a ``group_invite`` message and joins with its link."""
    await set_group_add_privacy(g.nc, g.c.phone, "contacts")
    try:
        created = await g.api.post(
            g.url(g.a), json={"subject": "Invited", "participants": [g.c.phone]}
        )
        group = created.json()["group"]["id"]
        assert created.json()["results"] == [{"participant": g.c.phone, "status": "invite_sent"}]
        invite = await g.log.wait_for(
            lambda e: (
                e.session_id == g.c.name
                and e.type == "message.received"
                and e.data["type"] == "group_invite"
                and e.data["content"]["group_id"] == group
            )
        )
        assert invite.data["from"] == g.a.phone
        assert invite.data["content"]["subject"] == "Invited"
        assert invite.data["text"] == "Invitation to join my WhatsApp group Invited"
        link_ = invite.data["content"]["link"]
        assert link_.startswith("https://chat.whatsapp.com/")
    finally:
        await set_group_add_privacy(g.nc, g.c.phone, "all")
    joined = await g.api.post(g.url(g.c, "/join"), json={"link": link_})
    assert joined.json()["status"] == "joined"
    seen = await g.event(g.a, "group.participants", group, action="join")
    assert seen.data["participants"] == [g.c.phone]


# -- picture ---------------------------------------------------------------------------------


def _png(width: int, height: int) -> str:
    import base64
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


async def test_group_picture_by_rest(g: Groups) -> None:
    group = await g.create(g.a, "Pictured", [g.b])
    path = g.url(g.b, f"/{group}/picture")
    put = await g.api.put(path, json={"media": {"base64": _png(800, 400)}})
    assert put.status_code == 200, put.text
    picture = put.json()["picture_id"]
    assert put.json() == {"session_id": g.b.name, "group_id": group, "picture_id": picture}
    assert picture
    seen = await g.event(g.a, "group.updated", group, changes={"picture": "set"})
    assert seen.data["by"] == g.b.phone
    assert (await g.api.get(g.url(g.a, f"/{group}"))).json()["picture_id"] == picture
    assert_problem(
        await g.api.put(path, json={"media": {"base64": "bm90IGFuIGltYWdl"}}),
        422,
        "undecodable_media",
    )
    assert_problem(await g.api.put(path, json={"media": {}}), 422, "invalid_request")
    # a locked group's picture is for admins
    await g.api.patch(g.url(g.a, f"/{group}"), json={"locked": True})
    assert_problem(
        await g.api.put(path, json={"media": {"base64": _png(10, 10)}}), 403, "not_group_admin"
    )
    removed = await g.api.delete(g.url(g.a, f"/{group}/picture"))
    assert removed.status_code == 200, removed.text
    assert removed.json()["picture_id"] is None
    gone = await g.event(g.b, "group.updated", group, changes={"picture": "removed"})
    assert gone.data["by"] == g.a.phone
    assert (await g.api.get(g.url(g.b, f"/{group}"))).json()["picture_id"] is None


async def test_group_picture_by_nats_command(g: Groups) -> None:
    group = await g.create(g.c, "CmdPictured", [g.a])
    body = {"session_id": g.c.name, "group_id": group, "media": {"base64": _png(64, 64)}}
    done = await g.ok("group_picture", body)
    assert done["group_id"] == group and done["picture_id"]
    seen = await g.event(g.a, "group.updated", group, changes={"picture": "set"})
    assert seen.data["by"] == g.c.phone
    bad = await g.command("group_picture", {**body, "media": {"base64": "AAAA"}})
    assert (bad["code"], bad["status"]) == ("undecodable_media", 422)
    removed = await g.ok("group_picture", {**body, "media": None})
    assert removed["picture_id"] is None
