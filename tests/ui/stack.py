"""A stack of its own for the UI and CLI tests: nats-server, valkey-server, one sim agent
whose QR codes rotate every few seconds (so a test can watch the pairing page follow a
rotation) and one control plane, all real processes on free loopback ports.

It is separate from the shared ``stack`` fixture so that the fast-rotating agent never
takes part in the placement of other tests' sessions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

import pytest

from tests.conftest import ADMIN_KEY, ARTIFACTS, agent_env, spawn, stop_process, wait_until_ready
from zapfleet.devservers import ChildProcess, free_port, start_nats, start_valkey, wait_for_port

QR_FIRST_S = 4.0
QR_NEXT_S = 4.0


@dataclass
class UiStack:
    base_url: str
    admin_key: str
    nats_url: str
    node_id: str
    log_dir: Path
    processes: dict[str, Popen[bytes]] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}


def _wait_for_log(path: Path, needle: str, process: Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}; see {path}")
        if path.exists() and needle in path.read_text():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{needle!r} not in {path} after {timeout_s} s")


@pytest.fixture(scope="session")
def ui_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
    root = tmp_path_factory.mktemp("ui-stack")
    log_dir = ARTIFACTS / "logs" / "ui-stack"
    servers: list[ChildProcess] = []
    processes: dict[str, Popen[bytes]] = {}
    try:
        servers.append(start_nats(root / "nats", log_path=root / "nats.log"))
        servers.append(start_valkey(root / "valkey", log_path=root / "valkey.log"))
        nats_url = f"nats://127.0.0.1:{servers[0].port}"
        node_id = "ui-agent-1"
        processes["agent"] = spawn(
            "agent",
            ["agent"],
            agent_env(
                nats_url,
                node_id,
                root / "agent",
                ZAPFLEET_SIM_READ_AFTER_S="0.2",
                ZAPFLEET_SIM_QR_FIRST_S=str(QR_FIRST_S),
                ZAPFLEET_SIM_QR_NEXT_S=str(QR_NEXT_S),
            ),
            log_dir,
        )
        http_port = free_port()
        processes["control-plane"] = spawn(
            "control-plane",
            ["control-plane"],
            {
                "ZAPFLEET_NATS_URL": nats_url,
                "ZAPFLEET_VALKEY_URL": f"valkey://127.0.0.1:{servers[1].port}/0",
                "ZAPFLEET_ADMIN_KEY": ADMIN_KEY,
                "ZAPFLEET_HTTP_PORT": str(http_port),
                "ZAPFLEET_DEFAULT_ENGINE": "sim",
                "ZAPFLEET_ALLOW_PRIVATE_TARGETS": "true",
                # dead letters within a second or two (the console's redrive test)
                "ZAPFLEET_WEBHOOK_MAX_ATTEMPTS": "2",
                "ZAPFLEET_WEBHOOK_BACKOFF_BASE_S": "0.2",
            },
            log_dir,
        )
        base_url = f"http://127.0.0.1:{http_port}"
        wait_for_port(http_port, 60, None)
        wait_until_ready(f"{base_url}/monitoring/ready", processes["control-plane"])
        _wait_for_log(log_dir / "agent.log", "agent ready", processes["agent"])
        yield UiStack(
            base_url=base_url,
            admin_key=ADMIN_KEY,
            nats_url=nats_url,
            node_id=node_id,
            log_dir=log_dir,
            processes=processes,
        )
    finally:
        for name in ("control-plane", "agent"):
            if name in processes:
                stop_process(processes[name])
        for server in reversed(servers):
            server.stop()
