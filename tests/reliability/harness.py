"""A fleet of its own for the reliability tests: nats-server, valkey-server, sim agents and
a control plane, all real processes on free loopback ports, which a drill may restart or
kill at will without disturbing the rest of the suite (whose ``stack`` shares servers).

Restarts keep the ports and the data directories, as a systemd restart would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.aio.client import Client as NATS

from node_agent.engines.sim import link, seed_account
from tests.conftest import ADMIN_KEY, ARTIFACTS, agent_env, spawn, stop_process
from zapfleet.cli import session_key
from zapfleet.devservers import ChildProcess, free_port, start_nats, start_valkey

LOG_ROOT = ARTIFACTS / "logs" / "reliability"
UNLIMITED = {f"ZAPFLEET_RATE_{c}": "1000000/60" for c in ("MESSAGES", "SESSIONS", "QUERIES")}
NO_PACING = {"enabled": False, "queue_size": 5000, "daily_cap": 1_000_000}


async def create_linked(
    api: httpx.AsyncClient, base_url: str, nc: NATS, spec: dict[str, Any], phone: str
) -> None:
    """Create the session described by ``spec`` already linked to sim ``phone``, then start
    it: it connects as soon as it is placed. The sim account is keyed by the internal id
    the create mints (issue 13), so the session is created stopped, linked, then started."""
    created = await api.post(f"{base_url}/v1/sessions", json={**spec, "start": False})
    assert created.status_code == 201, created.text
    await seed_account(nc, await session_key(nc, "default", spec["session_id"]), phone)
    started = await api.post(f"{base_url}/v1/sessions/{spec['session_id']}/start")
    assert started.status_code == 200, started.text


async def until(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout_s: float,
    what: str,
    interval_s: float = 0.05,
) -> float:
    """Poll ``predicate`` until it holds; returns the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(interval_s)


@dataclass
class Fleet:
    """One isolated zapfleet installation. ``name`` separates its logs."""

    name: str
    root: Path
    cp_env: dict[str, str] = field(default_factory=dict)
    agent_extra: dict[str, str] = field(default_factory=dict)
    nats: ChildProcess | None = None
    valkey: ChildProcess | None = None
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    control_plane: subprocess.Popen[bytes] | None = None
    http_port: int = 0
    nats_port: int = 0
    valkey_port: int = 0
    _agent_runs: dict[str, int] = field(default_factory=dict)
    _cp_runs: int = 0

    # -- addresses ---------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        return LOG_ROOT / self.name

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def valkey_url(self) -> str:
        return f"valkey://127.0.0.1:{self.valkey_port}/0"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    def admin(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url, headers=self.admin_headers, **{"timeout": 10, **kwargs}
        )

    # -- servers -----------------------------------------------------------------------

    def start_nats(self) -> None:
        self.nats_port = self.nats_port or free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.nats = start_nats(
            self.root / "nats", port=self.nats_port, log_path=self.log_dir / "nats.log"
        )

    def start_valkey(self) -> None:
        self.valkey_port = self.valkey_port or free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.valkey = start_valkey(
            self.root / "valkey", port=self.valkey_port, log_path=self.log_dir / "valkey.log"
        )

    def kill_nats(self) -> None:
        assert self.nats is not None
        self.nats.kill()

    def kill_valkey(self) -> None:
        assert self.valkey is not None
        self.valkey.kill()

    # -- processes ---------------------------------------------------------------------

    def start_agent(self, node_id: str, **extra: str) -> subprocess.Popen[bytes]:
        run = self._agent_runs.get(node_id, 0) + 1
        self._agent_runs[node_id] = run
        process = spawn(
            f"agent-{node_id}-{run}",
            ["agent"],
            agent_env(
                self.nats_url,
                node_id,
                self.root / f"agent-{node_id}",
                ZAPFLEET_SIM_READ_AFTER_S="0.2",
                **{**self.agent_extra, **extra},
            ),
            self.log_dir,
        )
        self.agents[node_id] = process
        return process

    def agent_log(self, node_id: str) -> Path:
        return self.log_dir / f"agent-{node_id}-{self._agent_runs[node_id]}.log"

    async def wait_agent_ready(self, node_id: str, timeout_s: float = 30) -> float:
        process = self.agents[node_id]
        path = self.agent_log(node_id)

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"agent {node_id} exited {process.returncode}; see {path}")
            return path.exists() and "agent ready" in path.read_text(errors="replace")

        return await until(ready, timeout_s, f"agent {node_id} ready")

    def kill_agent(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        process = self.agents[node_id]
        os.kill(process.pid, sig)
        process.wait(10)

    def start_control_plane(self, **extra: str) -> None:
        self.http_port = self.http_port or free_port()
        self._cp_runs += 1
        self.control_plane = spawn(
            f"control-plane-{self._cp_runs}",
            ["control-plane"],
            {
                "ZAPFLEET_NATS_URL": self.nats_url,
                "ZAPFLEET_VALKEY_URL": self.valkey_url,
                "ZAPFLEET_ADMIN_KEY": ADMIN_KEY,
                "ZAPFLEET_HTTP_PORT": str(self.http_port),
                "ZAPFLEET_DEFAULT_ENGINE": "sim",
                "ZAPFLEET_ALLOW_PRIVATE_TARGETS": "true",
                **UNLIMITED,
                **self.cp_env,
                **extra,
            },
            self.log_dir,
        )

    @property
    def control_plane_log(self) -> Path:
        return self.log_dir / f"control-plane-{self._cp_runs}.log"

    async def wait_ready(self, timeout_s: float = 60) -> None:
        assert self.control_plane is not None
        process = self.control_plane

        async def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"control plane exited; see {self.control_plane_log}")
            try:
                async with httpx.AsyncClient(timeout=1) as client:
                    response = await client.get(f"{self.base_url}/monitoring/ready")
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        await until(ready, timeout_s, "control plane ready", interval_s=0.1)

    async def start(self, node_ids: tuple[str, ...] = ("a1",)) -> None:
        self.start_nats()
        self.start_valkey()
        for node_id in node_ids:
            self.start_agent(node_id)
        self.start_control_plane()
        await self.wait_ready()
        for node_id in node_ids:
            await self.wait_agent_ready(node_id)

    def stop(self) -> None:
        if self.control_plane is not None:
            stop_process(self.control_plane)
        for process in self.agents.values():
            stop_process(process)
        for server in (self.valkey, self.nats):
            if server is not None:
                server.stop()

    # -- sessions ----------------------------------------------------------------------

    async def nats_client(self) -> NATS:
        return await nats.connect(self.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)

    async def connected_session(
        self, api: httpx.AsyncClient, nc: NATS, session_id: str, phone: str, **spec: Any
    ) -> dict[str, Any]:
        """Create a sim session, scan its QR as ``phone``, wait for CONNECTED."""
        created = await api.post("/v1/sessions", json={"session_id": session_id, **spec})
        assert created.status_code == 201, created.text
        qr: dict[str, Any] = {}

        async def has_qr() -> bool:
            response = await api.get(f"/v1/sessions/{session_id}/qr")
            if response.status_code == 200:
                qr.update(response.json())
                return True
            return False

        await until(has_qr, 20, f"QR of {session_id}")
        linked = await link(nc, qr["qr"], phone)
        assert linked.ok, linked.error
        return await self.wait_state(api, session_id, "CONNECTED")

    async def wait_state(
        self, api: httpx.AsyncClient, session_id: str, state: str, timeout_s: float = 20
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}

        async def reached() -> bool:
            try:
                response = await api.get(f"/v1/sessions/{session_id}")
            except httpx.HTTPError:
                return False
            if response.status_code != 200:
                return False
            body.clear()
            body.update(response.json())
            return body.get("state") == state

        await until(reached, timeout_s, f"{session_id} {state} (last {body})", interval_s=0.1)
        return body
