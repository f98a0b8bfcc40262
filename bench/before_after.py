"""The restructuring of issue 14 did not make zapfleet slower: `bench api` and `bench
webhooks` on a commit from before it and on this one, alternately, in one run.

Each side runs in a detached git worktree of its commit (this one: HEAD, so commit first),
with this interpreter and the commit's own code first on the path (the editable install
comes after it). Every figure compared is already a ratio against a baseline the same
run measured (bare Litestar, raw POST), so the two sides see the same machine; the runs
alternate (before, after, before, after, ...) so that background load hits both.

Settings: ``ZAPFLEET_BENCH_BEFORE`` (default ``3f55e36``: main when issue 14 was filed),
``ZAPFLEET_BENCH_ROUNDS`` (default 2), ``ZAPFLEET_BENCH_COMPARE`` (default
``api,webhooks``). Not part of ``just bench`` (all): run ``just bench before_after``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench._report import figure, write_json

IN_ALL = False  # runs other benchmarks several times: only when asked for by name

ROOT = Path(__file__).resolve().parent.parent
BEFORE = os.environ.get("ZAPFLEET_BENCH_BEFORE", "3f55e36")
ROUNDS = int(os.environ.get("ZAPFLEET_BENCH_ROUNDS", "2"))
COMPARED = os.environ.get("ZAPFLEET_BENCH_COMPARE", "api,webhooks").split(",")

# per benchmark: the figures compared (ratios measured against a same-run baseline) and
# whether higher is better
FIGURES: dict[str, dict[str, bool]] = {
    "api": {"ratio_vs_bare": True},
    "webhooks": {"ratio_vs_raw_post": True},
}


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def _run(tree: Path, name: str) -> dict[str, Any]:
    """One benchmark in ``tree``; its JSON as it wrote it there."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-m", "bench", name], cwd=tree, env=env, check=True)
    result: dict[str, Any] = json.loads((tree / "docs" / "benchmarks" / f"{name}.json").read_text())
    return result


def main() -> None:
    commits = {"before": _git("rev-parse", BEFORE), "after": _git("rev-parse", "HEAD")}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {"before": [], "after": []} for name in COMPARED
    }
    with tempfile.TemporaryDirectory(prefix="zapfleet-before-after-") as tmp:
        trees = {side: Path(tmp) / side for side in commits}
        for side, commit in commits.items():
            _git("worktree", "add", "--detach", str(trees[side]), commit)
        try:
            for round_ in range(ROUNDS):
                for name in COMPARED:
                    for side in ("before", "after"):
                        print(f"== round {round_ + 1}: {name} {side}", flush=True)
                        runs[name][side].append(_run(trees[side], name))
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
                )
    results: dict[str, Any] = {"commits": commits, "rounds": ROUNDS, "benchmarks": {}}
    for name, sides in runs.items():
        compared: dict[str, Any] = {}
        for figure_name, higher_is_better in FIGURES.get(name, {}).items():
            before = [r[figure_name] for r in sides["before"] if figure_name in r]
            after = [r[figure_name] for r in sides["after"] if figure_name in r]
            if not before or not after:
                continue
            b, a = statistics.median(before), statistics.median(after)
            change = (a / b if higher_is_better else b / a) if a and b else None
            compared[figure_name] = {
                "before": before,
                "after": after,
                "median_before": b,
                "median_after": a,
                # > 1: after is better; the goal is "not slower" (>= 0.9 counts as equal
                # here: single runs of these benchmarks vary by about 10 % on this machine)
                "after_vs_before": round(change, 3) if change is not None else None,
            }
        results["benchmarks"][name] = compared
    write_json("before_after", results)
    plt, png = figure("before_after")
    labels, befores, afters = [], [], []
    for name, compared in results["benchmarks"].items():
        for figure_name, values in compared.items():
            labels.append(f"{name}\n{figure_name}")
            befores.append(values["median_before"])
            afters.append(values["median_after"])
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], befores, width=0.4, label=f"before ({commits['before'][:7]})")
    ax.bar([x + 0.2 for x in xs], afters, width=0.4, label=f"after ({commits['after'][:7]})")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("ratio to the same run's baseline (higher is better)")
    ax.set_title("Issue 14 restructuring: before vs after, one run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    print(f"wrote {png}")
