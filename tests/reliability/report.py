"""Numbers of the drills: printed, and merged into test-artifacts/reliability.json."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.conftest import ARTIFACTS

RESULTS = ARTIFACTS / "reliability.json"


def record_result(drill: str, numbers: dict[str, Any]) -> None:
    shown = ", ".join(f"{k}={v}" for k, v in numbers.items())
    print(f"\n[drill] {drill}: {shown}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        results = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        results = {}
    results[drill] = {**numbers, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
