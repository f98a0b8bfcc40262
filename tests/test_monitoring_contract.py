"""The Prometheus alert rules and the Grafana dashboard that ship with the playbooks use
only metrics, labels and label values that the code exports, and are well formed.

The exported metrics are read from prometheus_client's registry after importing every
module of control_plane, node_agent and zapfleet — what the processes really register.
promtool (Debian's, extracted into .venv/bin by ./dev test) checks the rules and every
dashboard query as PromQL; without it the structural checks here still run."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import contract
import control_plane
import node_agent
import zapfleet
from contract.protocol import SessionState

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "playbooks" / "roles" / "monitoring" / "files"
RULES = MONITORING / "zapfleet.rules.yml"
DASHBOARD = MONITORING / "zapfleet-dashboard.json"
METRICS_LIST = MONITORING / "metrics.yml"

# Labels Prometheus adds to every scraped series, and those the playbooks' file_sd targets
# add (roles/monitoring/templates/zapfleet-*.yml.j2).
TARGET_LABELS = {"instance", "job", "node", "node_id", "shard"}
# Series that Prometheus itself produces.
SYNTHETIC = {"up": set[str]()}
# Label values the code takes from an enum (other values are read from the source below).
ENUM_VALUES: dict[tuple[str, str], set[str]] = {
    ("zapfleet_agent_sessions", "state"): {s.value for s in SessionState},
    ("zapfleet_api_requests", "status"): {"1xx", "2xx", "3xx", "4xx", "5xx", "other"},
}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
SEVERITIES = {"critical", "warning", "info"}


@dataclass(frozen=True)
class Family:
    name: str
    type: str
    labels: frozenset[str]

    def series(self) -> set[str]:
        """The sample names a scrape shows for this family."""
        if self.type == "counter":
            return {f"{self.name}_total", f"{self.name}_created"}
        if self.type == "histogram":
            return {f"{self.name}_{s}" for s in ("bucket", "sum", "count", "created")}
        if self.type == "summary":
            return {self.name, f"{self.name}_sum", f"{self.name}_count", f"{self.name}_created"}
        return {self.name}


def exported_families() -> dict[str, Family]:
    for package in (contract, control_plane, node_agent, zapfleet):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            # __main__ runs the CLI. Every other module is imported, the neonize engine's
            # too: it registers gauges, and a list that depended on which tests ran first
            # (they import it) once passed alone and failed in the suite
            if module.name.endswith("__main__"):
                continue
            importlib.import_module(module.name)
    families = {}
    for collector in list(REGISTRY._collector_to_names):
        if isinstance(collector, MetricWrapperBase):
            name = collector._name
            if name.startswith("zapfleet_"):
                families[name] = Family(name, collector._type, frozenset(collector._labelnames))
    return families


_METRIC_CLASSES = {"Counter", "Gauge", "Histogram", "Summary"}


def _literals(node: ast.expr, names: dict[str, set[str]]) -> set[str] | None:
    """The strings an argument can be: a literal, a conditional between literals, or a
    name bound to literals (``for result in ("hit", "miss")``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        body, orelse = _literals(node.body, names), _literals(node.orelse, names)
        return body | orelse if body is not None and orelse is not None else None
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Tuple | ast.List):
        found: set[str] = set()
        for element in node.elts:
            one = _literals(element, names)
            if one is None:
                return None
            found |= one
        return found
    return None


def _literal_names(tree: ast.Module) -> dict[str, set[str]]:
    """Names bound to string literals in a module: constants and loop variables over them."""
    names: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            found = _literals(node.value, names)
            if isinstance(target, ast.Name) and found is not None:
                names[target.id] = found
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            found = _literals(node.iter, names)
            if found is not None:
                names[node.target.id] = found
    return names


def label_values_in_source(families: dict[str, Family]) -> dict[tuple[str, str], set[str] | None]:
    """(family, label) -> every value the source passes to ``.labels()``, or None when some
    call passes a computed value. Metric objects are found by the names they are assigned
    to at module level (``SENDS = Counter("zapfleet_agent_sends_total", ...)``)."""
    variables: dict[str, str] = {}
    trees = []
    for package in ("control_plane", "node_agent", "zapfleet"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            trees.append(tree)
            for node in tree.body:
                if (
                    isinstance(node, ast.Assign)
                    and isinstance(node.value, ast.Call)
                    and isinstance(node.value.func, ast.Name)
                    and node.value.func.id in _METRIC_CLASSES
                    and node.value.args
                    and isinstance(node.value.args[0], ast.Constant)
                ):
                    name = re.sub(r"_total$", "", str(node.value.args[0].value))
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            variables[target.id] = name
    values: dict[tuple[str, str], set[str] | None] = {}
    for tree in trees:
        names = _literal_names(tree)
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "labels"
            ):
                continue
            owner = node.func.value
            owner_name = (
                owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            )
            family = families.get(variables.get(owner_name, ""))
            if family is None:
                continue
            labels = [label for label in _label_order(family)]
            for label, arg in zip(labels, node.args, strict=False):
                found = _literals(arg, names)
                key = (family.name, label)
                if found is None or values.get(key, set()) is None:
                    values[key] = None
                else:
                    values[key] = (values.get(key) or set()) | found
    return values


def _label_order(family: Family) -> list[str]:
    for collector in list(REGISTRY._collector_to_names):
        if isinstance(collector, MetricWrapperBase) and collector._name == family.name:
            return list(collector._labelnames)
    return sorted(family.labels)


def known_values(families: dict[str, Family]) -> dict[tuple[str, str], set[str]]:
    """(family, label) -> the closed set of values the code can produce, where known."""
    closed = {k: v for k, v in label_values_in_source(families).items() if v is not None}
    return {**closed, **ENUM_VALUES}


@pytest.fixture(scope="module")
def families() -> dict[str, Family]:
    return exported_families()


@pytest.fixture(scope="module")
def values(families: dict[str, Family]) -> dict[tuple[str, str], set[str]]:
    return known_values(families)


@pytest.fixture(scope="module")
def series_index(families: dict[str, Family]) -> dict[str, Family]:
    index = {series: family for family in families.values() for series in family.series()}
    for name, labels in SYNTHETIC.items():
        index[name] = Family(name, "gauge", frozenset(labels))
    return index


def load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, rows' nested panels included."""
    found = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((panel.get("title", "?"), target["expr"]))
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return found


# -- a small PromQL reader: enough to find series, matchers and grouping labels ----------------

_STRING = r'"(?:[^"\\]|\\.)*"'
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*({_STRING})")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_KEYWORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "offset", "bool", "rate", "irate", "increase", "delta", "idelta",
    "deriv", "histogram_quantile", "max_over_time", "min_over_time", "avg_over_time",
    "sum_over_time", "count_over_time", "last_over_time", "absent", "absent_over_time",
    "clamp_min", "clamp_max", "clamp", "abs", "ceil", "floor", "round", "time", "vector",
    "scalar", "label_replace", "label_join", "changes", "resets", "predict_linear", "sort",
    "sort_desc", "timestamp", "le", "inf", "nan",
}  # fmt: skip


@dataclass
class Reference:
    series: str
    matchers: list[tuple[str, str, str]]


def read_expr(expr: str) -> tuple[list[Reference], set[str]]:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    without_strings = re.sub(_STRING, '""', expr)
    grouping = {
        label.strip()
        for clause in _GROUPING.findall(without_strings)
        for label in clause.split(",")
        if label.strip()
    }
    references = []
    # selectors: identifiers that are not functions/keywords, not durations, not numbers
    scrubbed = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    scrubbed = _GROUPING.sub("", scrubbed)
    for match in _SELECTOR.finditer(scrubbed):
        name, braces = match.group(1), match.group(2) or ""
        after = scrubbed[match.end() :].lstrip()
        if name.lower() in _KEYWORDS or (after.startswith("(") and not braces):
            continue
        if re.fullmatch(r"\d.*", name):
            continue
        matchers = [(lbl, op, json.loads(v)) for lbl, op, v in _MATCHER.findall(braces)]
        references.append(Reference(name, matchers))
    return references, grouping


def value_allowed(op: str, pattern: str, values: set[str]) -> bool:
    if op in ("=", "!="):
        return pattern in values
    alternatives = [a for a in pattern.split("|") if a]
    return all(any(re.fullmatch(a, v) for v in values) for a in alternatives)


def problems_in(
    where: str,
    expr: str,
    index: dict[str, Family],
    values: dict[tuple[str, str], set[str]],
) -> list[str]:
    references, grouping = read_expr(expr)
    problems = []
    if not references:
        problems.append(f"{where}: no series in {expr!r}")
    labels_in_expr = set(TARGET_LABELS)
    for ref in references:
        family = index.get(ref.series)
        if family is None:
            problems.append(f"{where}: {ref.series} is not exported by the code")
            continue
        known = family.labels | TARGET_LABELS | ({"le"} if family.type == "histogram" else set())
        labels_in_expr |= known
        for label, op, value in ref.matchers:
            if label not in known:
                problems.append(f"{where}: {ref.series} has no label {label!r}")
            allowed = values.get((family.name, label))
            if allowed and not value_allowed(op, value, allowed):
                problems.append(f"{where}: {ref.series}{{{label}{op}{value!r}}} matches no value")
    if all(ref.series in index for ref in references):
        for label in grouping - labels_in_expr:
            problems.append(f"{where}: grouping by {label!r}, which no series here has")
    return sorted(set(problems), key=problems.index)


# -- the tests -----------------------------------------------------------------------------------


def test_the_code_exports_the_metrics_the_dashboard_is_about(families: dict[str, Family]) -> None:
    assert families["zapfleet_agent_sessions"].labels == {"state"}
    assert families["zapfleet_agent_sends"].type == "counter"
    assert families["zapfleet_agent_send_seconds"].type == "histogram"


def test_every_alert_rule_uses_exported_metrics_labels_and_values(
    series_index: dict[str, Family], values: dict[tuple[str, str], set[str]]
) -> None:
    problems = []
    for rule in load_rules():
        problems += problems_in(f"alert {rule.get('alert')}", rule["expr"], series_index, values)
    assert problems == []


def test_every_dashboard_query_uses_exported_metrics_labels_and_values(
    series_index: dict[str, Family], values: dict[tuple[str, str], set[str]]
) -> None:
    problems = []
    for title, expr in dashboard_queries():
        problems += problems_in(f"panel {title!r}", expr, series_index, values)
    assert problems == []


def test_the_checks_catch_what_they_are_for(
    series_index: dict[str, Family], values: dict[tuple[str, str], set[str]]
) -> None:
    """The reader is not blind: each kind of mistake in an expression is reported."""

    def check(expr: str) -> list[str]:
        return problems_in("x", expr, series_index, values)

    assert check('sum by (state) (zapfleet_agent_sessions{state=~"CONNECTED|PAIRING"})') == []
    assert check("rate(zapfleet_agent_sends_total[5m])") == []
    assert (
        check("histogram_quantile(0.9, sum by (le) (rate(zapfleet_agent_send_seconds_bucket[5m])))")
        == []
    )
    assert "not exported" in " ".join(check("rate(zapfleet_agent_sendz_total[5m])"))
    assert "not exported" in " ".join(check("zapfleet_agent_sends"))  # a counter needs _total
    assert "no label" in " ".join(check('zapfleet_agent_rss_bytes{state="x"}'))
    assert "matches no value" in " ".join(check('zapfleet_agent_sessions{state="ONLINE"}'))
    assert "matches no value" in " ".join(check('zapfleet_agent_sends_total{result="lost"}'))
    assert "grouping" in " ".join(check("sum by (tenant) (zapfleet_agent_open_fds)"))


def test_label_values_are_read_from_the_source(
    values: dict[tuple[str, str], set[str]],
) -> None:
    assert {"sent", "failed"} <= values[("zapfleet_agent_sends", "result")]
    assert {"hit", "miss"} <= values[("zapfleet_api_cache_requests", "result")]


def test_alert_rules_are_well_formed() -> None:
    names = set()
    for rule in load_rules():
        name = rule.get("alert")
        assert name and name not in names, f"missing or duplicate alert name: {name}"
        names.add(name)
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"].get("summary"), name
        if "for" in rule:
            assert re.fullmatch(r"\d+[smhd]", str(rule["for"])), name
        assert rule["expr"].count("(") == rule["expr"].count(")"), name


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids: list[int] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            ids.append(panel["id"])
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
            assert 0 < panel["gridPos"]["w"] <= 24, panel["title"]
            refs = [t["refId"] for t in panel.get("targets", [])]
            assert len(refs) == len(set(refs)), panel["title"]
            if panel["type"] != "row":
                assert panel.get("targets"), f"panel {panel['title']!r} has no query"
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
    for title, expr in dashboard_queries():
        for used in re.findall(r"\$(\w+)", expr):
            assert used.startswith("__") or used in variables, (title, used)


def test_the_metrics_list_of_the_playbooks_is_what_the_code_exports(
    families: dict[str, Family], values: dict[tuple[str, str], set[str]]
) -> None:
    listed = yaml.safe_load(METRICS_LIST.read_text())
    problems = []
    seen = set()
    for section in listed.values():
        for series, spec in section.items():
            name = series.removesuffix("_total") if spec["type"] == "counter" else series
            seen.add(name)
            family = families.get(name)
            if family is None:
                problems.append(f"{series}: not exported by the code")
                continue
            if family.type != spec["type"]:
                problems.append(f"{series}: the code says {family.type}, the list {spec['type']}")
            labels = spec.get("labels") or {}
            if set(labels) != family.labels:
                problems.append(f"{series}: labels {sorted(family.labels)} in the code")
            for label, listed_values in labels.items():
                produced = values.get((name, label))
                if listed_values is not None and produced is not None:
                    extra = set(listed_values) - produced
                    if extra:
                        problems.append(f"{series}{{{label}}}: the code never sets {extra}")
    for name in sorted(set(families) - seen):
        problems.append(
            f"{name} ({families[name].type}) is exported but not in {METRICS_LIST.name}: "
            "list it there, show it on the dashboard (tests/test_playbooks.py wants every "
            "listed metric on it) and alert on it where it matters"
        )
    assert problems == []


def _promtool() -> str | None:
    local = ROOT / ".venv" / "bin" / "promtool"
    return str(local) if local.exists() else shutil.which("promtool")


def test_promtool_accepts_the_rules_and_every_dashboard_query(tmp_path: Path) -> None:
    """PromQL syntax, checked by Prometheus' own parser. ./dev test provides promtool; a
    machine without it (not root, no apt) relies on the checks above."""
    promtool = _promtool()
    if promtool is None:
        for _, expr in dashboard_queries():
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
        return
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    recording = []
    for number, (_, query) in enumerate(dashboard_queries()):
        expr = query
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        recording.append({"record": f"dashboard:query_{number}", "expr": expr})
    as_rules = tmp_path / "dashboard.rules.yml"
    as_rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}))
    checked = subprocess.run(
        [promtool, "check", "rules", str(as_rules)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_monitoring_section_of_docs_ui_names_every_alert_and_only_exported_metrics(
    families: dict[str, Family], series_index: dict[str, Family]
) -> None:
    """docs/ui.md lists every alert rule by name, and every metric it names is exported
    (it once said the control plane had no request-duration histogram while it did)."""
    text = (ROOT / "docs" / "ui.md").read_text()
    missing = [rule["alert"] for rule in load_rules() if f"`{rule['alert']}`" not in text]
    assert missing == [], f"docs/ui.md does not describe the alerts {missing}"
    named = set(re.findall(r"\bzapfleet_[a-z0-9_]+\b", text))
    assert named, "docs/ui.md names no metric"
    exported = families.keys() | series_index.keys()
    assert sorted(name for name in named if name not in exported) == []
    for stale in ("no request-duration histogram", "no API latency alert"):
        assert stale not in text
