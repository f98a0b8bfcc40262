"""Fencing on the agent side (node_agent/lease.py, DESIGN §4), without NATS: when a
session record takes a session away from this node, and how long the node lease lasts.

These are the two rules every other fencing mechanism builds on: the assignment watch
asks :func:`superseded` about every change of ``zf_sessions``, and engines ask
:meth:`Lease.valid` before every network action."""

from __future__ import annotations

import time

import pytest

from contract.protocol import Assignment, SessionRecord, SessionSpec
from node_agent.lease import Lease, superseded

NODE = "node-a"
RUNNING_EPOCH = 7


def record(node_id: str | None, epoch: int = RUNNING_EPOCH) -> SessionRecord:
    assignment = None if node_id is None else Assignment(node_id=node_id, epoch=epoch)
    return SessionRecord(spec=SessionSpec(session_id="s1", tenant="t"), assignment=assignment)


def test_a_newer_epoch_on_the_same_node_stops_the_session_running_at_the_old_one() -> None:
    """Guarantee: a session is stopped when a newer epoch is assigned to the same node
    (another start on this node — after a claim or a re-placement — owns it now)."""
    reason = superseded(record(NODE, RUNNING_EPOCH + 1), NODE, RUNNING_EPOCH)
    assert reason == f"superseded by epoch {RUNNING_EPOCH + 1}"
    assert superseded(record(NODE, RUNNING_EPOCH + 100), NODE, RUNNING_EPOCH) is not None


def test_the_epoch_it_runs_with_or_an_older_one_lets_the_session_go_on() -> None:
    """The record at the session's own epoch is the normal case; an older epoch is a
    stale view (the agent claimed a newer one itself and KV has not caught up): neither
    may stop a session that is rightfully running."""
    assert superseded(record(NODE, RUNNING_EPOCH), NODE, RUNNING_EPOCH) is None
    assert superseded(record(NODE, RUNNING_EPOCH - 1), NODE, RUNNING_EPOCH) is None


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (None, "session deleted"),
        (record(None), "session unassigned"),
        (record("node-b", RUNNING_EPOCH), f"session moved to node-b@{RUNNING_EPOCH}"),
        (record("node-b", RUNNING_EPOCH + 1), f"session moved to node-b@{RUNNING_EPOCH + 1}"),
        # another node at an *older* epoch is still another node
        (record("node-b", RUNNING_EPOCH - 1), f"session moved to node-b@{RUNNING_EPOCH - 1}"),
    ],
)
def test_a_session_deleted_unassigned_or_moved_elsewhere_is_stopped(
    stored: SessionRecord | None, reason: str
) -> None:
    assert superseded(stored, NODE, RUNNING_EPOCH) == reason


def test_desired_stopped_alone_does_not_fence() -> None:
    """The API stops (or logs out) the session on its node itself and must find it there."""
    stopped = record(NODE)
    stopped.desired = "stopped"
    assert superseded(stopped, NODE, RUNNING_EPOCH) is None


def test_a_lease_is_valid_until_its_ttl_passes_without_a_renewal() -> None:
    assert Lease(ttl_s=3600).valid()
    lease = Lease(ttl_s=0.05)
    time.sleep(0.1)
    assert lease.silent_s() >= 0.1
    assert not lease.valid()


def test_a_renewal_counts_from_when_the_heartbeat_was_sent_not_when_it_was_stored() -> None:
    """A heartbeat that took longer than the TTL to be stored (the agent was frozen, NATS
    slow) does not revive the lease: the control plane saw the node silent for that long
    and may already have moved its sessions."""
    lease = Lease(ttl_s=0.05)
    sent_at = Lease.now()
    time.sleep(0.1)
    lease.renewed(sent_at)
    assert not lease.valid()
    assert lease.silent_s() >= 0.1


def test_an_older_heartbeat_stored_late_never_moves_the_renewal_back() -> None:
    lease = Lease(ttl_s=3600)
    fresh = Lease.now()
    lease.renewed(fresh)
    lease.renewed(fresh - 7200)  # a heartbeat from two hours ago, stored just now
    assert lease.valid()
    assert lease.silent_s() < 3600
