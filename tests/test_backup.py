"""Disaster recovery: `zapfleet backup` of a running fleet, NATS' storage destroyed,
`zapfleet restore` into the empty server, the processes started again (issue 19).

What must come back: every session CONNECTED without a new QR (its sim account link and
device state were in JetStream), the tenant's key authenticating, the webhook delivering.
And the restore refuses to write over a NATS that already holds data.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import pytest

from tests.conftest import (
    ADMIN_KEY,
    ARTIFACTS,
    WebhookReceiver,
    agent_env,
    spawn,
    stop_process,
    wait_until_ready,
)
from tests.helpers import new_tenant, pair_session, wait_state
from zapfleet.devservers import ChildProcess, free_port, start_nats, wait_for_port

LOG_DIR = ARTIFACTS / "logs" / "backup"


@dataclass
class Fleet:
    root: Path
    valkey_url: str
    nats_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    nats: ChildProcess | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start_nats(self) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.nats = start_nats(self.root / "nats", self.nats_port, log_path=LOG_DIR / "nats.log")

    def destroy_nats(self) -> None:
        """kill -9 and its storage gone: the disaster."""
        assert self.nats is not None
        self.nats.kill()
        shutil.rmtree(self.root / "nats")

    def start_processes(self, incarnation: int) -> None:
        agent = spawn(
            f"agent-{incarnation}",
            ["agent"],
            agent_env(self.nats_url, "dr-agent", self.root / f"agent-{incarnation}"),
            LOG_DIR,
        )
        control_plane = spawn(
            f"control-plane-{incarnation}",
            ["control-plane"],
            {
                "ZAPFLEET_NATS_URL": self.nats_url,
                "ZAPFLEET_VALKEY_URL": self.valkey_url.rsplit("/", 1)[0] + "/7",
                "ZAPFLEET_ADMIN_KEY": ADMIN_KEY,
                "ZAPFLEET_HTTP_PORT": str(self.http_port),
                "ZAPFLEET_DEFAULT_ENGINE": "sim",
                "ZAPFLEET_ALLOW_PRIVATE_TARGETS": "true",
            },
            LOG_DIR,
        )
        self.processes = [agent, control_plane]
        wait_for_port(self.http_port, 60, control_plane)
        wait_until_ready(f"{self.base_url}/monitoring/ready", control_plane)

    def stop_processes(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        self.processes = []

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "zapfleet", *args, "--nats-url", self.nats_url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def fleet(tmp_path: Path, valkey_url: str) -> Iterator[Fleet]:
    fleet = Fleet(root=tmp_path, valkey_url=valkey_url)
    fleet.start_nats()
    try:
        yield fleet
    finally:
        fleet.stop_processes()
        if fleet.nats is not None:
            fleet.nats.stop()


async def wait_for_webhook(receiver: WebhookReceiver, message_id: str) -> None:
    def sent(body: dict[str, object]) -> bool:
        data = body.get("data")
        return isinstance(data, dict) and data.get("message_id") == message_id

    await asyncio.to_thread(receiver.wait_for, sent, 30)


async def test_a_fleet_restored_into_an_empty_nats_comes_back_without_re_pairing(
    fleet: Fleet, webhook_receiver: WebhookReceiver
) -> None:
    fleet.start_processes(1)
    admin = httpx.AsyncClient(base_url=fleet.base_url, headers={"X-API-Key": ADMIN_KEY}, timeout=10)
    tenant_id, key = await new_tenant(admin, "dr")
    api = httpx.AsyncClient(base_url=fleet.base_url, headers={"X-API-Key": key}, timeout=10)
    nc = await nats.connect(fleet.nats_url)
    try:
        for session_id in ("dr-a", "dr-b"):
            created = await api.post(
                "/v1/sessions",
                json={"session_id": session_id, "webhook_url": webhook_receiver.url},
            )
            assert created.status_code == 201, created.text
        await pair_session(api, nc, "dr-a", "15550009001")
        await pair_session(api, nc, "dr-b", "15550009002")
    finally:
        await nc.close()

    archive = fleet.root / "fleet.tar.gz"
    done = fleet.cli("backup", str(archive))
    assert done.returncode == 0, done.stderr
    assert "KV_zf_sessions" in done.stdout and "KV_zf_tenants" in done.stdout

    fleet.stop_processes()
    fleet.destroy_nats()
    fleet.start_nats()
    done = fleet.cli("restore", str(archive))
    assert done.returncode == 0, done.stderr
    fleet.start_processes(2)  # new agent data dir: device state can only come from NATS

    try:
        for session_id in ("dr-a", "dr-b"):
            body = await wait_state(api, session_id, "CONNECTED", timeout_s=60)
            assert body["tenant"] == tenant_id
        sent = await api.post(
            "/v1/sessions/dr-a/messages",
            json={"type": "text", "to": "+15550009002", "text": "after the restore"},
        )
        assert sent.status_code == 202, sent.text
        await wait_for_webhook(webhook_receiver, sent.json()["message_id"])
    finally:
        await api.aclose()
        await admin.aclose()


async def test_a_restore_refuses_a_nats_that_already_holds_data(fleet: Fleet) -> None:
    fleet.start_processes(1)
    archive = fleet.root / "fleet.tar.gz"
    assert fleet.cli("backup", str(archive)).returncode == 0
    done = fleet.cli("restore", str(archive))
    assert done.returncode == 1
    assert "already holds messages" in done.stderr
    not_an_archive = fleet.root / "nothing.tar.gz"
    not_an_archive.write_bytes(b"plain text")
    done = fleet.cli("restore", str(not_an_archive))
    assert done.returncode == 1 and "not a zapfleet backup" in done.stderr
