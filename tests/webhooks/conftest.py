"""Fixtures of the webhook tests: a fresh nats-server per test (so no durable consumer or
stream state leaks between tests), events published as an agent would, and dispatchers
in-process or as real ``zapfleet webhooks`` processes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from control_plane.settings import ControlPlaneSettings
from control_plane.webhooks.dispatcher import Dispatcher
from node_agent.events import new_event_id
from node_agent.protocol import Event, EventType, encode, ensure_jetstream, event_subject
from tests.conftest import ADMIN_KEY, ARTIFACTS, spawn, stop_process
from zapfleet.devservers import ChildProcess, start_nats

FAST = {
    "webhook_allowed_networks": ["127.0.0.1/32"],
    "webhook_timeout_s": 2.0,
    "webhook_backoff_base_s": 0.05,
    "webhook_backoff_max_s": 0.4,
    "webhook_max_attempts": 50,
    "webhook_ack_wait_s": 3.0,
}


def settings_for(
    nats_url: str, valkey_url: str = "valkey://127.0.0.1:1/0", **extra: object
) -> ControlPlaneSettings:
    values = {**FAST, **extra}
    return msgspec.convert(
        {"nats_url": nats_url, "valkey_url": valkey_url, "admin_key": ADMIN_KEY, **values},
        ControlPlaneSettings,
    )


def settings_env(settings: ControlPlaneSettings) -> dict[str, str]:
    """The same settings as ZAPFLEET_* variables, for a child process."""
    env = {}
    for name, value in msgspec.structs.asdict(settings).items():
        if value is None:
            continue
        if isinstance(value, list):
            text = ",".join(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"ZAPFLEET_{name.upper()}"] = text
    return env


@pytest.fixture
def fresh_nats(tmp_path: Path) -> Iterator[str]:
    server: ChildProcess = start_nats(tmp_path / "nats", log_path=tmp_path / "nats.log")
    yield f"nats://127.0.0.1:{server.port}"
    server.stop()


@pytest.fixture
async def js_client(fresh_nats: str) -> AsyncIterator[NATS]:
    client = await nats.connect(fresh_nats)
    await ensure_jetstream(client.jetstream(), events_max_age_s=3600, node_ttl_s=10)
    yield client
    await client.close()


async def publish_events(
    nc: NATS,
    count: int,
    tenant: str = "acme",
    session_id: str = "s1",
    event_type: EventType = EventType.MESSAGE_RECEIVED,
) -> list[str]:
    """Publish ``count`` events to ZF_EVENTS as an agent would; returns their ids."""
    js = nc.jetstream()
    ids = []
    for n in range(count):
        event = Event(
            id=new_event_id(),
            type=event_type,
            tenant=tenant,
            session_id=session_id,
            ts=time.time(),
            data={"n": n, "text": f"message {n}"},
        )
        await js.publish(
            event_subject(tenant, session_id, event_type),
            encode(event),
            headers={"Nats-Msg-Id": event.id},
        )
        ids.append(event.id)
    return ids


class InProcess:
    """A dispatcher in the test's event loop, restartable."""

    def __init__(self, nc: NATS, settings: ControlPlaneSettings) -> None:
        self.nc = nc
        self.settings = settings
        self.dispatcher: Dispatcher | None = None

    async def start(self) -> Dispatcher:
        self.dispatcher = Dispatcher(self.nc, self.nc.jetstream(), self.settings)
        await self.dispatcher.start()
        return self.dispatcher

    async def stop(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.stop()
            self.dispatcher = None


def spawn_dispatcher(name: str, settings: ControlPlaneSettings) -> subprocess.Popen[bytes]:
    return spawn(name, ["webhooks"], settings_env(settings), ARTIFACTS / "logs")


__all__ = [
    "InProcess",
    "publish_events",
    "settings_env",
    "settings_for",
    "spawn_dispatcher",
    "stop_process",
]
