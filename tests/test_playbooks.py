"""Ansible provisioning (playbooks/, sysctl/): pinned collections, syntax check, ansible-lint
(production profile, offline), a render-only run of site.yml on localhost into a temporary
root whose files are checked, a second run that changes nothing, check mode on a fresh root,
and ``systemd-analyze verify`` on the rendered units.

Every ansible command runs with the interpreter running these tests, offline, and with
ANSIBLE_HOME and the collection path inside a temporary directory: only the collections of the
pinned ``ansible`` package are used. ansible-lint, the syntax check, the check-mode run and the
runs that must be refused start in the background with the first render run and overlap it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.settings import ControlPlaneSettings
from node_agent.settings import AgentSettings
from zapfleet._env import load_settings

REPO = Path(__file__).resolve().parent.parent
PLAYBOOKS = REPO / "playbooks"
SITE = PLAYBOOKS / "site.yml"
INVENTORY = PLAYBOOKS / "inventory" / "example" / "hosts.yml"
ROLES = PLAYBOOKS / "roles"
SYSCTL_FILE = REPO / "sysctl" / "90-zapfleet.conf"
METRICS_FILE = ROLES / "monitoring" / "files" / "metrics.yml"
RULES_FILE = ROLES / "monitoring" / "files" / "zapfleet.rules.yml"
DASHBOARD_FILE = ROLES / "monitoring" / "files" / "zapfleet-dashboard.json"
BIN = Path(sys.executable).parent

# node1 of the example inventory runs every role: NATS, Valkey, agents, control plane,
# monitoring. node2 and node3 are rendered into its files (routes, URLs, scrape targets).
HOST = "node1"
ADMIN_KEY = "test-admin-key-0123456789abcdef"
TIMEOUT_S = 300

# The collections the playbooks use, as bundled in the pinned `ansible` package
# (requirements.lock): version and sha256 of MANIFEST.json. MANIFEST.json holds the sha256 of
# FILES.json, which holds the sha256 of every file.
PINNED_COLLECTIONS = {
    "ansible.posix": ("2.1.0", "3899df5b1b390f51a7fc95ad8997c7e7030daf4f5265898f96977ef9ed8d4df5"),
    "community.general": (
        "11.4.2",
        "f1b4b4c54e1ee375be9c12cc4794ff6f38fdb20d62bb9eeda18c145d7972440e",
    ),
}
# Directories the `ansible` package leaves out of the collections it bundles (tests, CI).
UNBUNDLED_DIRS = {".azure-pipelines", ".github", "docs", "tests"}


# ---------------------------------------------------------------- helpers


def ansible_env(home: Path) -> dict[str, str]:
    """Environment of every ansible command: our config, an isolated ANSIBLE_HOME, JSON output."""
    collections = home / "collections"
    collections.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(PLAYBOOKS / "ansible.cfg"),
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_REMOTE_TEMP=str(home / "remote-tmp"),
        # Only the collections bundled in site-packages (ansible_collections), nothing from
        # ~/.ansible or /usr/share/ansible.
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        NO_COLOR="1",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def playbook_cmd(root: Path, *args: str, **extra_vars: Any) -> list[str]:
    """ansible-playbook on site.yml for HOST, render-only into ``root``."""
    variables: dict[str, Any] = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "zapfleet_apply": False,
        "zapfleet_root": str(root),
        "control_plane_admin_key": ADMIN_KEY,
    }
    variables.update(extra_vars)
    return [
        str(BIN / "ansible-playbook"),
        "-i",
        str(INVENTORY),
        str(SITE),
        "--limit",
        HOST,
        "-e",
        json.dumps(variables),
        *args,
    ]


@dataclass
class Run:
    """A finished ansible-playbook run with the JSON callback's output."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.stdout)
        except json.JSONDecodeError as exc:  # pragma: no cover - shown on failure only
            raise AssertionError(f"no JSON report:\n{self.stdout}\n{self.stderr}") from exc
        return data

    @property
    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = self.report["stats"][HOST]
        return stats

    def tasks(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(task name without its "role : " prefix, result on HOST) of every task on HOST."""
        for play in self.report["plays"]:
            for task in play["tasks"]:
                if HOST in task["hosts"]:
                    yield task["task"]["name"].split(" : ", 1)[-1], task["hosts"][HOST]

    def task(self, name: str) -> dict[str, Any]:
        results = [result for task_name, result in self.tasks() if task_name == name]
        assert len(results) == 1, f"task {name!r} ran {len(results)} times"
        return results[0]

    def changed_tasks(self) -> list[str]:
        return [name for name, result in self.tasks() if result.get("changed")]

    def failure(self) -> str:
        return (
            f"rc={self.returncode}\nstdout:\n{self.stdout[-6000:]}\nstderr:\n{self.stderr[-3000:]}"
        )


class Background:
    """A command started now and collected later; killed at teardown if never collected."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path = REPO) -> None:
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._result: Run | None = None

    def result(self) -> Run:
        if self._result is None:
            out, err = self.proc.communicate(timeout=TIMEOUT_S)
            self._result = Run(self.proc.returncode, out, err)
        return self._result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def run(cmd: list[str], env: dict[str, str]) -> Run:
    proc = subprocess.run(
        cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values]}}."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file(path: Path) -> dict[str, str]:
    pairs = [
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert all(len(pair) == 2 for pair in pairs), path
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in {path}"
    return dict(pairs)  # type: ignore[arg-type]


def sysctl_settings(text: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        key, _, value = stripped.partition("=")
        settings[key.strip()] = " ".join(value.split())
    return settings


def role_defaults(role: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
    return data


def size_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]?)", value)
    assert match, value
    return int(match[1]) * 1024 ** "_KMGT".index(match[2] or "_")


def example_vars() -> dict[str, Any]:
    group_vars = PLAYBOOKS / "inventory" / "example" / "group_vars" / "all.yml"
    data: dict[str, Any] = yaml.safe_load(group_vars.read_text())
    return data


# ---------------------------------------------------------------- fixtures


@dataclass
class Work:
    env: dict[str, str]
    lint: Background
    syntax: Background
    check_root: Path
    check: Background
    refused_root: Path
    refused_apply: Background
    refused_key: Background


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Work]:
    """Starts ansible-lint, the syntax check, check mode and the refused runs in the background."""
    home = tmp_path_factory.mktemp("ansible-home")
    env = ansible_env(home)
    lint = Background(
        [
            str(BIN / "ansible-lint"),
            "-c",
            str(PLAYBOOKS / ".ansible-lint"),
            "--offline",
            "--nocolor",
            "--profile",
            "production",
            # site.yml brings in every role; linting the directory instead would also run a
            # syntax check per role, which doubles the time and finds nothing more.
            str(SITE),
            str(PLAYBOOKS / "upgrade.yml"),
            str(PLAYBOOKS / "inventory"),
        ],
        {**env, "ANSIBLE_STDOUT_CALLBACK": "default"},
    )
    syntax = Background(
        [str(BIN / "ansible-playbook"), "-i", str(INVENTORY), str(SITE), "--syntax-check"],
        {**env, "ANSIBLE_STDOUT_CALLBACK": "default"},
    )
    check_root = tmp_path_factory.mktemp("check-root")
    check = Background(playbook_cmd(check_root, "--check", "--diff"), env)
    refused_root = tmp_path_factory.mktemp("refused-root")
    refused_apply = Background(playbook_cmd(refused_root, zapfleet_apply=True), env)
    refused_key = Background(
        playbook_cmd(
            tmp_path_factory.mktemp("admin-key-root"),
            "--tags",
            "control_plane",
            control_plane_admin_key="tooShort42",
        ),
        env,
    )
    jobs = [lint, syntax, check, refused_apply, refused_key]
    yield Work(env, lint, syntax, check_root, check, refused_root, refused_apply, refused_key)
    for job in jobs:
        job.stop()


@dataclass
class Rendered:
    root: Path
    first: Run


@pytest.fixture(scope="module")
def rendered(work: Work, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """site.yml rendered for node1 into a temporary root (render-only mode)."""
    root = tmp_path_factory.mktemp("render-root")
    # Left over from an earlier shard count of 6: shard 5 must go, a foreign file stays.
    config = root / "etc" / "zapfleet"
    config.mkdir(parents=True)
    (config / "agent-5.env").write_text("ZAPFLEET_NODE_ID=node1-5\n")
    (config / "agent-notes.env").write_text("not a shard\n")
    first = run(playbook_cmd(root), work.env)
    assert first.returncode == 0, first.failure()
    return Rendered(root, first)


@pytest.fixture(scope="module")
def second_run(rendered: Rendered, work: Work) -> Run:
    return run(playbook_cmd(rendered.root), work.env)


# ---------------------------------------------------------------- tools and inputs


def test_ansible_core_is_2_19() -> None:
    assert importlib.metadata.version("ansible-core").startswith("2.19.")


def test_collections_are_the_pinned_ones_unmodified() -> None:
    import ansible_collections

    base = Path(ansible_collections.__path__[0])
    for name, (version, manifest_sha256) in PINNED_COLLECTIONS.items():
        path = base.joinpath(*name.split("."))
        manifest_bytes = (path / "MANIFEST.json").read_bytes()
        manifest = json.loads(manifest_bytes)
        assert manifest["collection_info"]["version"] == version, name
        assert hashlib.sha256(manifest_bytes).hexdigest() == manifest_sha256, name
        files_bytes = (path / "FILES.json").read_bytes()
        assert (
            hashlib.sha256(files_bytes).hexdigest()
            == manifest["file_manifest_file"]["chksum_sha256"]
        ), name
        listed = {
            entry["name"]: entry["chksum_sha256"]
            for entry in json.loads(files_bytes)["files"]
            if entry["ftype"] == "file"
        }
        present = {
            str(file.relative_to(path))
            for file in path.rglob("*")
            if file.is_file() and "__pycache__" not in file.parts
        } - {"MANIFEST.json", "FILES.json"}
        assert present <= set(listed), f"{name}: files not in FILES.json: {present - set(listed)}"
        for rel in present:
            digest = hashlib.sha256((path / rel).read_bytes()).hexdigest()
            assert digest == listed[rel], f"{name}: {rel} was modified"
        missing = {rel for rel in set(listed) - present if rel.split("/")[0] not in UNBUNDLED_DIRS}
        # Only dotfiles at the top (.gitignore, .yamllint, ...) may be missing besides those.
        assert all(rel.startswith(".") and "/" not in rel for rel in missing), (name, missing)
        assert (path / "plugins" / "modules").is_dir(), name


def test_sysctl_file_gives_a_reason_for_every_setting() -> None:
    lines = SYSCTL_FILE.read_text().splitlines()
    settings = sysctl_settings(SYSCTL_FILE.read_text())
    for number, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[a-z0-9_.-]+ = \S.*", line), f"line {number + 1}: {line!r}"
            reason = lines[number - 1]
            assert reason.startswith("# ") and len(reason) > 20, f"no reason above {line!r}"
    for key in (
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.core.netdev_max_backlog",
        "fs.file-max",
        "net.ipv4.tcp_tw_reuse",
    ):
        assert key in settings, key
    assert int(settings["net.core.somaxconn"]) >= 4096
    assert int(settings["net.ipv4.tcp_max_syn_backlog"]) >= 4096
    low, high = map(int, settings["net.ipv4.ip_local_port_range"].split())
    # Ephemeral ports stay clear of zapfleet's listening ports (NATS, Valkey, HTTP, metrics).
    assert 9470 + 64 < low < high <= 65535
    keepalive = int(settings["net.ipv4.tcp_keepalive_time"]) + int(
        settings["net.ipv4.tcp_keepalive_intvl"]
    ) * int(settings["net.ipv4.tcp_keepalive_probes"])
    assert keepalive <= 300, "a dead WhatsApp socket must be noticed within minutes"
    assert int(settings["fs.file-max"]) >= 65536 * 16


# ---------------------------------------------------------------- the render run


def test_render_writes_the_sysctl_file_and_parses_every_setting(rendered: Rendered) -> None:
    installed = rendered.root / "etc" / "sysctl.d" / "90-zapfleet.conf"
    assert installed.read_text() == SYSCTL_FILE.read_text()
    assert oct(installed.stat().st_mode & 0o777) == "0o644"
    # ansible.posix.sysctl gets every setting of the file; render mode sets no kernel value.
    result = rendered.first.task("Apply the kernel settings")
    items = {item["item"][0]: item["item"][1] for item in result["results"]}
    assert items == sysctl_settings(SYSCTL_FILE.read_text())
    assert all(item.get("skipped") for item in result["results"])


def test_render_raises_the_open_files_limits(rendered: Rendered) -> None:
    limits = (rendered.root / "etc" / "security" / "limits.d" / "90-zapfleet.conf").read_text()
    entries = {
        tuple(line.split("#")[0].split())
        for line in limits.splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert entries == {("*", "-", "nofile", "65536"), ("root", "-", "nofile", "65536")}
    manager = unit(rendered.root / "etc" / "systemd" / "system.conf.d" / "90-zapfleet.conf")
    assert manager == {"Manager": {"DefaultLimitNOFILE": ["65536"]}}


def test_render_agent_template_unit_replaces_pm2(rendered: Rendered) -> None:
    path = rendered.root / "etc" / "systemd" / "system" / "zapfleet-agent@.service"
    service = unit(path)["Service"]
    assert service["ExecStart"] == ["/opt/zapfleet/venv/bin/zapfleet agent"]
    assert service["EnvironmentFile"] == ["/etc/zapfleet/agent-%i.env"]
    assert service["Restart"] == ["always"]
    assert int(service["RestartSec"][0]) > 0
    assert service["MemoryMax"] == [role_defaults("agent")["agent_memory_max"]]
    assert service["LimitNOFILE"] == ["65536"]
    assert int(service["TasksMax"][0]) >= 256
    assert service["User"] == ["zapfleet"]
    assert service["StateDirectory"] == ["zapfleet/agent-%i"]
    assert unit(path)["Unit"]["StartLimitIntervalSec"] == ["0"]
    assert unit(path)["Install"]["WantedBy"] == ["multi-user.target"]


def test_render_one_environment_file_per_shard(rendered: Rendered) -> None:
    config = rendered.root / "etc" / "zapfleet"
    shards = sorted(path.name for path in config.glob("agent-*.env"))
    # node1 runs two shards (group_vars); shard 5 was left over and is gone, the foreign
    # file is left alone.
    assert shards == ["agent-0.env", "agent-1.env", "agent-notes.env"]
    nats_url = "nats://192.0.2.11:4222,nats://192.0.2.12:4222,nats://192.0.2.13:4222"
    for shard in (0, 1):
        path = config / f"agent-{shard}.env"
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert env_file(path) == {
            "ZAPFLEET_NATS_URL": nats_url,
            "ZAPFLEET_NATS_REPLICAS": "3",
            "ZAPFLEET_LOG_LEVEL": "INFO",
            "ZAPFLEET_LOG_FORMAT": "json",
            "ZAPFLEET_NODE_ID": f"node1-{shard}",
            "ZAPFLEET_ENGINE": "neonize",
            "ZAPFLEET_MAX_SESSIONS": "150",
            "ZAPFLEET_DATA_DIR": f"/var/lib/zapfleet/agent-{shard}",
            "ZAPFLEET_METRICS_PORT": str(9470 + shard),
            "ZAPFLEET_LEASE_TTL_S": "10",
        }
        # what the agent makes of it: three servers, three replicas of everything
        settings = load_settings(AgentSettings, env_file(path))
        assert len(settings.nats_servers) == 3 and settings.replicas == 3


def test_render_control_plane_and_webhook_units(rendered: Rendered) -> None:
    systemd = rendered.root / "etc" / "systemd" / "system"
    for name, command in (
        ("zapfleet-control-plane.service", "control-plane"),
        ("zapfleet-webhooks.service", "webhooks"),
    ):
        service = unit(systemd / name)["Service"]
        assert service["ExecStart"] == [f"/opt/zapfleet/venv/bin/zapfleet {command}"], name
        assert service["EnvironmentFile"] == ["/etc/zapfleet/control-plane.env"], name
        assert service["Restart"] == ["always"], name
        assert service["LimitNOFILE"] == ["65536"], name
        assert "MemoryMax" in service, name
    env_path = rendered.root / "etc" / "zapfleet" / "control-plane.env"
    assert oct(env_path.stat().st_mode & 0o777) == "0o600"
    assert env_file(env_path) == {
        "ZAPFLEET_NATS_URL": "nats://192.0.2.11:4222,nats://192.0.2.12:4222,nats://192.0.2.13:4222",
        "ZAPFLEET_NATS_REPLICAS": "3",
        "ZAPFLEET_LOG_LEVEL": "INFO",
        "ZAPFLEET_LOG_FORMAT": "json",
        "ZAPFLEET_VALKEY_URL": "valkey://192.0.2.11:6379/0",
        "ZAPFLEET_ADMIN_KEY": ADMIN_KEY,
        "ZAPFLEET_HTTP_HOST": "0.0.0.0",
        "ZAPFLEET_HTTP_PORT": "8080",
        "ZAPFLEET_HTTP_WORKERS": str(example_vars()["control_plane_http_workers"]),
        "ZAPFLEET_WEBHOOKS_IN_PROCESS": "false",
    }
    settings = load_settings(ControlPlaneSettings, env_file(env_path))
    assert len(settings.nats_servers) == 3 and settings.replicas == 3


def test_render_schedules_backups_with_retention_on_the_first_control_plane(
    rendered: Rendered,
) -> None:
    """node1 is the first control-plane host: it runs `zapfleet backup` into the backup
    directory on a timer and keeps the newest N (docs/provisioning.md)."""
    systemd = rendered.root / "etc" / "systemd" / "system"
    service = unit(systemd / "zapfleet-backup.service")["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"] == [
        "/opt/zapfleet/venv/bin/zapfleet backup /var/backups/zapfleet --keep 48"
    ]
    assert service["EnvironmentFile"] == ["/etc/zapfleet/control-plane.env"]
    assert service["ReadWritePaths"] == ["/var/backups/zapfleet"]
    timer = unit(systemd / "zapfleet-backup.timer")
    assert timer["Timer"]["OnCalendar"] == ["hourly"]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert (rendered.root / "var" / "backups" / "zapfleet").is_dir()


def test_the_admin_key_never_shows_in_ansible_output(rendered: Rendered) -> None:
    assert ADMIN_KEY not in rendered.first.stdout + rendered.first.stderr


def test_render_nats_cluster_from_the_inventory(rendered: Rendered) -> None:
    config = (rendered.root / "etc" / "zapfleet" / "nats.conf").read_text()
    assert 'server_name: "node1"' in config
    assert 'listen: "0.0.0.0:4222"' in config
    assert 'http: "0.0.0.0:8222"' in config
    jetstream = re.search(r"jetstream \{(.*?)\}", config, re.S)
    assert jetstream and 'store_dir: "/var/lib/zapfleet/nats"' in jetstream[1]
    cluster = re.search(r"cluster \{(.*)\}", config, re.S)
    assert cluster, config
    assert 'listen: "0.0.0.0:6222"' in cluster[1]
    routes = re.findall(r'"(nats-route://[^"]+)"', cluster[1])
    assert routes == ["nats-route://192.0.2.12:6222", "nats-route://192.0.2.13:6222"]
    service = unit(rendered.root / "etc" / "systemd" / "system" / "zapfleet-nats.service")
    assert service["Service"]["ExecStart"] == [
        "/usr/sbin/nats-server --config /etc/zapfleet/nats.conf"
    ]
    assert service["Service"]["Restart"] == ["always"]
    assert service["Service"]["StateDirectory"] == ["zapfleet/nats"]


def test_render_valkey_memory_policy_and_persistence(rendered: Rendered) -> None:
    lines = (rendered.root / "etc" / "zapfleet" / "valkey.conf").read_text().splitlines()
    config = {
        line.split(" ", 1)[0]: line.split(" ", 1)[1]
        for line in lines
        if line.strip() and not line.startswith("#")
    }
    assert config["port"] == "6379"
    assert config["maxmemory"] == example_vars()["valkey_maxmemory"]
    assert config["maxmemory-policy"] == "allkeys-lru"
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["save"].split() == ["3600", "1", "300", "100", "60", "10000"]
    assert config["dir"] == "/var/lib/zapfleet/valkey"
    assert "requirepass" not in config
    service = unit(rendered.root / "etc" / "systemd" / "system" / "zapfleet-valkey.service")
    assert service["Service"]["ExecStart"] == [
        f"{example_vars()['valkey_server_binary']} /etc/zapfleet/valkey.conf"
    ]


# ---------------------------------------------------------------- monitoring


def metric_catalogue() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(METRICS_FILE.read_text())
    catalogue: dict[str, dict[str, Any]] = {**data["control_plane"], **data["agent"]}
    return catalogue


# Prometheus' own series and the labels every scrape adds.
PROMETHEUS_METRICS = {"up"}
SCRAPE_LABELS = {"job", "instance", "node", "node_id", "shard", "le"}


def check_promql(expr: str, catalogue: dict[str, dict[str, Any]]) -> set[str]:
    """Metric names of an expression; asserts names, label names and values are known."""
    used = set()
    for name in re.findall(r"\b(zapfleet_[a-z_]+)", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base != name:
            assert catalogue.get(base, {}).get("type") == "histogram", (name, expr)
        assert base in catalogue, (name, expr)
        used.add(base)
    for metric, matchers in re.findall(r"\b([a-z_]+)\{([^}]*)\}", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", metric)
        labels = catalogue[base]["labels"] if base in catalogue else {}
        assert base in catalogue or base in PROMETHEUS_METRICS, (metric, expr)
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
            assert label in labels or label in SCRAPE_LABELS, (metric, label, expr)
            allowed = labels.get(label)
            if allowed is not None:  # enumerated values: the expression uses only those
                values = value.split("|") if op in ("=~", "!~") else [value]
                assert set(values) <= set(allowed), (metric, label, values, expr)
    for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
        for label in (part.strip() for part in group.split(",")):
            known = SCRAPE_LABELS | {lbl for m in used for lbl in catalogue[m]["labels"]}
            assert label in known, (label, expr)
    return used


def test_metric_catalogue_is_the_contract() -> None:
    catalogue = metric_catalogue()
    assert all(name.startswith("zapfleet_") for name in catalogue)
    assert catalogue["zapfleet_agent_sessions"]["labels"]["state"] == [
        "STARTING",
        "PAIRING",
        "CONNECTED",
        "DISCONNECTED",
        "RECONNECTING",
        "FAILED",
        "LOGGED_OUT",
        "STOPPED",
    ]
    assert catalogue["zapfleet_api_cache_requests_total"]["labels"]["result"] == ["hit", "miss"]
    assert catalogue["zapfleet_webhook_dlq_depth"]["type"] == "gauge"
    # tests/test_monitoring_contract.py checks this list against what the code registers
    for name, spec in catalogue.items():
        assert spec["type"] in {"counter", "gauge", "histogram"}, name
        assert name.endswith("_total") == (spec["type"] == "counter"), name


def test_alert_rules_use_only_catalogued_metrics(rendered: Rendered) -> None:
    installed = rendered.root / "etc" / "prometheus" / "rules" / "zapfleet.rules.yml"
    assert installed.read_text() == RULES_FILE.read_text()
    catalogue = metric_catalogue()
    rules = yaml.safe_load(RULES_FILE.read_text())
    names: list[str] = []
    used: set[str] = set()
    for group in rules["groups"]:
        assert group["name"].startswith("zapfleet")
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"Zapfleet[A-Za-z]+", rule["alert"]), rule["alert"]
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
            used |= check_promql(rule["expr"], catalogue)
            names.append(rule["alert"])
    assert len(names) == len(set(names)), "duplicate alert names"
    # The alerts that matter most are there.
    for metric in (
        "zapfleet_api_requests_total",
        "zapfleet_webhook_failed_total",
        "zapfleet_webhook_dead_lettered_total",
        "zapfleet_webhook_dlq_depth",
        "zapfleet_agent_sessions",
        "zapfleet_agent_reconnects_total",
        "zapfleet_agent_events_publish_failed_total",
        "zapfleet_agent_loop_lag_seconds",
        "zapfleet_agent_open_fds",
        "zapfleet_agent_rss_bytes",
        "zapfleet_agent_capacity",
    ):
        assert metric in used, metric


def test_alert_thresholds_match_the_agent_unit(rendered: Rendered) -> None:
    rules = {
        rule["alert"]: rule["expr"]
        for group in yaml.safe_load(RULES_FILE.read_text())["groups"]
        for rule in group["rules"]
    }
    service = unit(rendered.root / "etc" / "systemd" / "system" / "zapfleet-agent@.service")
    nofile = int(service["Service"]["LimitNOFILE"][0])
    memory_max = size_bytes(service["Service"]["MemoryMax"][0])
    fds = int(re.findall(r"> (\d+)", rules["ZapfleetAgentFdsHigh"])[0])
    rss = int(re.findall(r"> (\d+)", rules["ZapfleetAgentMemoryHigh"])[0])
    assert 0.7 * nofile <= fds < nofile
    assert 0.7 * memory_max <= rss < memory_max


def test_grafana_dashboard_covers_every_metric(rendered: Rendered) -> None:
    installed = rendered.root / "var" / "lib" / "grafana" / "dashboards" / "zapfleet"
    assert (installed / "zapfleet.json").read_text() == DASHBOARD_FILE.read_text()
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    assert dashboard["uid"] == "zapfleet-overview"
    catalogue = metric_catalogue()
    used: set[str] = set()
    ids = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        for target in panel.get("targets", []):
            used |= check_promql(target["expr"].replace("$__rate_interval", "5m"), catalogue)
    assert len(ids) == len(set(ids))
    assert used == set(catalogue), set(catalogue) - used
    provider = yaml.safe_load(
        (rendered.root / "etc/grafana/provisioning/dashboards/zapfleet.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    assert rendered.root / path.lstrip("/") == installed


def test_scrape_targets_cover_every_shard_of_the_fleet(rendered: Rendered) -> None:
    file_sd = rendered.root / "etc" / "prometheus" / "file_sd"
    agents = yaml.safe_load((file_sd / "zapfleet-agent.yml").read_text())
    assert [(group["targets"], group["labels"]["node_id"]) for group in agents] == [
        (["192.0.2.11:9470"], "node1-0"),
        (["192.0.2.11:9471"], "node1-1"),
        (["192.0.2.12:9470"], "node2-0"),
        (["192.0.2.12:9471"], "node2-1"),
        (["192.0.2.13:9470"], "node3-0"),  # node3 runs three shards (host_vars)
        (["192.0.2.13:9471"], "node3-1"),
        (["192.0.2.13:9472"], "node3-2"),
    ]
    control_plane = yaml.safe_load((file_sd / "zapfleet-control-plane.yml").read_text())
    assert [group["targets"] for group in control_plane] == [
        ["192.0.2.11:8080"],
        ["192.0.2.12:8080"],
    ]


# ---------------------------------------------------------------- idempotency, check mode


def test_second_run_changes_nothing(second_run: Run) -> None:
    assert second_run.returncode == 0, second_run.failure()
    assert second_run.stats["failures"] == 0
    assert second_run.changed_tasks() == []
    assert second_run.stats["changed"] == 0
    assert second_run.stats["ok"] > 10


def test_check_mode_on_a_fresh_root_fails_nothing_and_writes_nothing(work: Work) -> None:
    result = work.check.result()
    assert result.returncode == 0, result.failure()
    assert result.stats["failures"] == 0
    assert result.stats["unreachable"] == 0
    # It would create the directories, and it wrote nothing.
    assert "Create the configuration and unit directories" in result.changed_tasks()
    assert list(work.check_root.iterdir()) == []


def test_apply_mode_refuses_a_root_prefix(work: Work) -> None:
    result = work.refused_apply.result()
    assert result.returncode != 0
    assert result.stats["failures"] == 1
    assert "refuses a root prefix" in result.stdout
    assert list(work.refused_root.iterdir()) == []


def test_control_plane_refuses_a_short_admin_key(work: Work) -> None:
    result = work.refused_key.result()
    assert result.returncode != 0
    assert result.stats["failures"] == 1
    [(name, failed)] = [(n, r) for n, r in result.tasks() if r.get("failed")]
    assert name == "Check the control plane settings", failed
    assert "tooShort42" not in result.stdout + result.stderr


# ---------------------------------------------------------------- syntax and lint


def test_syntax_check(work: Work) -> None:
    result = work.syntax.result()
    assert result.returncode == 0, result.failure()
    assert "playbook: " in result.stdout


def test_ansible_lint_production_profile_offline_is_clean(work: Work) -> None:
    result = work.lint.result()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Profile 'production' was required, and it passed." in output, output
    assert "0 failure(s), 0 warning(s)" in output, output


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_analyze_verify_accepts_the_units(rendered: Rendered, tmp_path: Path) -> None:
    # The binaries exist only on provisioned hosts: point the commands at one that exists here
    # so that verify checks the units themselves. The template is verified as instance 0.
    systemd = rendered.root / "etc" / "systemd" / "system"
    for path in [*systemd.glob("*.service"), *systemd.glob("*.timer")]:
        text = re.sub(r"^(Exec\w+)=\S+", r"\1=/bin/true", path.read_text(), flags=re.M)
        (tmp_path / path.name.replace("@.", "@0.")).write_text(text)
    units = sorted(str(path) for path in tmp_path.iterdir())
    assert len(units) == 7  # 6 services (the agent template as instance 0) + the backup timer
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
