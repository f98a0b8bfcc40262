"""Drill: after nats-server is killed (-9) and restarted, every process still follows KV.

Every process keeps KV buckets in memory through a mirror (zapfleet/_mirror.py): the
control plane its key cache (``zf_tenants``), webhook configs (``zf_webhooks``), session
index (``zf_sessions``) and fleet view; each agent its assignments (``zf_sessions``). A
watch whose consumer vanished with the server goes quiet instead of failing; the mirror
notices (reconnect or consumer gone) and reloads. So, once NATS is back:

- a tenant key revoked by another replica (a KV write) is refused,
- a changed webhook URL receives the next events,
- a session moved by a KV write (as another control plane would) is stopped on its old
  node by that node's own fencing, and the API shows the new assignment,

each within ``MIRROR_BOUND_S`` of the change (docs/architecture.md, "KV mirrors").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import msgspec
from nats.aio.client import Client as NATS

from contract.protocol import (
    SESSION_NAMES_BUCKET,
    SESSIONS_BUCKET,
    TENANTS_BUCKET,
    Assignment,
    Empty,
    Op,
    SessionList,
    SessionRecord,
    encode,
    name_key,
    name_target,
)
from control_plane.agents import AgentClient
from control_plane.tenants import TenantStore
from tests.conftest import WebhookReceiver
from tests.reliability.conftest import FleetFactory
from tests.reliability.harness import NO_PACING, Fleet, until

OUTAGE_S = 2.0
# the documented bound (docs/architecture.md): reconnect seen within 0.25 s, consumer check
# every 5 s, restart backoff (<= 2 s a try while JetStream recovers) and a reload
MIRROR_BOUND_S = 15.0


async def test_after_a_nats_restart_kv_changes_reach_every_process_within_the_bound(
    new_fleet: FleetFactory, report: Callable[..., None]
) -> None:
    old_hook, new_hook = WebhookReceiver(), WebhookReceiver()
    fleet = new_fleet("nats-mirrors")
    await fleet.start(("a1", "a2"))
    nc = await fleet.nats_client()
    agents = AgentClient(nc, 5.0)
    try:
        key = await _tenant_with_key(fleet)
        key_id = key.split("_")[1]
        async with (
            _tenant_admin(fleet) as api,
            httpx.AsyncClient(
                base_url=fleet.base_url, headers={"X-API-Key": key}, timeout=10
            ) as keyed,
        ):
            hooked = await keyed.put("/v1/webhooks/config", json={"urls": [old_hook.url]})
            assert hooked.status_code == 200, hooked.text
            await fleet.connected_session(api, nc, "alice", "15550810001", pacing=NO_PACING)
            await fleet.connected_session(api, nc, "bob", "15550810002", pacing=NO_PACING)
            made = await api.post("/v1/sessions", json={"session_id": "carol"})
            assert made.status_code == 201, made.text
            carol = await fleet.wait_state(api, "carol", "PAIRING")
            # one zf_sessions mirror per process: the control plane's (session index and
            # webhook registry share it) and one per agent (one-shot scans come and go)
            await until(lambda: _consumers(nc, SESSIONS_BUCKET, 3), 20, "3 watches of zf_sessions")

            async def send(n: int) -> None:
                body = {"type": "text", "to": "+15550810002", "text": f"m{n}"}
                await api.post("/v1/sessions/alice/messages", json=body)

            await send(0)
            await until(lambda: len(old_hook.events) > 0, 30, "events at the first URL")
            assert (await keyed.get("/v1/sessions")).status_code == 200  # key cached

            await asyncio.to_thread(fleet.kill_nats)
            await asyncio.sleep(OUTAGE_S)
            await asyncio.to_thread(fleet.start_nats)
            await fleet.wait_ready()
            await fleet.wait_state(api, "alice", "CONNECTED", timeout_s=60)
            await until(
                lambda: _running(agents, carol["node_id"], "carol", carol["epoch"]),
                30,
                "carol still on its node",
            )

            # the three changes, at once
            await _revoke(nc, key_id)
            hooked = await api.put("/v1/webhooks/config", json={"urls": [new_hook.url]})
            assert hooked.status_code == 200, hooked.text
            old_node = carol["node_id"]
            new_node = "a2" if old_node == "a1" else "a1"
            moved_epoch = await _move(nc, "acme", "carol", new_node)

            async def key_refused() -> bool:
                return (await keyed.get("/v1/sessions")).status_code == 401

            sent = [1]

            async def new_url_used() -> bool:
                await send(sent[0])
                sent[0] += 1
                return len(new_hook.events) > 0

            async def moved() -> bool:
                view = (await api.get("/v1/sessions/carol")).json()
                shown = (view.get("epoch") or 0) >= moved_epoch
                return shown and not await _running(agents, old_node, "carol", moved_epoch - 1)

            took = await asyncio.gather(
                until(key_refused, MIRROR_BOUND_S, "revoked key refused", interval_s=0.2),
                until(new_url_used, MIRROR_BOUND_S, "new webhook URL used", interval_s=0.5),
                until(moved, MIRROR_BOUND_S, "carol moved off its node", interval_s=0.2),
            )
    finally:
        await nc.close()
        old_hook.go_down()
        new_hook.go_down()
    report(
        "nats_restart_mirrors",
        outage_s=OUTAGE_S,
        bound_s=MIRROR_BOUND_S,
        key_revoked_s=round(took[0], 2),
        webhook_url_changed_s=round(took[1], 2),
        session_moved_s=round(took[2], 2),
    )


async def _tenant_with_key(fleet: Fleet) -> str:
    """Tenant acme and one API key of it."""
    async with fleet.admin() as admin:
        created = await admin.post("/v1/tenants", json={"tenant_id": "acme"})
        assert created.status_code == 201, created.text
        issued = await admin.post("/v1/tenants/acme/keys", json={"label": "drill"})
        assert issued.status_code == 201, issued.text
        key: str = issued.json()["key"]
        return key


def _tenant_admin(fleet: Fleet) -> httpx.AsyncClient:
    """The admin key acting for tenant acme."""
    headers = {**fleet.admin_headers, "X-Tenant-Id": "acme"}
    return httpx.AsyncClient(base_url=fleet.base_url, headers=headers, timeout=10)


async def _consumers(nc: NATS, bucket: str, count: int) -> bool:
    info = await nc.jetstream().stream_info(f"KV_{bucket}")
    return info.state.consumer_count == count


async def _revoke(nc: NATS, key_id: str) -> None:
    """Revoke a key by a KV write, as another control-plane replica does (this process
    only learns of it through its mirror of zf_tenants)."""
    tenants = TenantStore(await nc.jetstream().key_value(TENANTS_BUCKET))
    record = await tenants.get_key(key_id)
    assert record is not None
    record.revoked_at = time.time()
    await tenants.put_key(record)


async def _running(agents: AgentClient, node_id: str, name: str, epoch_at_most: int) -> bool:
    """``node_id`` runs the session ``name`` at ``epoch_at_most`` or older."""
    listed = await agents.call(node_id, Op.SESSIONS_LIST, Empty(), SessionList)
    return any(s.session_id == name and s.epoch <= epoch_at_most for s in listed.sessions)


async def _move(nc: NATS, tenant: str, name: str, node_id: str) -> int:
    """Assign the session to ``node_id`` at the next epoch by a KV write, as another
    control plane would. Returns the new epoch."""
    js = nc.jetstream()
    names = await js.key_value(SESSION_NAMES_BUCKET)
    sessions = await js.key_value(SESSIONS_BUCKET)
    internal = name_target((await names.get(name_key(tenant, name))).value)[0]
    entry = await sessions.get(internal)
    record = msgspec.json.decode(entry.value or b"", type=SessionRecord)
    assert record.assignment is not None
    epoch = record.assignment.epoch + 1
    record.assignment = Assignment(node_id=node_id, epoch=epoch)
    await sessions.update(internal, encode(record), last=entry.revision)
    return epoch
