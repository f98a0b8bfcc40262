"""``zapfleet sessions`` and ``zapfleet nodes``: thin clients of the HTTP API.

The API address comes from ``--api-url`` or ``$ZAPFLEET_API_URL`` (default
``http://127.0.0.1:8080``); the key from ``$ZAPFLEET_API_KEY`` or, for the stack of
``zapfleet up``, the file ``<ZAPFLEET_HOME or .zapfleet>/admin_key``. The key is sent in
the ``Authorization`` header. API problems (RFC 9457) are printed as one line and exit 1.

zapfleet sessions ls              the sessions and their live state
zapfleet sessions create [ID]     create a session (--engine sim|neonize, --webhook-url URL)
zapfleet sessions qr ID           draw the pairing QR code in the terminal (--watch: follow
                                  the rotations until a phone scans it)
zapfleet nodes ls                 the nodes: capacity, sessions, draining
zapfleet nodes drain NODE         move every session off NODE and exclude it from placement
zapfleet nodes cordon NODE        no new sessions on NODE (uncordon: eligible again)
zapfleet nodes rebalance          even out sessions between eligible nodes
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, TextIO

import httpx
import segno

DEFAULT_API_URL = "http://127.0.0.1:8080"


class CliError(Exception):
    """A message for the user; the command exits 1 (2 for usage problems)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def api_key(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    from_env = os.environ.get("ZAPFLEET_API_KEY")
    if from_env:
        return from_env.strip()
    key_file = Path(os.environ.get("ZAPFLEET_HOME", ".zapfleet")) / "admin_key"
    if key_file.exists():
        return key_file.read_text().strip()
    raise CliError(
        "no API key: set ZAPFLEET_API_KEY (or run inside the directory of `zapfleet up`, "
        f"which writes {key_file})",
        exit_code=2,
    )


class Api:
    def __init__(self, base_url: str, key: str, timeout_s: float = 15) -> None:
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            timeout=timeout_s,
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.client.close()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the API at {self.client.base_url}: {exc}") from None
        if response.status_code >= 400:
            raise CliError(describe_problem(response))
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


def describe_problem(response: httpx.Response) -> str:
    try:
        problem = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if not isinstance(problem, dict):
        return f"HTTP {response.status_code}"
    title = problem.get("title") or f"HTTP {response.status_code}"
    detail = problem.get("detail")
    if response.status_code == 405 or (
        response.status_code == 404 and str(problem.get("type", "")).endswith(":not_found")
    ):
        return f"this server does not offer {response.request.method} {response.request.url.path}"
    return f"{title}: {detail}" if detail else str(title)


def items(body: Any, *names: str) -> list[dict[str, Any]]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for name in (*names, "items", "data", "results"):
            if isinstance(body.get(name), list):
                return list(body[name])
    return []


def table(rows: list[list[str]], headers: list[str], out: TextIO) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print(
            "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out
        )


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    seconds = max(0.0, time.time() - ts)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def draw_qr(code: str, out: TextIO) -> None:
    """The QR code in half-block characters, dark modules on a light border."""
    buffer = io.StringIO()
    segno.make(code, error="m").terminal(out=buffer, compact=True, border=2)
    out.write(buffer.getvalue())


# -- commands ----------------------------------------------------------------------------


def sessions_ls(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    sessions = items(api.call("GET", "/v1/sessions"), "sessions")
    if args.json:
        print(json.dumps(sessions, indent=2), file=out)
        return
    if not sessions:
        print("no sessions", file=out)
        return
    rows = [
        [
            s.get("session_id", ""),
            s.get("state", ""),
            "+" + s["phone"] if s.get("phone") else "-",
            s.get("engine", ""),
            s.get("node_id") or "-",
            str(s.get("queue_depth", 0)),
            ago(s.get("since")),
        ]
        for s in sorted(sessions, key=lambda s: str(s.get("session_id")))
    ]
    table(rows, ["SESSION", "STATE", "PHONE", "ENGINE", "NODE", "QUEUE", "SINCE"], out)


def sessions_create(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    body: dict[str, Any] = {}
    if args.session_id:
        body["session_id"] = args.session_id
    if args.engine:
        body["engine"] = args.engine
    if args.webhook_url:
        body["webhook_url"] = args.webhook_url
    if args.device_name:
        body["device_name"] = args.device_name
    created = api.call("POST", "/v1/sessions", body)
    print(
        f"created {created['session_id']} on {created.get('node_id') or 'no node'} "
        f"(engine {created.get('engine')}, state {created.get('state')})",
        file=out,
    )
    print(f"pair it: zapfleet sessions qr {created['session_id']} --watch", file=out)


def sessions_qr(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    session_path = f"/v1/sessions/{args.session_id}"
    deadline = time.monotonic() + args.timeout
    shown: str | None = None
    while True:
        session = api.call("GET", session_path)
        state = session.get("state")
        if state == "CONNECTED":
            if shown is None and not args.watch:
                raise CliError(f"session {args.session_id} is already connected")
            print(f"connected as +{session.get('phone')}", file=out, flush=True)
            return
        if state == "PAIRING":
            try:
                code = api.call("GET", f"{session_path}/qr")["qr"]
            except CliError:
                code = None  # scanned (or rotated) between the two calls: look again
            if code and code != shown:
                if shown is not None:
                    print("\nthe code rotated:", file=out)
                draw_qr(code, out)
                print(
                    f"scan with WhatsApp: Linked devices > Link a device ({args.session_id})",
                    file=out,
                    flush=True,
                )
                shown = code
                if not args.watch:
                    return
        elif state not in ("STARTING", None) and not args.watch:
            raise CliError(f"session {args.session_id} is {state}, not pairing")
        if time.monotonic() > deadline:
            raise CliError(f"session {args.session_id} not paired within {args.timeout:.0f} s")
        time.sleep(args.interval)


def nodes_ls(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    nodes = items(api.call("GET", "/v1/nodes"), "nodes")
    if args.json:
        print(json.dumps(nodes, indent=2), file=out)
        return
    if not nodes:
        print("no nodes", file=out)
        return
    rows = []
    for n in sorted(nodes, key=lambda n: str(n.get("node_id"))):
        flags = [f for f in ("draining", "cordoned") if n.get(f)]
        status = ",".join(flags) or str(n.get("state") or "up")
        rows.append(
            [
                str(n.get("node_id", "")),
                status,
                str(n.get("engine", "")),
                f"{n.get('sessions', 0)}/{n.get('capacity', 0)}",
                str((n.get("by_state") or {}).get("CONNECTED", 0)),
                f"{(n.get('rss_bytes') or 0) / 2**20:.0f}MiB",
                str(n.get("version", "")),
                ago(n.get("ts")),
            ]
        )
    table(
        rows,
        ["NODE", "STATUS", "ENGINE", "SESSIONS", "CONNECTED", "RSS", "VERSION", "HEARTBEAT"],
        out,
    )


def print_moves(result: Any, out: TextIO) -> None:
    """A move report of drain/rebalance: counts, then each failure."""
    moved, skipped, failed = (result.get(k, 0) for k in ("moved", "skipped", "failed"))
    print(f"moved {moved}, skipped {skipped}, failed {failed}", file=out)
    for item in result.get("results", []):
        if item.get("result") == "failed":
            print(f"  {item['session_id']}: {item.get('detail')}", file=out)


def nodes_drain(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    result = api.call("POST", f"/v1/nodes/{args.node_id}/drain")
    print(f"drained {args.node_id}: no new sessions until uncordoned", file=out)
    print_moves(result, out)
    if result.get("failed"):
        raise CliError(f"{result['failed']} session(s) could not move")


def nodes_flag(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    node = api.call("POST", f"/v1/nodes/{args.node_id}/{args.nodes_command}")
    print(f"{node['node_id']}: {'cordoned' if node.get('cordoned') else 'eligible'}", file=out)


def nodes_rebalance(api: Api, args: argparse.Namespace, out: TextIO) -> None:
    print_moves(api.call("POST", "/v1/nodes/rebalance"), out)


# -- parser ------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> None:
    try:
        with Api(args.api_url, api_key(args.api_key), getattr(args, "http_timeout", 15)) as api:
            args.handler(api, args, sys.stdout)
    except CliError as exc:
        fail(str(exc), exc.exit_code)


def fail(message: str, exit_code: int) -> NoReturn:
    print(f"zapfleet: {message}", file=sys.stderr)
    raise SystemExit(exit_code)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-url",
        default=os.environ.get("ZAPFLEET_API_URL", DEFAULT_API_URL),
        help="control plane base URL (env ZAPFLEET_API_URL)",
    )
    parser.add_argument("--api-key", default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=_run)


def add_session_commands(sub: Any) -> None:
    sessions = sub.add_parser("sessions", help="list, create and pair sessions (HTTP API)")
    cmds = sessions.add_subparsers(dest="sessions_command", required=True)

    ls = cmds.add_parser("ls", help="sessions and their live state")
    ls.add_argument("--json", action="store_true", help="print the API's JSON")
    _common(ls)
    ls.set_defaults(handler=sessions_ls)

    create = cmds.add_parser("create", help="create a session and place it on a node")
    create.add_argument(
        "session_id", nargs="?", help="letters, digits, _ and - (default: generated)"
    )
    create.add_argument("--engine", choices=("sim", "neonize"), help="default: the server's")
    create.add_argument("--webhook-url")
    create.add_argument("--device-name")
    _common(create)
    create.set_defaults(handler=sessions_create)

    qr = cmds.add_parser("qr", help="draw the pairing QR code in the terminal")
    qr.add_argument("session_id")
    qr.add_argument(
        "--watch", action="store_true", help="redraw on rotation; exit 0 once connected"
    )
    qr.add_argument("--timeout", type=float, default=300, help="give up after this many seconds")
    qr.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    _common(qr)
    qr.set_defaults(handler=sessions_qr)


def add_node_commands(sub: Any) -> None:
    nodes = sub.add_parser("nodes", help="list, cordon, drain, rebalance nodes (admin key)")
    cmds = nodes.add_subparsers(dest="nodes_command", required=True)
    ls = cmds.add_parser("ls", help="nodes: capacity, sessions, draining")
    ls.add_argument("--json", action="store_true", help="print the API's JSON")
    _common(ls)
    ls.set_defaults(handler=nodes_ls)
    drain = cmds.add_parser("drain", help="move every session off a node; no new placements")
    drain.add_argument("node_id")
    _common(drain)
    drain.set_defaults(handler=nodes_drain, http_timeout=600)
    for name, text in (
        ("cordon", "no new sessions on a node; its sessions stay"),
        ("uncordon", "make a node eligible again (ends a drain too)"),
    ):
        flag = cmds.add_parser(name, help=text)
        flag.add_argument("node_id")
        _common(flag)
        flag.set_defaults(handler=nodes_flag)
    rebalance = cmds.add_parser("rebalance", help="even out sessions between eligible nodes")
    _common(rebalance)
    rebalance.set_defaults(handler=nodes_rebalance, http_timeout=600)
