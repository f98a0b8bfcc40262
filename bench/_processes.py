"""Child processes of the benchmarks: start one with its output in a log file, stop it
(SIGTERM, then SIGKILL), and read the CPU time it and its own children (granian workers)
have used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``args`` run from the repository root with ``env`` over this environment."""
    return subprocess.Popen(
        args,
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def spawn_zapfleet(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``zapfleet <args>`` with this interpreter."""
    return spawn([sys.executable, "-m", "zapfleet", *args], env, log)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def cpu_seconds(process: subprocess.Popen[bytes]) -> float:
    """User + system CPU time of a running child and its own children."""
    parent = psutil.Process(process.pid)
    total = 0.0
    for each in [parent, *parent.children(recursive=True)]:
        times = each.cpu_times()
        total += times.user + times.system
    return total
