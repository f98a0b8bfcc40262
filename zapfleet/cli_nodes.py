"""``zapfleet nodes ...``: node administration through the control plane's admin API.

    zapfleet nodes ls                  every node: status, flags, slots, sessions
    zapfleet nodes cordon NODE         no new sessions on NODE
    zapfleet nodes uncordon NODE       NODE is eligible again (ends a drain too)
    zapfleet nodes drain NODE          cordon NODE and move its sessions elsewhere
    zapfleet nodes rebalance           even out sessions between eligible nodes

The API URL comes from ``--url`` or ``ZAPFLEET_API_URL`` (default http://127.0.0.1:8080),
the admin key from ``--key``, ``ZAPFLEET_ADMIN_KEY`` or ``.zapfleet/admin_key``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def _key(args: argparse.Namespace) -> str:
    if args.key:
        return str(args.key)
    from_env = os.environ.get("ZAPFLEET_ADMIN_KEY")
    if from_env:
        return from_env
    home = Path(os.environ.get("ZAPFLEET_HOME", ".zapfleet"))
    key_file = home / "admin_key"
    if key_file.exists():
        return key_file.read_text().strip()
    print("zapfleet: no admin key: pass --key or set ZAPFLEET_ADMIN_KEY", file=sys.stderr)
    raise SystemExit(2)


def _call(args: argparse.Namespace, method: str, path: str) -> Any:
    import httpx

    url = args.url.rstrip("/") + path
    try:
        response = httpx.request(
            method, url, headers={"X-API-Key": _key(args)}, timeout=args.timeout
        )
    except httpx.HTTPError as exc:
        print(f"zapfleet: cannot reach {url}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        print(f"zapfleet: {response.status_code}: {detail}", file=sys.stderr)
        raise SystemExit(1)
    return response.json()


def format_nodes(nodes: list[dict[str, Any]]) -> str:
    header = ("NODE", "STATUS", "FLAGS", "SLOTS", "SESSIONS", "CONNECTED", "SILENT_S", "LABELS")
    rows = [header]
    for node in nodes:
        flags = ",".join(f for f in ("cordoned", "draining") if node.get(f)) or "-"
        labels = ",".join(f"{k}={v}" for k, v in sorted(node.get("labels", {}).items())) or "-"
        rows.append(
            (
                node["node_id"],
                node["status"],
                flags,
                f"{node['slots_used']}/{node['capacity']}",
                str(node["sessions"]),
                str(node.get("by_state", {}).get("CONNECTED", 0)),
                f"{node['silent_s']:.1f}",
                labels,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)  # fmt: skip


def _print_moves(report: dict[str, Any]) -> None:
    print(f"moved {report['moved']}, skipped {report['skipped']}, failed {report['failed']}")
    for item in report["results"]:
        if item["result"] == "failed":
            print(f"  {item['session_id']}: failed: {item.get('detail')}")


def cmd_nodes(args: argparse.Namespace) -> None:
    action = args.nodes_command
    if action == "ls":
        print(format_nodes(_call(args, "GET", "/v1/placement")))
    elif action in ("cordon", "uncordon"):
        node = _call(args, "POST", f"/v1/nodes/{args.node_id}/{action}")
        print(f"{node['node_id']}: {'cordoned' if node['cordoned'] else 'eligible'}")
    elif action == "drain":
        _print_moves(_call(args, "POST", f"/v1/nodes/{args.node_id}/drain"))
    elif action == "rebalance":
        _print_moves(_call(args, "POST", "/v1/nodes/rebalance"))


def add_parser(sub: Any) -> None:
    nodes = sub.add_parser("nodes", help="list, cordon, drain and rebalance nodes (admin)")
    nodes.add_argument("--url", default=os.environ.get("ZAPFLEET_API_URL", "http://127.0.0.1:8080"))
    nodes.add_argument("--key", default=None, help="admin key (default: $ZAPFLEET_ADMIN_KEY)")
    nodes.add_argument("--timeout", type=float, default=120.0)
    actions = nodes.add_subparsers(dest="nodes_command", required=True)
    actions.add_parser("ls", help="every node as placement sees it")
    for name, text in (
        ("cordon", "no new sessions on the node"),
        ("uncordon", "make the node eligible again"),
        ("drain", "move every session off the node (no re-pairing)"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("node_id")
    actions.add_parser("rebalance", help="even out sessions between eligible nodes")
    nodes.set_defaults(func=cmd_nodes)
