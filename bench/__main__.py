"""`python -m bench <name>|all`: run benchmarks; each module bench/<name>.py has `main()`.
A module with ``IN_ALL = False`` runs only when asked for by name."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def run(name: str) -> None:
    module = importlib.import_module(f"bench.{name}")
    module.main()


if __name__ == "__main__":
    wanted = sys.argv[1] if len(sys.argv) > 1 else "all"
    names = (
        [n for n in available() if getattr(importlib.import_module(f"bench.{n}"), "IN_ALL", True)]
        if wanted == "all"
        else [wanted]
    )
    unknown = [n for n in names if n not in available()]
    if unknown:
        raise SystemExit(f"unknown benchmark {unknown[0]!r}; choose from {available()}")
    for bench_name in names:
        print(f"== bench {bench_name}", flush=True)
        run(bench_name)
