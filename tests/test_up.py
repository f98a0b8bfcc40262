"""`zapfleet up`: the whole stack from one command, and nothing left behind on SIGTERM."""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import threading
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
        _one_development_ssrf_policy(base, tmp_path / "home", ports["nats"])
        # the Evolution API facade is on (docs/evolution.md): the host is its base URL
        assert "Evolution API" in banner
        admin_key = (tmp_path / "home" / "admin_key").read_text().strip()
        evolution = httpx.get(f"{base}/instance/fetchInstances", headers={"apikey": admin_key})
        assert evolution.status_code == 200 and isinstance(evolution.json(), list)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"left behind: {[p.pid for p in alive]}"
    assert len(gone) == len(children)


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


class _Picture(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *_: object) -> None:
        pass


def _one_development_ssrf_policy(base: str, home: Path, nats_port: int) -> None:
    """`zapfleet up` is a development stack: webhooks and media by URL may both reach this
    machine (one setting, the same policy), and neither may reach cloud metadata or
    0.0.0.0."""
    headers = {"X-API-Key": (home / "admin_key").read_text().strip()}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as api:
        for url in ("http://169.254.169.254/latest/meta-data/", "http://0.0.0.0:9/hook"):
            refused = api.put("/v1/webhooks/global", json={"urls": [url]})
            assert refused.status_code == 422, refused.text
            assert refused.json()["type"] == "urn:zapfleet:problem:unsafe_webhook_url"
        allowed = api.put("/v1/webhooks/global", json={"urls": ["http://127.0.0.1:9/hook"]})
        assert allowed.status_code == 200, allowed.text
        assert api.delete("/v1/webhooks/global").status_code == 204

        created = api.post("/v1/sessions", json={"session_id": "ssrf"})
        assert created.status_code == 201, created.text
        deadline = time.monotonic() + 30
        while api.get("/v1/sessions/ssrf/qr").status_code != 200:
            assert time.monotonic() < deadline, "no QR code"
            time.sleep(0.2)
        subprocess.run(
            [sys.executable, "-m", "zapfleet", "sim", "scan", "ssrf", "--phone", "15550003333",
             "--nats-url", f"nats://127.0.0.1:{nats_port}"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        while api.get("/v1/sessions/ssrf").json()["state"] != "CONNECTED":
            assert time.monotonic() < deadline, "the session did not connect"
            time.sleep(0.2)
        pictures = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Picture)
        threading.Thread(target=pictures.serve_forever, daemon=True).start()
        try:
            local = f"http://127.0.0.1:{pictures.server_address[1]}/pic.png"
            for url, status in (
                (local, 202),
                ("http://169.254.169.254/latest/meta-data/", 422),
                ("http://0.0.0.0:9/pic.png", 422),
            ):
                sent = api.post(
                    "/v1/sessions/ssrf/messages",
                    json={"type": "image", "to": "+15550004444", "media": {"url": url}},
                )
                assert sent.status_code == status, (url, sent.text)
        finally:
            pictures.shutdown()
