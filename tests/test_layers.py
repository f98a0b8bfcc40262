"""The import graph shows the architecture (issue 14): the control plane and the node
agents share only the contract package (``contract/``: wire structs, subjects, buckets,
events and the value rules both apply) and the runtime helpers of ``zapfleet/``; neither
imports the other, the contract imports neither, and of ``zapfleet/`` only the CLI
modules import upward (they start the processes)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# zapfleet's CLI layer: it starts the control plane and the agents, so it imports them
CLI = {"zapfleet/cli.py", "zapfleet/__main__.py", "zapfleet/backup.py"}
# what each package may import of the others
ALLOWED = {
    "contract": set(),
    "zapfleet": {"contract"},
    "control_plane": {"contract", "zapfleet"},
    "node_agent": {"contract", "zapfleet"},
}


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any level (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_each_package_imports_only_the_layers_below_it() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        others = set(ALLOWED) - {package}
        for path in sorted((ROOT / package).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            if name in CLI:
                continue
            for module in imports_of(path):
                top = module.split(".", 1)[0]
                if top in others and top not in allowed:
                    wrong.append(f"{name} imports {module}")
    assert wrong == []


def test_the_check_sees_a_crossing_import(tmp_path: Path) -> None:
    """The scan finds a crossing import however it is written (a function-level one too)."""
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from node_agent.agent import Agent\n    import control_plane\n"
    )
    assert imports_of(module) == {"node_agent.agent", "control_plane"}
