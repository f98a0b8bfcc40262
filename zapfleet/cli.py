"""The ``zapfleet`` command.

zapfleet up               the whole stack on one machine (NATS, Valkey, control plane, agent)
zapfleet control-plane    the HTTP API on granian (ZAPFLEET_HTTP_WORKERS workers)
zapfleet agent            one node agent (one shard of sessions)
zapfleet webhooks         a standalone webhook dispatcher
zapfleet sim scan ID      act as a phone: scan the QR code of a sim session
zapfleet sessions ...     ls | create | qr (QR in the terminal): HTTP API client
zapfleet nodes ...        ls | cordon | uncordon | drain | rebalance (admin key)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from zapfleet import __version__
from zapfleet._env import SettingsError, load_settings
from zapfleet._logging import configure_logging, dictconfig


def _die(message: str) -> None:
    print(f"zapfleet: {message}", file=sys.stderr)
    raise SystemExit(2)


# -- processes ---------------------------------------------------------------------------


def cmd_agent(_: argparse.Namespace) -> None:
    from node_agent.settings import AgentSettings

    try:
        settings = load_settings(AgentSettings)
    except SettingsError as exc:
        _die(str(exc))
    if settings.engine == "neonize":
        # import before configuring logging: neonize calls logging.basicConfig at import
        import neonize  # noqa: F401
    configure_logging(settings.log_level, settings.log_format, process="agent")
    import uvloop

    from node_agent.agent import run_agent

    uvloop.run(run_agent(settings))
    if settings.engine == "neonize":
        # Sessions are stopped and events flushed by now. Threads the Go glue pinned for
        # good (a dial that never returns, an ended pairing) would keep the interpreter
        # from exiting while it joins its executor threads: leave without joining them.
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def cmd_control_plane(_: argparse.Namespace) -> None:
    from control_plane.settings import ControlPlaneSettings

    try:
        settings = load_settings(ControlPlaneSettings)
    except SettingsError as exc:
        _die(str(exc))
    configure_logging(settings.log_level, settings.log_format, process="control-plane")
    from control_plane.metrics_dir import multiprocess_dir

    # set before granian forks its workers (and before prometheus_client is imported):
    # /metrics then adds up the samples of every worker
    with multiprocess_dir():
        _serve_control_plane(settings)


def _serve_control_plane(settings: Any) -> None:
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    Server(
        "control_plane.asgi:app",
        address=settings.http_host,
        port=settings.http_port,
        interface=Interfaces.ASGI,
        workers=settings.http_workers,
        loop=Loops.uvloop,
        factory=True,
        log_access=False,
        log_dictconfig=dictconfig(settings.log_level, settings.log_format),
        backlog=2048,
        respawn_failed_workers=True,
    ).serve()


def cmd_webhooks(_: argparse.Namespace) -> None:
    from control_plane.settings import ControlPlaneSettings
    from control_plane.webhooks.run import run_dispatcher

    try:
        settings = load_settings(ControlPlaneSettings)
    except SettingsError as exc:
        _die(str(exc))
    configure_logging(settings.log_level, settings.log_format, process="webhooks")
    import uvloop

    uvloop.run(run_dispatcher(settings))


# -- sim ---------------------------------------------------------------------------------


async def session_key(nc: Any, tenant: str, session_id: str) -> str:
    """The internal key of the tenant's session ``session_id`` (what agents and the sim
    network know it by), from KV ``zf_session_names``; the name itself for a session
    older than internal ids."""
    from contract.protocol import SESSION_NAMES_BUCKET, name_key, name_target

    with contextlib.suppress(Exception):
        names = await nc.jetstream().key_value(SESSION_NAMES_BUCKET)
        entry = await names.get(name_key(tenant, session_id))
        if entry.value:
            return name_target(entry.value)[0]
    return session_id


NATS_HELP = "comma-separated NATS URLs (default: $ZAPFLEET_NATS_URL)"


def _nats_urls(raw: str) -> list[str]:
    """``--nats-url``: a comma-separated list of NATS URLs, checked like the processes'."""
    from zapfleet._env import SettingsError
    from zapfleet.natsjs import parse_nats_urls

    try:
        return parse_nats_urls(raw, "--nats-url")
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def sim_scan(
    nats_url: str | list[str], session_id: str, phone: str, tenant: str = "default"
) -> str:
    """Scan the current QR code of a sim session as ``phone``; returns a result line."""
    import msgspec
    import nats

    from contract.protocol import (
        SESSIONS_BUCKET,
        Err,
        Ok,
        Op,
        QrCode,
        SessionRecord,
        SessionRef,
        agent_subject,
        encode,
    )
    from node_agent.engines.sim import link

    nc = await nats.connect(servers=nats_url)
    try:
        kv = await nc.jetstream().key_value(SESSIONS_BUCKET)
        key = await session_key(nc, tenant, session_id)
        entry = await kv.get(key)
        record = msgspec.json.decode(entry.value or b"", type=SessionRecord)
        if record.assignment is None:
            return f"session {session_id} is not placed on any node"
        reply = await nc.request(
            agent_subject(record.assignment.node_id, Op.SESSION_QR),
            encode(SessionRef(session_id=key)),
            timeout=5,
        )
        decoded = msgspec.json.decode(reply.data, type=Ok[QrCode] | Err)
        if isinstance(decoded, Err):
            return f"cannot scan: {decoded.message}"
        result = await link(nc, decoded.value.code, phone)
        return "scanned: session linked as " + phone if result.ok else f"refused: {result.error}"
    finally:
        await nc.close()


def cmd_sim_scan(args: argparse.Namespace) -> None:
    line = asyncio.run(sim_scan(args.nats_url, args.session_id, args.phone, args.tenant))
    print(line)
    if not line.startswith("scanned"):
        raise SystemExit(1)


async def sim_link(
    nats_url: str | list[str], session_id: str, code: str, phone: str, tenant: str = "default"
) -> str:
    """Type a phone pairing code (from ``session_pair_code``) on the sim phone."""
    import nats

    from node_agent.engines.sim import link

    nc = await nats.connect(servers=nats_url)
    try:
        key = await session_key(nc, tenant, session_id)
        result = await link(nc, code, phone, session_id=key)
    finally:
        await nc.close()
    return "linked: session paired with " + phone if result.ok else f"refused: {result.error}"


def cmd_sim_link(args: argparse.Namespace) -> None:
    line = asyncio.run(sim_link(args.nats_url, args.session_id, args.code, args.phone, args.tenant))
    print(line)
    if not line.startswith("linked"):
        raise SystemExit(1)


async def sim_fault(
    nats_url: str | list[str], session_id: str, faults: object, tenant: str = "default"
) -> None:
    import nats

    from node_agent.engines.sim import Faults, inject_faults

    assert isinstance(faults, Faults)
    nc = await nats.connect(servers=nats_url)
    try:
        await inject_faults(nc, await session_key(nc, tenant, session_id), faults)
    finally:
        await nc.close()


def cmd_sim_fault(args: argparse.Namespace) -> None:
    from node_agent.engines.sim import Faults

    faults = Faults(
        latency_ms=args.latency_ms,
        send_failure_rate=args.send_failure_rate,
        disconnect=args.disconnect,
        zombie=args.zombie,
        fail_connects=args.fail_connects,
    )
    try:
        asyncio.run(sim_fault(args.nats_url, args.session_id, faults, args.tenant))
    except Exception as exc:
        _die(f"cannot reach session {args.session_id}: {exc!r}")
    print(f"faults set on {args.session_id}: {faults}")


# -- up ----------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _check_children(children: list[Any]) -> None:
    for child in children:
        if child.process.poll() is not None:
            code = child.process.returncode
            _die(f"{child.name} exited with code {code}; see {child.log_path}")


def _wait_http_ok(url: str, timeout_s: float, children: list[Any]) -> bool:
    """Poll the readiness URL, printing each change of its checks, until it answers 200."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        _check_children(children)
        status = "API not answering yet"
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = httpx.get(url, timeout=1)
            checks = response.json().get("checks") or {}
            status = ", ".join(f"{k} {v}" for k, v in sorted(checks.items())) or "checking"
            if response.status_code == 200:
                print(f"      ready: {status}", flush=True)
                return True
        if status != last:
            print(f"      {status}", flush=True)
            last = status
        time.sleep(0.2)
    return False


def _wait_log_line(
    path: Path, needle: str, timeout_s: float, children: list[Any], offset: int = 0
) -> bool:
    """Wait for ``needle`` in the log written after ``offset`` (logs are appended to)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check_children(children)
        with contextlib.suppress(OSError), path.open("rb") as log:
            log.seek(offset)
            if needle.encode() in log.read():
                return True
        time.sleep(0.2)
    return False


def _admin_key(home: Path) -> tuple[str, str]:
    """The admin key and where it comes from: $ZAPFLEET_ADMIN_KEY or a generated file."""
    from_env = os.environ.get("ZAPFLEET_ADMIN_KEY")
    if from_env:
        return from_env, "$ZAPFLEET_ADMIN_KEY"
    key_file = home / "admin_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(32))
        key_file.chmod(0o600)
    return key_file.read_text().strip(), str(key_file)


def _stack_env(args: argparse.Namespace, home: Path, admin_key: str) -> dict[str, str]:
    return {
        **os.environ,
        "ZAPFLEET_NATS_URL": f"nats://127.0.0.1:{args.nats_port}",
        "ZAPFLEET_NATS_REPLICAS": "1",  # one local nats-server
        "ZAPFLEET_VALKEY_URL": f"valkey://127.0.0.1:{args.valkey_port}/0",
        "ZAPFLEET_ADMIN_KEY": admin_key,
        "ZAPFLEET_HTTP_HOST": args.host,
        "ZAPFLEET_HTTP_PORT": str(args.http_port),
        "ZAPFLEET_DEFAULT_ENGINE": args.engine,
        "ZAPFLEET_ENGINE": args.engine,
        "ZAPFLEET_NODE_ID": os.environ.get("ZAPFLEET_NODE_ID", "local-1"),
        "ZAPFLEET_DATA_DIR": str(home / "agent"),
        "ZAPFLEET_METRICS_PORT": str(args.agent_metrics_port),
        # development: webhooks and media may reach this machine and private networks
        # (never link-local or unspecified addresses: zapfleet/ssrf.py)
        "ZAPFLEET_ALLOW_PRIVATE_TARGETS": os.environ.get("ZAPFLEET_ALLOW_PRIVATE_TARGETS", "true"),
        # the Evolution API v2 facade (docs/evolution.md): this host is an Evolution base URL
        "ZAPFLEET_EVOLUTION": os.environ.get("ZAPFLEET_EVOLUTION", "true"),
    }


def _supervise(children: list[Any]) -> None:
    """Stay in the foreground; if any child dies, stop the rest and fail."""
    while True:
        for child in children:
            if child.process.poll() is not None:
                code = child.process.returncode
                print(f"zapfleet: {child.name} exited ({code}); stopping", file=sys.stderr)
                stop_all_quietly(children)
                raise SystemExit(1)
        time.sleep(0.5)


def cmd_up(args: argparse.Namespace) -> None:
    from zapfleet.devservers import ChildProcess, ServerError, start_nats, start_valkey

    home = Path(args.home).resolve()
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name, port in (
        ("NATS", args.nats_port),
        ("Valkey", args.valkey_port),
        ("HTTP", args.http_port),
    ):
        if not _port_free(port):
            _die(f"{name} port {port} is in use; choose another with --{name.lower()}-port")
    admin_key, key_source = _admin_key(home)
    children: list[ChildProcess] = []

    def stop_all(*_: object) -> None:
        # reverse start order: API first, then the agent (flushes its events), then servers
        stop_all_quietly(children)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    steps = iter(range(1, 7))

    def progress(message: str) -> None:
        print(f"[{next(steps)}/6] {message}", flush=True)

    try:
        progress(f"nats-server (JetStream) on 127.0.0.1:{args.nats_port}")
        children.append(start_nats(home / "nats", args.nats_port, log_path=logs / "nats.log"))
        progress(f"valkey-server on 127.0.0.1:{args.valkey_port}")
        children.append(
            start_valkey(home / "valkey", args.valkey_port, log_path=logs / "valkey.log")
        )
    except ServerError as exc:
        stop_all_quietly(children)
        _die(str(exc))
    env = _stack_env(args, home, admin_key)
    exe = [sys.executable, "-m", "zapfleet"]
    progress(f"node agent {env['ZAPFLEET_NODE_ID']} (engine {args.engine})")
    agent_log = logs / "agent.log"
    agent_log_offset = agent_log.stat().st_size if agent_log.exists() else 0
    children.append(_start_child("agent", [*exe, "agent"], env, logs / "agent.log"))
    progress(f"control plane on http://{args.host}:{args.http_port}")
    children.append(
        _start_child("control-plane", [*exe, "control-plane"], env, logs / "control-plane.log")
    )
    progress("waiting for readiness (NATS + Valkey reachable from the API)")
    if not _wait_http_ok(f"http://127.0.0.1:{args.http_port}/monitoring/ready", 90, children):
        stop_all_quietly(children)
        _die(f"the control plane did not become ready; see {logs}")
    progress(f"waiting for the first heartbeat of agent {env['ZAPFLEET_NODE_ID']}")
    if not _wait_log_line(agent_log, "agent ready", 60, children, agent_log_offset):
        stop_all_quietly(children)
        _die(f"the agent did not become ready; see {agent_log}")
    shown = f"http://{args.host}:{args.http_port}"
    agent_metrics = f"http://127.0.0.1:{args.agent_metrics_port}/metrics"
    print(
        f"\nzapfleet {__version__} is up\n"
        f"  web UI         {shown}/ui/  (sign in with the admin key)\n"
        f"  API            {shown}/v1\n"
        f"  OpenAPI docs   {shown}/schema\n"
        f"  Evolution API  {shown}{os.environ.get('ZAPFLEET_EVOLUTION_PREFIX', '')}/  "
        "(apikey: the admin key; docs/evolution.md)\n"
        f"  metrics        {shown}/metrics  (agent: {agent_metrics})\n"
        f"  NATS           {env['ZAPFLEET_NATS_URL']}\n"
        f"  admin key      {key_source}\n"
        f"  logs           {logs}\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )
    _supervise(children)


def stop_all_quietly(children: list[Any]) -> None:
    for child in reversed(children):
        with contextlib.suppress(Exception):
            child.stop()


def _start_child(name: str, args: list[str], env: dict[str, str], log_path: Path) -> Any:
    from zapfleet.devservers import ChildProcess, die_with_parent

    out = open(log_path, "ab")  # noqa: SIM115
    process = subprocess.Popen(
        args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent, start_new_session=True,  # noqa: PLW1509
    )  # fmt: skip
    return ChildProcess(name, process, 0, log_path)


async def _backup_or_restore(args: argparse.Namespace) -> str:
    import nats

    from zapfleet.backup import backup, restore

    nc = await nats.connect(servers=args.nats_url)
    try:
        path = Path(args.path)
        if args.command == "backup":
            path = args.archive
            summary = await backup(nc, path, events=args.events)
            verb = "backed up"
        else:
            summary = await restore(nc, path, replicas=args.replicas)
            verb = "restored"
    finally:
        await nc.close()
    lines = [f"{verb} {summary.messages} messages of {len(summary.streams)} streams ({path})"]
    lines += [f"  {name}: {count}" for name, count in sorted(summary.streams.items())]
    return "\n".join(lines)


def cmd_backup_or_restore(args: argparse.Namespace) -> None:
    from zapfleet.backup import BackupError, archive_path, prune

    try:
        if args.command == "backup":
            if args.keep is not None and not Path(args.path).is_dir():
                raise BackupError("--keep applies to a directory of scheduled backups")
            args.archive = archive_path(Path(args.path))
        print(asyncio.run(_backup_or_restore(args)))
        if args.command == "backup" and args.keep is not None:
            for old in prune(Path(args.path), args.keep):
                print(f"  pruned {old.name}")
    except BackupError as exc:
        print(f"zapfleet {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


# -- parser ------------------------------------------------------------------------------


def _add_backup_commands(sub: Any, nats_default: str) -> None:
    saved = sub.add_parser(
        "backup", help="write the fleet's durable state (JetStream) to one archive"
    )
    saved.add_argument(
        "path", help="the archive to write (.tar.gz), or a directory: a timestamped one in it"
    )
    saved.add_argument(
        "--keep", type=int, default=None, help="with a directory: keep only the newest N"
    )
    saved.add_argument("--events", action="store_true", help="include the ZF_EVENTS stream")
    saved.add_argument("--nats-url", default=nats_default, type=_nats_urls, help=NATS_HELP)
    saved.set_defaults(func=cmd_backup_or_restore)
    loaded = sub.add_parser("restore", help="load a backup into an empty NATS")
    loaded.add_argument("path", help="an archive written by zapfleet backup")
    loaded.add_argument(
        "--replicas", type=int, default=None, help="replicas of every stream (default: as saved)"
    )
    loaded.add_argument("--nats-url", default=nats_default, type=_nats_urls, help=NATS_HELP)
    loaded.set_defaults(func=cmd_backup_or_restore)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zapfleet", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole stack on this machine")
    up.add_argument("--home", default=os.environ.get("ZAPFLEET_HOME", ".zapfleet"), help="data dir")
    up.add_argument("--host", default="127.0.0.1", help="HTTP listen address")
    up.add_argument("--http-port", type=int, default=8080)
    up.add_argument("--nats-port", type=int, default=4222)
    up.add_argument("--valkey-port", type=int, default=6379)
    up.add_argument("--agent-metrics-port", type=int, default=9470)
    up.add_argument(
        "--engine",
        choices=("sim", "neonize"),
        default=os.environ.get("ZAPFLEET_UP_ENGINE", "sim"),
        help="engine of the local agent: sim (demo network, default) or neonize (real WhatsApp)",
    )
    up.set_defaults(func=cmd_up)

    sub.add_parser("control-plane", help="run the HTTP API").set_defaults(func=cmd_control_plane)
    sub.add_parser("agent", help="run one node agent").set_defaults(func=cmd_agent)
    sub.add_parser("webhooks", help="run a webhook dispatcher").set_defaults(func=cmd_webhooks)

    sim = sub.add_parser("sim", help="the simulated WhatsApp network").add_subparsers(
        dest="sim_command", required=True
    )
    scan = sim.add_parser("scan", help="scan a sim session's QR code as a phone")
    scan.add_argument("session_id")
    scan.add_argument("--phone", default="15550000001", help="the phone number that scans")
    scan.add_argument("--tenant", default="default", help="the session's tenant")
    nats_default = os.environ.get("ZAPFLEET_NATS_URL", "nats://127.0.0.1:4222")
    nats_help = "comma-separated NATS URLs (default: $ZAPFLEET_NATS_URL)"
    scan.add_argument("--nats-url", default=nats_default, type=_nats_urls, help=nats_help)
    scan.set_defaults(func=cmd_sim_scan)
    link_cmd = sim.add_parser("link", help="enter a phone pairing code on the sim phone")
    link_cmd.add_argument("session_id")
    link_cmd.add_argument("code", help="the code from session_pair_code (ABCD-EFGH)")
    link_cmd.add_argument("--phone", required=True, help="the number the code was issued for")
    link_cmd.add_argument("--nats-url", default=nats_default, type=_nats_urls, help=nats_help)
    link_cmd.add_argument("--tenant", default="default", help="the session's tenant")
    link_cmd.set_defaults(func=cmd_sim_link)
    fault = sim.add_parser("fault", help="inject faults into a sim session")
    fault.add_argument("session_id")
    fault.add_argument("--latency-ms", type=float, default=0.0)
    fault.add_argument("--send-failure-rate", type=float, default=0.0)
    fault.add_argument("--disconnect", action="store_true", help="drop the socket (reported)")
    fault.add_argument("--zombie", action="store_true", help="drop it silently")
    fault.add_argument("--fail-connects", type=int, default=0, help="refuse the next N connects")
    fault.add_argument("--nats-url", default=nats_default, type=_nats_urls, help=nats_help)
    fault.add_argument("--tenant", default="default", help="the session's tenant")
    fault.set_defaults(func=cmd_sim_fault)

    _add_backup_commands(sub, nats_default)

    from zapfleet.apiclient import add_node_commands, add_session_commands

    add_session_commands(sub)
    add_node_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
