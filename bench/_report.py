"""Shared output of benchmarks: docs/benchmarks/<name>.json and <name>.png."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(name: str, results: dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps({**results, "machine": machine()}, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return path


def figure(name: str) -> tuple[Any, Path]:
    """A matplotlib (Agg) figure and the PNG path to save it to."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    return plt, OUT / f"{name}.png"
