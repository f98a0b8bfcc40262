"""`zapfleet sessions ...` and `zapfleet nodes ...`: the HTTP API from a terminal, as real
processes against a real stack (tests/ui/stack.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import segno

from tests.ui.stack import UiStack


def zapfleet(
    stack: UiStack, *args: str, key: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ZAPFLEET_API_URL": stack.base_url,
        "ZAPFLEET_NATS_URL": stack.nats_url,
    }
    if key is not None:
        env["ZAPFLEET_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "zapfleet", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def qr_blocks(output: str) -> list[str]:
    """The lines of the first QR code drawn with half blocks."""
    lines = [line for line in output.splitlines() if line and set(line) <= set("█▀▄ ")]
    return lines


def test_create_draw_the_qr_and_follow_it_until_the_phone_scans(ui_stack: UiStack) -> None:
    created = zapfleet(
        ui_stack, "sessions", "create", "cli-1", "--engine", "sim", key=ui_stack.admin_key
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith(f"created cli-1 on {ui_stack.node_id} (engine sim")

    # --watch draws the code, redraws on rotation and exits 0 once a phone has scanned
    watch = subprocess.Popen(
        [sys.executable, "-m", "zapfleet", "sessions", "qr", "cli-1", "--watch", "--timeout", "60"],
        env={
            "PATH": os.environ["PATH"],
            "ZAPFLEET_API_URL": ui_stack.base_url,
            "ZAPFLEET_API_KEY": ui_stack.admin_key,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        seen = ""
        while "scan with WhatsApp" not in seen:
            line = watch.stdout.readline()
            assert line, (
                f"qr --watch exited early: {seen} {watch.stderr.read() if watch.stderr else ''}"
            )
            seen += line
        scan = zapfleet(ui_stack, "sim", "scan", "cli-1", "--phone", "15550180001")
        assert scan.returncode == 0, scan.stdout + scan.stderr
        out, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    assert out.rstrip().endswith("connected as +15550180001")

    # what was drawn is a QR code of the session's pairing code: square, and the same
    # size as segno's rendering of a sim code for this session (it names the session by
    # its internal key: "u" and 32 hex digits)
    drawn = qr_blocks(seen)
    assert drawn, seen
    widths = {len(line) for line in drawn}
    assert len(widths) == 1
    reference = segno.make("SIM1,u" + "0" * 32 + "," + "x" * 32, error="m")
    size = reference.symbol_size(border=2)[0]
    assert widths == {size}
    assert len(drawn) == (size + 1) // 2


def test_qr_of_a_connected_session_says_so(ui_stack: UiStack) -> None:
    assert zapfleet(ui_stack, "sessions", "create", "cli-2", key=ui_stack.admin_key).returncode == 0
    deadline = time.monotonic() + 15
    while True:
        scan = zapfleet(ui_stack, "sim", "scan", "cli-2", "--phone", "15550180002")
        if scan.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert scan.returncode == 0, scan.stdout
    deadline = time.monotonic() + 15
    while True:
        result = zapfleet(ui_stack, "sessions", "qr", "cli-2", key=ui_stack.admin_key)
        if "already connected" in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert result.returncode == 1
    assert result.stderr.strip() == "zapfleet: session cli-2 is already connected"


def test_a_wrong_key_or_no_key_is_one_clear_line(ui_stack: UiStack, tmp_path: Path) -> None:
    wrong = zapfleet(ui_stack, "sessions", "create", "x1", key="wrong-key-wrong-key")
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("zapfleet: ") and "not valid" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    missing = zapfleet(ui_stack, "sessions", "create", "x1", cwd=tmp_path)
    assert missing.returncode == 2
    assert "ZAPFLEET_API_KEY" in missing.stderr


def test_the_key_file_of_zapfleet_up_is_used(ui_stack: UiStack, tmp_path: Path) -> None:
    home = tmp_path / ".zapfleet"
    home.mkdir()
    (home / "admin_key").write_text(ui_stack.admin_key + "\n")
    result = zapfleet(ui_stack, "sessions", "create", "cli-4", "--engine", "sim", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "created cli-4" in result.stdout


def test_sessions_ls_shows_state_phone_and_node(ui_stack: UiStack) -> None:
    assert zapfleet(ui_stack, "sessions", "create", "cli-3", key=ui_stack.admin_key).returncode == 0
    listed = zapfleet(ui_stack, "sessions", "ls", key=ui_stack.admin_key)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["SESSION", "STATE", "PHONE", "ENGINE", "NODE", "QUEUE", "SINCE"]
    row = next(r.split() for r in rows if r.startswith("cli-3 "))
    assert row[2:5] == ["-", "sim", ui_stack.node_id]
    assert row[1] in ("STARTING", "PAIRING")


def test_nodes_ls_shows_capacity_and_sessions(ui_stack: UiStack) -> None:
    listed = zapfleet(ui_stack, "nodes", "ls", key=ui_stack.admin_key)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:4] == ["NODE", "STATUS", "ENGINE", "SESSIONS"]
    row = next(r.split() for r in rows if r.startswith(ui_stack.node_id))
    assert row[1:3] == ["up", "sim"]
    used, capacity = (int(x) for x in row[3].split("/"))
    assert capacity > 0 and 0 <= used <= capacity
