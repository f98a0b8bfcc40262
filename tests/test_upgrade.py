"""Rolling upgrade without re-pairing (issue 19): playbooks/upgrade.yml, run by
ansible-playbook against real processes on this machine.

The "hosts" are three sim agents (u1, u2, u3: node ids u1-0, ...) and two control planes
(cp1, cp2), reached with local connections; the inventory replaces pip and systemd with
tests/upgrade_host.py, which restarts a process the way systemd would (SIGTERM, wait,
start again). Cordon, drain and uncordon are the real ``zapfleet nodes`` commands against
the real API. Careful clients send through both control planes the whole time.

Asserted: the hosts went one at a time, agents before control planes; each agent was
drained (no session left on it) before its restart; every accepted message was sent
exactly once; no session was re-paired (no new QR, no new pairing, same phone); never
two live sockets for one account (the sim's violation counter).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import yaml

from node_agent.engines.sim import SIM_BUCKET
from node_agent.engines.sim_presence import violations
from tests.conftest import ADMIN_KEY, ARTIFACTS, agent_env
from tests.reliability.drills import Traffic, stream_events
from tests.reliability.harness import NO_PACING, create_linked, until
from tests.reliability.report import record_result
from tests.test_playbooks import PLAYBOOKS, ansible_env
from zapfleet.devservers import ChildProcess, free_port, start_nats, wait_for_port

AGENT_HOSTS = ("u1", "u2", "u3")
CONTROL_PLANES = ("cp1", "cp2")
SESSIONS = tuple(f"up{i}" for i in range(1, 7))
SENDERS = SESSIONS[:3]
LOG_DIR = ARTIFACTS / "logs" / "upgrade"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """The processes the test starts (and the helper restarts), stopped at the end by pid."""
    folder = tmp_path / "hosts"
    folder.mkdir()
    yield folder
    pids = [json.loads(p.read_text())["pid"] for p in folder.glob("*.json") if p.name != "api.json"]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def start(state: Path, name: str, args: list[str], env: dict[str, str], agent: bool) -> None:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{name}.log"
    full_env = {**os.environ, **env}
    command = [sys.executable, "-m", "zapfleet", *args]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, env=full_env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    spec = {"args": command, "env": full_env, "log": str(log), "pid": process.pid}
    (state / f"{name}.json").write_text(json.dumps({**spec, "agent": agent}))


def inventory(state: Path, nats_port: int, http_ports: dict[str, int]) -> Path:
    helper = f"{sys.executable} -m tests.upgrade_host"
    data: dict[str, Any] = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "upgrade_become": False,
                "control_plane_admin_key": ADMIN_KEY,
                "upgrade_cli": str(Path(sys.executable).parent / "zapfleet"),
                "upgrade_api_url": f"http://127.0.0.1:{http_ports['cp1']}",
                "upgrade_install_command": f"{helper} install {{host}} {state}",
                "upgrade_healthy_delay_s": 0.5,
            },
            "children": {
                "agents": {
                    "hosts": {host: {} for host in AGENT_HOSTS},
                    "vars": {"upgrade_restart_command": f"{helper} restart {{node_id}} {state}"},
                },
                "control_plane": {
                    "hosts": {
                        cp: {
                            "upgrade_ready_url": (
                                f"http://127.0.0.1:{http_ports[cp]}/monitoring/ready"
                            )
                        }
                        for cp in CONTROL_PLANES
                    },
                    "vars": {"upgrade_restart_command": f"{helper} restart {{host}} {state}"},
                },
            },
        }
    }
    path = state.parent / "hosts.yml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_rolling_upgrade_moves_sessions_without_loss_or_re_pairing(
    state: Path, tmp_path: Path, valkey_url: str
) -> None:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    nats_server: ChildProcess = start_nats(tmp_path / "nats", log_path=LOG_DIR / "nats.log")
    try:
        await run_upgrade(state, tmp_path, nats_server.port, valkey_url)
    finally:
        nats_server.stop()


async def run_upgrade(  # noqa: PLR0915 (one story)
    state: Path, tmp_path: Path, nats_port: int, valkey_url: str
) -> None:
    nats_url = f"nats://127.0.0.1:{nats_port}"
    http_ports = {cp: free_port() for cp in CONTROL_PLANES}
    apis = [f"http://127.0.0.1:{http_ports[cp]}" for cp in CONTROL_PLANES]
    (state / "api.json").write_text(json.dumps({"url": apis[0], "key": ADMIN_KEY}))
    for cp in CONTROL_PLANES:
        env = {
            "ZAPFLEET_NATS_URL": nats_url,
            "ZAPFLEET_VALKEY_URL": valkey_url.rsplit("/", 1)[0] + "/7",
            "ZAPFLEET_RATE_LIMITS_ENABLED": "false",
            "ZAPFLEET_ADMIN_KEY": ADMIN_KEY,
            "ZAPFLEET_HTTP_PORT": str(http_ports[cp]),
            "ZAPFLEET_DEFAULT_ENGINE": "sim",
            "ZAPFLEET_LEADER_LEASE_S": "2",
        }
        start(state, cp, ["control-plane"], env, agent=False)
    for host in AGENT_HOSTS:
        node_id = f"{host}-0"
        env = agent_env(
            nats_url,
            node_id,
            tmp_path / node_id,
            ZAPFLEET_HEARTBEAT_INTERVAL_S="1",
            ZAPFLEET_SIM_KEEPALIVE_S="1",
            ZAPFLEET_SIM_READ_AFTER_S="0.2",
        )
        start(state, node_id, ["agent"], env, agent=True)
    for cp in CONTROL_PLANES:
        wait_for_port(http_ports[cp], 60)

    nc = await nats.connect(nats_url)
    headers = {"X-API-Key": ADMIN_KEY}
    api = httpx.AsyncClient(headers=headers, timeout=15)
    try:

        async def nodes_up() -> bool:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                nodes = (await api.get(f"{apis[0]}/v1/nodes")).json()["nodes"]
                up = {n["node_id"] for n in nodes if n["state"] == "up"}
                return up >= {f"{h}-0" for h in AGENT_HOSTS}
            return False

        await until(nodes_up, 90, "three agents up", 0.25)
        phones = {s: f"1555092{n:04d}" for n, s in enumerate(SESSIONS)}
        for session_id, phone in phones.items():
            spec = {"session_id": session_id, "pacing": NO_PACING}
            await create_linked(api, apis[0], nc, spec, phone)

        async def sessions() -> dict[str, dict[str, Any]]:
            listing = (await api.get(f"{apis[0]}/v1/sessions", params={"limit": 100})).json()
            return {s["session_id"]: s for s in listing["sessions"]}

        async def all_connected() -> bool:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                now = await sessions()
                return all(now.get(s, {}).get("state") == "CONNECTED" for s in SESSIONS)
            return False

        await until(all_connected, 60, "every session CONNECTED", 0.25)
        before = await sessions()
        assert len({s["node_id"] for s in before.values()}) >= 2, before

        traffic = Traffic()
        accepted: dict[str, str] = {}
        stop = asyncio.Event()

        async def sender(index: int, session_id: str) -> None:
            recipient = phones[SESSIONS[(index + 3) % len(SESSIONS)]]
            n = 0
            while not stop.is_set():
                key = f"{session_id}-{n}"
                body = {"type": "text", "to": f"+{recipient}", "text": key}
                attempt = 0
                while True:
                    base = apis[(index + attempt) % 2]
                    call = await traffic.call(
                        api, "send", "POST", f"{base}/v1/sessions/{session_id}/messages",
                        json=body, headers={"Idempotency-Key": key},
                    )  # fmt: skip
                    if call.status == 202 and call.message_id:
                        accepted[key] = call.message_id
                        break
                    assert call.status in (0, 409, 429, 500, 502, 503, 504), call
                    attempt += 1
                    await asyncio.sleep(0.2)
                n += 1
                await asyncio.sleep(0.2)

        tasks = [asyncio.create_task(sender(i, s)) for i, s in enumerate(SENDERS)]
        await until(lambda: len(accepted) >= 10, 30, "sends accepted before the upgrade")
        upgrade_started = time.time()
        home = tmp_path / "ansible-home"
        env = ansible_env(home)
        env["ANSIBLE_STDOUT_CALLBACK"] = "default"
        env["PYTHONPATH"] = str(PLAYBOOKS.parent)
        hosts = inventory(state, nats_port, http_ports)
        started = time.monotonic()
        run = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(hosts), "upgrade.yml",
            cwd=PLAYBOOKS, env=env, stdout=asyncio.subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(run.communicate(), 300)
        took_s = time.monotonic() - started
        (LOG_DIR / "ansible.log").write_bytes(output)
        assert run.returncode == 0, output.decode()[-4000:]
        await asyncio.sleep(2.0)  # sends after the upgrade
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)

        steps = [line.split()[1:] for line in (state / "journal").read_text().splitlines()]
        # one host at a time, agents first, then the control planes
        order = [name for _, name, *_ in steps]
        assert order == [
            *(x for h in AGENT_HOSTS for x in (h, f"{h}-0")),
            *(x for cp in CONTROL_PLANES for x in (cp, cp)),
        ], steps
        drained = [s for s in steps if s[0] == "restart" and s[1].endswith("-0")]
        assert all(s[2] == "sessions=0" for s in drained), drained

        wanted = set(accepted.values())
        sent: Counter[str] = Counter()

        async def all_sent() -> bool:
            sent.clear()
            for session_id in SENDERS:
                subject = f"zf.events.default.{session_id}.message.sent"
                for event in await stream_events(nc, subject, idle_s=0.3):
                    sent[str(event.data.get("message_id"))] += 1
            return wanted <= set(sent)

        await until(all_sent, 60, "every accepted message sent", 1.0)
        twice = {m: c for m, c in sent.items() if c > 1}
        assert not twice, twice
        assert set(sent) == wanted  # nothing sent that was not accepted

        # no re-pairing: no QR, no pairing since the upgrade began; same phones
        pairing = [
            e
            for e in await stream_events(nc, "zf.events.default.*.session.>", idle_s=0.3)
            if e.type in ("session.qr", "session.paired") and e.ts >= upgrade_started
        ]
        assert not pairing, pairing
        moves = [
            e
            for e in await stream_events(nc, "zf.events.default.*.session.moved", idle_s=0.3)
            if e.ts >= upgrade_started
        ]
        after = await sessions()
        assert all(after[s]["state"] == "CONNECTED" for s in SESSIONS), after
        assert {s: after[s].get("phone") for s in SESSIONS} == {
            s: before[s].get("phone") for s in SESSIONS
        }
        assert len(moves) >= len(SESSIONS)  # every session moved at least once
        sim_violations = await violations(await nc.jetstream().key_value(SIM_BUCKET))
        assert sim_violations == 0
        record_result(
            "rolling_upgrade",
            {
                "hosts": f"{len(AGENT_HOSTS)} agents, then {len(CONTROL_PLANES)} control planes",
                "playbook_s": round(took_s, 1),
                "accepted": len(wanted),
                "lost": 0,
                "sent_twice": 0,
                "answers": traffic.outcomes("send"),
                "slowest_answer_s": round(max(c.took for c in traffic.calls), 2),
                "session_moves": len(moves),
                "re_paired": 0,
                "sim_violations": sim_violations,
            },
        )
    finally:
        await api.aclose()
        await nc.close()
