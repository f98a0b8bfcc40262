"""Groups on the sim engine itself (issue 16): sim accounts on two engines (two agents'
worth of sockets) share groups through KV ``zf_sim``; roles are enforced, every change
reaches every member as an engine event, and sends use cached group metadata."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
import pytest_asyncio

from contract.protocol import (
    INVITE_PREFIX,
    GroupCreate,
    GroupCreated,
    Op,
    SendAccepted,
    SendMessage,
    SessionSpec,
    TextContent,
)
from node_agent.engines._base import Connected, EngineEvent, GroupError, GroupEvent
from node_agent.engines.sim import (
    SimConfig,
    SimEngine,
    SimSession,
    lid_of,
    seed_account,
    set_group_add_privacy,
)
from tests.agent_support import (
    AgentClient,
    EventLog,
    connected,
    phone,
    running_agent,
    sim_settings,
    unique,
)


@dataclass
class Phone:
    session: SimSession
    number: str
    events: list[EngineEvent] = field(default_factory=list)

    def groups(self, group_id: str) -> list[GroupEvent]:
        return [e for e in self.events if isinstance(e, GroupEvent) and e.group_id == group_id]

    async def wait(
        self, predicate: Callable[[GroupEvent], bool], timeout_s: float = 5
    ) -> GroupEvent:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.events:
                if isinstance(event, GroupEvent) and predicate(event):
                    return event
            await asyncio.sleep(0.01)
        raise AssertionError(f"no matching group event; saw {self.events}")


@dataclass
class Network:
    one: SimEngine  # the sockets of one agent
    two: SimEngine  # and of another
    a: Phone
    b: Phone
    c: Phone


async def _online(engine: SimEngine, number: str) -> Phone:
    key = unique("u")
    await seed_account(engine.nc, key, number)
    events: list[EngineEvent] = []
    session = engine.open_session(
        SessionSpec(session_id=key, tenant="t", engine="sim"), events.append
    )
    await session.connect()
    deadline = time.monotonic() + 5
    while not any(isinstance(e, Connected) for e in events):
        assert time.monotonic() < deadline, events
        await asyncio.sleep(0.01)
    return Phone(session=session, number=number, events=events)


@pytest_asyncio.fixture
async def net(nats_url: str) -> AsyncIterator[Network]:
    first, second = await nats.connect(nats_url), await nats.connect(nats_url)
    config = SimConfig(read_after_s=None)
    one, two = SimEngine(first, config), SimEngine(second, config)
    await one.start()
    await two.start()
    a = await _online(one, phone())
    b = await _online(two, phone())
    c = await _online(two, phone())
    yield Network(one=one, two=two, a=a, b=b, c=c)
    for p in (a, b, c):
        await p.session.disconnect()
    await one.close()
    await two.close()
    await first.close()
    await second.close()


async def test_create_gives_per_participant_results_and_every_member_hears_it(
    net: Network,
) -> None:
    private, careful = phone(), phone()
    for number in (private, careful):
        await seed_account(net.one.nc, unique("u"), number)
    await set_group_add_privacy(net.one.nc, private, "none")
    await set_group_add_privacy(net.one.nc, careful, "contacts")
    nobody = phone()  # not on WhatsApp
    created = await net.a.session.create_group("Team", [net.b.number, nobody, private, careful])
    group = created.group
    assert group.id.endswith("@g.us") and group.subject == "Team"
    assert [(r.participant, r.status) for r in created.results] == [
        (net.b.number, "added"),
        (nobody, "not_on_whatsapp"),
        (private, "privacy_forbids"),
        (careful, "invite_sent"),
    ]
    roles = {m.id: m.role for m in group.participants}
    assert roles == {net.a.number: "superadmin", net.b.number: "member"}
    assert group.owner == net.a.number
    b_member = next(m for m in group.participants if m.id == net.b.number)
    assert (b_member.phone, b_member.lid) == (net.b.number, lid_of(net.b.number))
    # both members (on different engines) are told they joined, with the group
    for member, reason in ((net.a, "created"), (net.b, "added")):
        joined = await member.wait(lambda e: e.kind == "joined" and e.group_id == group.id)
        assert (joined.reason, joined.by) == (reason, net.a.number)
        assert joined.group is not None and joined.group.subject == "Team"
        assert {m.id for m in joined.group.participants} == {net.a.number, net.b.number}
    # only the two of them see it
    assert [g.id for g in await net.b.session.list_groups()].count(group.id) == 1
    with pytest.raises(GroupError) as refused:
        await net.c.session.group_info(group.id)
    assert refused.value.code == "group_not_found"


async def test_only_admins_change_participants_and_each_member_hears_who_did_what(
    net: Network,
) -> None:
    group = (await net.a.session.create_group("Roles", [net.b.number])).group.id
    with pytest.raises(GroupError) as refused:
        await net.b.session.update_participants(group, "add", [net.c.number])
    assert refused.value.code == "not_group_admin"
    promoted = await net.a.session.update_participants(group, "promote", [net.b.number])
    assert [(r.participant, r.status) for r in promoted] == [(net.b.number, "promoted")]
    for member in (net.a, net.b):
        seen = await member.wait(lambda e: e.kind == "participants" and e.action == "promote")
        assert (seen.group_id, seen.by, seen.participants) == (
            group,
            net.a.number,
            (net.b.number,),
        )
    # now b (an admin, on the other engine) adds c
    added = await net.b.session.update_participants(group, "add", [net.c.number, net.a.number])
    assert [(r.participant, r.status) for r in added] == [
        (net.c.number, "added"),
        (net.a.number, "already_participant"),
    ]
    joined = await net.c.wait(lambda e: e.kind == "joined" and e.group_id == group)
    assert (joined.by, joined.reason) == (net.b.number, "added")
    for member in (net.a, net.b):
        seen = await member.wait(lambda e: e.kind == "participants" and e.action == "add")
        assert (seen.group_id, seen.by, seen.participants) == (group, net.b.number, (net.c.number,))
    info = await net.c.session.group_info(group)
    assert {m.id: m.role for m in info.participants} == {
        net.a.number: "superadmin",
        net.b.number: "admin",
        net.c.number: "member",
    }
    assert info.invite_link is None  # c is no admin
    # demote and remove, with a result for someone who is not in the group
    outsider = phone()
    await seed_account(net.one.nc, unique("u"), outsider)
    demoted = await net.a.session.update_participants(group, "demote", [net.b.number, outsider])
    assert [r.status for r in demoted] == ["demoted", "not_a_participant"]
    removed = await net.a.session.update_participants(group, "remove", [net.c.number])
    assert [r.status for r in removed] == ["removed"]
    left = await net.c.wait(lambda e: e.kind == "left" and e.group_id == group)
    assert (left.by, left.reason) == (net.a.number, "removed")
    seen = await net.b.wait(lambda e: e.kind == "participants" and e.action == "remove")
    assert (seen.by, seen.participants) == (net.a.number, (net.c.number,))
    with pytest.raises(GroupError) as gone:
        await net.c.session.update_participants(group, "add", [net.c.number])
    assert gone.value.code == "group_not_found"


async def test_leaving_tells_the_others_and_the_group_keeps_an_admin(net: Network) -> None:
    group = (await net.a.session.create_group("Leave", [net.b.number, net.c.number])).group.id
    await net.a.session.leave_group(group)
    left = await net.a.wait(lambda e: e.kind == "left" and e.group_id == group)
    assert (left.by, left.reason) == (net.a.number, "left")
    for member in (net.b, net.c):
        seen = await member.wait(lambda e: e.kind == "participants" and e.action == "leave")
        assert (seen.group_id, seen.by, seen.participants) == (group, net.a.number, (net.a.number,))
    info = await net.b.session.group_info(group)
    assert [m.role for m in info.participants].count("admin") == 1
    assert group not in [g.id for g in await net.a.session.list_groups()]
    with pytest.raises(GroupError) as again:
        await net.a.session.leave_group(group)
    assert again.value.code == "group_not_found"


async def test_a_hundred_sends_to_a_group_cost_at_most_one_metadata_query(net: Network) -> None:
    group = (await net.a.session.create_group("Burst", [net.b.number])).group.id
    await net.a.wait(lambda e: e.kind == "joined" and e.group_id == group)
    before = net.one.metadata_queries
    for n in range(100):
        await net.a.session.send(group, TextContent(text=f"burst {n}"), f"m{n}")
    assert net.one.metadata_queries - before <= 1
    # a change invalidates the cache: the next send sees the new member
    await net.a.session.update_participants(group, "add", [net.c.number])
    await net.a.wait(lambda e: e.kind == "participants" and e.action == "add")
    await net.a.session.send(group, TextContent(text="after"), "m-after")
    deadline = time.monotonic() + 5
    while not any(getattr(e, "text", None) == "after" for e in net.c.events):
        assert time.monotonic() < deadline, "the new member never got the message"
        await asyncio.sleep(0.01)


async def test_invite_links_join_revoke_and_settings(net: Network) -> None:
    group = (await net.a.session.create_group("Links", [net.b.number])).group.id
    with pytest.raises(GroupError) as member:
        await net.b.session.invite_link(group)
    assert member.value.code == "not_group_admin"
    link = await net.a.session.invite_link(group)
    assert link.startswith(INVITE_PREFIX)
    assert await net.a.session.invite_link(group) == link  # stable until revoked
    assert (await net.a.session.group_info(group)).invite_link == link
    preview = await net.c.session.link_info(link)
    assert (preview.id, preview.subject) == (group, "Links")
    joined = await net.c.session.join_group(link)
    assert (joined.group_id, joined.status) == (group, "joined")
    joined = await net.c.wait(lambda e: e.kind == "joined" and e.group_id == group)
    assert joined.reason == "invite"
    seen = await net.a.wait(lambda e: e.kind == "participants" and e.action == "join")
    assert (seen.by, seen.participants) == (net.c.number, (net.c.number,))
    fresh = await net.a.session.invite_link(group, revoke=True)
    assert fresh != link
    revoked = await net.b.wait(lambda e: e.kind == "updated" and e.group_id == group)
    assert revoked.changes == {"invite_link": "revoked"}
    for bad in (link, INVITE_PREFIX + "Zz9" * 6):
        with pytest.raises(GroupError) as invalid:
            await net.c.session.link_info(bad)
        assert invalid.value.code == "invalid_invite_link"
    # settings: announce and locked are for admins; a locked group's info too
    with pytest.raises(GroupError) as not_admin:
        await net.b.session.update_group(group, {"announce": True})
    assert not_admin.value.code == "not_group_admin"
    await net.b.session.update_group(group, {"subject": "Renamed by b"})
    await net.a.session.update_group(group, {"locked": True, "ephemeral_s": 86400})
    for member in (net.b, net.c):
        seen = await member.wait(lambda e: e.kind == "updated" and "locked" in (e.changes or {}))
        assert (seen.by, seen.changes) == (net.a.number, {"locked": True, "ephemeral_s": 86400})
    with pytest.raises(GroupError) as locked:
        await net.b.session.update_group(group, {"description": "no"})
    assert locked.value.code == "not_group_admin"
    info = await net.c.session.group_info(group)
    assert info.subject == "Renamed by b"
    assert (info.settings.locked, info.settings.announce, info.settings.ephemeral_s) == (
        True,
        False,
        86400,
    )


async def test_a_hundred_sends_to_a_group_through_the_agent_cost_at_most_one_query(
    nats_url: str, tmp_path: Path
) -> None:
    """The agent's send path (RPC → queue → engine), two agents: 100 queued sends to a
    group made by RPC query the group's metadata at most once; every one is delivered."""
    settings_a = sim_settings(nats_url, tmp_path / "a")
    settings_b = sim_settings(nats_url, tmp_path / "b")
    async with connected(nats_url) as client:
        log = EventLog()
        await log.start(client, "t")
        async with running_agent(settings_a) as agent_a, running_agent(settings_b):
            rpc_a = AgentClient(client, settings_a.node_id)
            rpc_b = AgentClient(client, settings_b.node_id)
            alice, bob = unique("alice"), unique("bob")
            alice_phone, bob_phone = phone(), phone()
            await rpc_a.start(alice)
            await rpc_b.start(bob)
            await rpc_a.pair(alice, alice_phone)
            await rpc_b.pair(bob, bob_phone)
            created = await rpc_a.call(
                Op.GROUP_CREATE,
                GroupCreate(session_id=alice, subject="Burst", participants=[f"+{bob_phone}"]),
                GroupCreated,
            )
            group = created.group.id
            assert [r.status for r in created.results] == ["added"]
            joined = await log.wait_for(lambda e: e.session_id == bob and e.type == "group.joined")
            assert joined.data["group_id"] == group
            engine = agent_a.engine
            assert isinstance(engine, SimEngine)
            before = engine.metadata_queries
            for n in range(100):
                await rpc_a.call(
                    Op.MESSAGE_SEND,
                    SendMessage(
                        session_id=alice,
                        message_id=f"m-{n}-{unique('x')}",
                        to=group,
                        content=TextContent(text=f"burst {n}"),
                    ),
                    SendAccepted,
                )
            received = await log.wait_count(
                lambda e: e.session_id == bob and e.type == "message.received", 100, timeout_s=60
            )
            assert {e.data["chat"] for e in received} == {group}
            assert engine.metadata_queries - before <= 1
        await log.stop()


async def test_join_requests_when_the_group_needs_approval(net: Network) -> None:
    group = (await net.a.session.create_group("Gated", [net.b.number])).group.id
    with pytest.raises(GroupError) as member:
        await net.b.session.update_group(group, {"approval": True})
    assert member.value.code == "not_group_admin"
    await net.a.session.update_group(group, {"approval": True})
    assert (await net.b.session.group_info(group)).settings.approval is True
    link = await net.a.session.invite_link(group)
    requested = await net.c.session.join_group(link)
    assert (requested.group_id, requested.status, requested.group) == (group, "requested", None)
    asked = await net.a.wait(lambda e: e.kind == "participants" and e.action == "request")
    assert (asked.group_id, asked.by, asked.participants) == (group, net.c.number, (net.c.number,))
    assert not [e for e in net.b.groups(group) if e.action == "request"]  # admins only
    [request] = await net.a.session.join_requests(group)
    assert (request.participant, request.phone, request.lid) == (
        net.c.number,
        net.c.number,
        lid_of(net.c.number),
    )
    assert request.requested_at is not None
    with pytest.raises(GroupError) as not_admin:
        await net.b.session.join_requests(group)
    assert not_admin.value.code == "not_group_admin"
    with pytest.raises(GroupError) as not_in:
        await net.c.session.group_info(group)
    assert not_in.value.code == "group_not_found"  # a request is no membership
    answered = await net.a.session.answer_requests(group, "approve", [net.c.number, net.b.number])
    assert [(r.participant, r.status) for r in answered] == [
        (net.c.number, "approved"),
        (net.b.number, "not_requested"),
    ]
    joined = await net.c.wait(lambda e: e.kind == "joined" and e.group_id == group)
    assert (joined.by, joined.reason) == (net.a.number, "approved")
    seen = await net.b.wait(lambda e: e.kind == "participants" and e.action == "add")
    assert (seen.by, seen.participants) == (net.a.number, (net.c.number,))
    assert await net.a.session.join_requests(group) == []
    # a rejected request leaves no trace but the admins' event
    outsider = await _online(net.one, phone())
    await outsider.session.join_group(link)
    await net.a.wait(lambda e: e.action == "request" and e.by == outsider.number)
    rejected = await net.a.session.answer_requests(group, "reject", [outsider.number])
    assert [r.status for r in rejected] == ["rejected"]
    await net.a.wait(lambda e: e.action == "reject" and e.participants == (outsider.number,))
    assert await net.a.session.join_requests(group) == []
    with pytest.raises(GroupError):
        await outsider.session.group_info(group)
    await outsider.session.disconnect()
