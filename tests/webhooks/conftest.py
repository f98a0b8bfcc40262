"""Fixtures of the webhook tests: a fresh nats-server per test (so no durable consumer or
stream state leaks between tests), events published as an agent would, and dispatchers
in-process or as real ``zapfleet webhooks`` processes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from contract.protocol import Event, EventType, encode, event_subject
from control_plane.settings import ControlPlaneSettings
from control_plane.webhooks.dispatcher import Dispatcher
from node_agent.events import new_event_id
from tests.conftest import (
    ADMIN_KEY,
    ARTIFACTS,
    agent_env,
    spawn,
    stop_process,
    wait_until_ready,
)
from zapfleet.devservers import ChildProcess, free_port, start_nats
from zapfleet.natsjs import ensure_jetstream

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


@dataclass
class ApiStack:
    base_url: str
    nats_url: str
    headers: dict[str, str]


def wait_for_log(path: Path, text: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}; see {path}")
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{text!r} not in {path} after {timeout_s} s")


@pytest.fixture(scope="module")
def api_stack(valkey_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    """A control plane (dispatcher in-process, 2 attempts, fast backoff) and a sim agent
    on a nats-server of their own, so their streams and consumers are theirs alone."""
    root = tmp_path_factory.mktemp("webhook-stack")
    log_dir = ARTIFACTS / "logs"
    server = start_nats(root / "nats", log_path=root / "nats.log")
    nats_url = f"nats://127.0.0.1:{server.port}"
    port = free_port()
    settings = settings_for(
        nats_url,
        valkey_url.rsplit("/", 1)[0] + "/5",
        http_port=port,
        default_engine="sim",
        webhook_max_attempts=2,
        webhook_ack_wait_s=5.0,
        rate_limits_enabled=False,
    )
    agent = spawn(
        "webhooks-agent",
        ["agent"],
        agent_env(nats_url, "wh-agent-1", root / "agent", ZAPFLEET_SIM_READ_AFTER_S="0.2"),
        log_dir,
    )
    control_plane = spawn(
        "webhooks-control-plane", ["control-plane"], settings_env(settings), log_dir
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{base_url}/monitoring/ready", control_plane)
        wait_for_log(log_dir / "webhooks-agent.log", "agent ready", agent, 30)
        yield ApiStack(base_url, nats_url, {"Authorization": f"Bearer {ADMIN_KEY}"})
    finally:
        stop_process(control_plane)
        stop_process(agent)
        server.stop()
