"""`zapfleet up`: the whole stack from one command, and nothing left behind on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from zapfleet.devservers import free_port


def test_up_serves_health_and_schema_then_stops_every_child_on_sigterm(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("http", "nats", "valkey", "metrics")}
    up = subprocess.Popen(
        [
            sys.executable, "-m", "zapfleet", "up", "--home", str(tmp_path / "home"),
            "--http-port", str(ports["http"]), "--nats-port", str(ports["nats"]),
            "--valkey-port", str(ports["valkey"]), "--agent-metrics-port", str(ports["metrics"]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{ports['http']}"
    try:
        banner = ""
        assert up.stdout is not None
        deadline = time.monotonic() + 90
        while "Press Ctrl-C" not in banner and time.monotonic() < deadline:
            line = up.stdout.readline()
            assert line, f"zapfleet up exited early: {banner}"
            banner += line
        assert f"{base}/schema" in banner and f"{base}/metrics" in banner
        assert httpx.get(f"{base}/monitoring/health").status_code == 200
        assert httpx.get(f"{base}/schema/openapi.json").json()["info"]["title"] == "zapfleet"
        children = psutil.Process(up.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "nats-server" in names and "valkey-server" in names
        assert "agent" in names and "control-plane" in names
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"left behind: {[p.pid for p in alive]}"
    assert len(gone) == len(children)
