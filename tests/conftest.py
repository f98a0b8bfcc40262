"""Fixtures: real nats-server and valkey-server on free loopback ports, a node agent and a
control plane as real processes, and a real HTTP webhook receiver. No mocks."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS

from zapfleet.devservers import ChildProcess, free_port, start_nats, start_valkey, wait_for_port

ADMIN_KEY = "test-admin-key-0123456789abcdef"
LIMIT_CLASSES = ("MESSAGES", "SESSIONS", "QUERIES", "GLOBAL")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildProcess]:
    root = tmp_path_factory.mktemp("nats")
    server = start_nats(root / "data", log_path=root / "nats.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: ChildProcess) -> str:
    return f"nats://127.0.0.1:{nats_server.port}"


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildProcess]:
    root = tmp_path_factory.mktemp("valkey")
    server = start_valkey(root / "data", log_path=root / "valkey.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def valkey_url(valkey_server: ChildProcess) -> str:
    return f"valkey://127.0.0.1:{valkey_server.port}/0"


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


def spawn(
    name: str, args: list[str], env: dict[str, str], log_dir: Path
) -> subprocess.Popen[bytes]:
    log_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "zapfleet", *args],
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def agent_env(nats_url: str, node_id: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "ZAPFLEET_NATS_URL": nats_url,
        "ZAPFLEET_NODE_ID": node_id,
        "ZAPFLEET_ENGINE": "sim",
        "ZAPFLEET_DATA_DIR": str(data_dir),
        "ZAPFLEET_METRICS_PORT": "0",
        "ZAPFLEET_LOG_LEVEL": "INFO",
        **extra,
    }


def wait_until_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} was ready")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


@dataclass
class Stack:
    base_url: str
    admin_key: str
    nats_url: str
    valkey_url: str
    node_id: str
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}


@pytest.fixture(scope="session")
def stack(
    nats_url: str, valkey_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One sim agent and one control plane (granian, 1 worker), as real processes."""
    root = tmp_path_factory.mktemp("stack")
    log_dir = ARTIFACTS / "logs"
    http_port = free_port()
    node_id = "test-agent-1"
    agent = spawn(
        "agent",
        ["agent"],
        agent_env(nats_url, node_id, root / "agent", ZAPFLEET_SIM_READ_AFTER_S="0.2"),
        log_dir,
    )
    control_plane = spawn(
        "control-plane",
        ["control-plane"],
        {
            "ZAPFLEET_NATS_URL": nats_url,
            "ZAPFLEET_VALKEY_URL": valkey_url,
            "ZAPFLEET_ADMIN_KEY": ADMIN_KEY,
            "ZAPFLEET_HTTP_PORT": str(http_port),
            "ZAPFLEET_DEFAULT_ENGINE": "sim",
            "ZAPFLEET_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
            "ZAPFLEET_EVOLUTION": "1",  # the Evolution facade, as `zapfleet up` serves it
            # the whole suite shares this API: limits high enough never to interfere
            # (tests/test_api_limits.py runs its own control plane with tight limits)
            **{f"ZAPFLEET_RATE_{c}": "1000000/60" for c in LIMIT_CLASSES},
        },
        log_dir,
    )
    base_url = f"http://127.0.0.1:{http_port}"
    try:
        wait_for_port(http_port, 60, None)
        wait_until_ready(f"{base_url}/monitoring/ready", control_plane)
        wait_for_node(base_url, node_id, agent)
    except Exception:
        stop_process(control_plane)
        stop_process(agent)
        raise
    yield Stack(
        base_url=base_url,
        admin_key=ADMIN_KEY,
        nats_url=nats_url,
        valkey_url=valkey_url,
        node_id=node_id,
        log_dir=log_dir,
        processes={"agent": agent, "control-plane": control_plane},
    )
    stop_process(control_plane)
    stop_process(agent)


def wait_for_node(base_url: str, node_id: str, agent: subprocess.Popen[bytes]) -> None:
    """The agent logs "agent ready" after its first heartbeat is in KV ``zf_nodes``."""
    deadline = time.monotonic() + 30
    log_path = ARTIFACTS / "logs" / "agent.log"
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise RuntimeError(f"agent exited with {agent.returncode}; see {log_path}")
        if log_path.exists() and "agent ready" in log_path.read_text():
            return
        time.sleep(0.1)
    raise RuntimeError(f"agent {node_id} not ready; see {log_path}")


class WebhookReceiver:
    """A real HTTP server (HTTP/1.1 keep-alive) that records every JSON body POSTed to it.

    Knobs: ``status`` (answer of every call), ``fail_next`` (the next N calls get 503),
    ``fail_ratio`` (that share of calls, at random, get 503), ``delay_s`` (answer that
    late), :meth:`go_down` / :meth:`come_up` (refuse connections, drop open ones).
    ``max_active`` is the most calls it ever had in progress at once; ``call_times`` the
    ``time.monotonic()`` of every call, failed ones included."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.events: list[dict[str, Any]] = []
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.paths: list[str] = []  # the path of each recorded event (same order)
        self.arrivals: list[float] = []  # time.time() of each recorded event
        self.calls = 0  # every request, failed ones included
        self.call_times: list[float] = []
        self.fail_next = 0
        self.fail_ratio = 0.0
        self.status = 200
        self.delay_s = 0.0
        self.down = False
        self.active = 0
        self.max_active = 0
        self._random = random.Random(5)
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if receiver.down:
                    self.close_connection = True
                    return
                with receiver._cond:
                    receiver.active += 1
                    receiver.max_active = max(receiver.max_active, receiver.active)
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                with receiver._cond:
                    receiver.active -= 1
                    receiver.calls += 1
                    receiver.call_times.append(time.monotonic())
                    status = receiver.status
                    if receiver.fail_next > 0:
                        receiver.fail_next -= 1
                        status = 503
                    elif receiver.fail_ratio and receiver._random.random() < receiver.fail_ratio:
                        status = 503
                    if 200 <= status < 300:
                        receiver.requests.append((dict(self.headers.items()), body))
                        receiver.paths.append(self.path)
                        receiver.events.append(json.loads(body))
                        receiver.arrivals.append(time.time())
                        receiver._cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._handler = Handler
        self.server = ThreadingHTTPServer((host, port or free_port()), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://{host}:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def ids(self) -> set[str]:
        with self._cond:
            return {e["id"] for e in self.events}

    def wait_for_ids(self, ids: set[str], timeout_s: float = 20) -> None:
        """Wait until every id in ``ids`` has been received at least once."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                missing = ids - {e["id"] for e in self.events}
                if not missing:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{len(missing)} of {len(ids)} events not delivered within {timeout_s} s"
                    )
                self._cond.wait(min(remaining, 0.5))

    def go_down(self) -> None:
        """Refuse new connections and drop requests on open ones."""
        self.down = True
        self.server.shutdown()
        self.server.server_close()

    def come_up(self) -> None:
        self.server = ThreadingHTTPServer((self.host, self.port), self._handler)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        self.down = False

    def wait_for(self, predicate: Any, timeout_s: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    types = [(e.get("type"), e.get("session_id")) for e in self.events]
                    raise AssertionError(f"no matching webhook within {timeout_s} s; got {types}")
                self._cond.wait(remaining)

    def close(self) -> None:
        if not self.down:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()
