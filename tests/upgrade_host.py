"""The "hosts" of tests/test_upgrade.py: what playbooks/upgrade.yml runs instead of pip and
systemd when the hosts are processes on this machine.

``python -m tests.upgrade_host install <host> <state_dir>``: records the upgrade step.
``python -m tests.upgrade_host restart <name> <state_dir>``: stops the process ``name``
(SIGTERM, as systemd does, then waits for it to exit) and starts it again with the same
command, environment and log file, detached; records the step, and for an agent how many
sessions the control plane still placed on it (a drained node has none).

``<state_dir>/<name>.json`` holds what the test started: args, env, log path and pid;
``<state_dir>/journal`` gets one line per step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx


def journal(state: Path, line: str) -> None:
    with open(state / "journal", "a") as out:
        out.write(f"{time.time():.3f} {line}\n")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by the test) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def sessions_on(state: Path, node_id: str) -> int | None:
    api = json.loads((state / "api.json").read_text())
    nodes = httpx.get(
        f"{api['url']}/v1/nodes", headers={"X-API-Key": api["key"]}, timeout=10
    ).json()["nodes"]
    for node in nodes:
        if node["node_id"] == node_id:
            return int(node.get("slots_used", 0)) + int(node.get("sessions", 0))
    return None


def restart(name: str, state: Path) -> None:
    path = state / f"{name}.json"
    spec = json.loads(path.read_text())
    before = sessions_on(state, name) if spec.get("agent") else None
    pid = int(spec["pid"])
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    with open(spec["log"], "ab") as out:
        process = subprocess.Popen(
            spec["args"],
            env=spec["env"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    spec["pid"] = process.pid
    spec["restarts"] = int(spec.get("restarts", 0)) + 1
    path.write_text(json.dumps(spec))
    journal(state, f"restart {name} sessions={before}")


def main(argv: list[str]) -> None:
    command, name, state_dir = argv
    state = Path(state_dir)
    if command == "install":
        journal(state, f"install {name}")
    elif command == "restart":
        restart(name, state)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
