"""The Kubernetes manifests (deploy/kubernetes, docs/kubernetes.md), checked offline.

Each overlay is rendered with ``kubectl kustomize`` (no cluster involved), every rendered
object is validated against the Kubernetes API schemas (``kubernetes-validate``, strict:
unknown fields are errors), and the environment each container gets is exactly settings
its process accepts: every ``ZAPFLEET_*`` name is a field of that process's settings
struct, and loading the settings from the rendered values (a Secret's keys filled with
stand-ins) passes the same validation as at start.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import msgspec
import pytest
import yaml

from control_plane.settings import ControlPlaneSettings
from node_agent.settings import AgentSettings
from zapfleet._env import PREFIX, load_settings

ROOT = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")
K8S_VERSION = "1.30.0"
SETTINGS: dict[str, type[msgspec.Struct]] = {
    "control-plane": ControlPlaneSettings,
    "webhooks": ControlPlaneSettings,
    "agent": AgentSettings,
}
# what the operator puts into the Secret `zapfleet-secrets` (docs/kubernetes.md)
SECRET_STANDINS = {
    "ZAPFLEET_ADMIN_KEY": "x" * 32,
    "ZAPFLEET_VALKEY_URL": "valkey://valkey:6379/0",
}


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render the manifests (./dev test installs it)"
    done = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                yield obj["metadata"]["name"], container


def environment(
    objects: list[dict[str, Any]], container: dict[str, Any]
) -> tuple[dict[str, str], set[str]]:
    """(values, names) of a container's environment as the kubelet would build it; a
    Secret referenced but not rendered contributes the documented stand-ins."""
    config_maps = by_kind(objects, "ConfigMap")
    secrets = by_kind(objects, "Secret")
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            values.update(config_maps[source["configMapRef"]["name"]]["data"])
        else:
            name = source["secretRef"]["name"]
            if name in secrets:
                values.update({k: "stand-in" for k in secrets[name]["data"]})
            else:
                values.update(SECRET_STANDINS)
    for item in container.get("env", []):
        ref = item.get("valueFrom", {})
        if "value" in item:
            values[item["name"]] = item["value"]
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            values[item["name"]] = config_maps[key["name"]]["data"][key["key"]]
        elif "fieldRef" in ref:
            assert ref["fieldRef"]["fieldPath"] == "metadata.name"
            values[item["name"]] = "zapfleet-agent-0"
    if "ZAPFLEET_ADMIN_KEY" in values:  # a generated secret's value is base64 of anything
        values.update(SECRET_STANDINS)
    return values, set(values)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_kubernetes(overlay: str) -> None:
    objects = render(overlay)
    kinds = {o["kind"] for o in objects}
    assert {
        "Namespace",
        "Deployment",
        "StatefulSet",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
    } <= kinds
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_container_gets_exactly_settings_its_process_accepts(overlay: str) -> None:
    objects = render(overlay)
    seen = set()
    for workload, container in containers(objects):
        [command] = container["args"]
        settings_type = SETTINGS[command]
        seen.add(command)
        values, names = environment(objects, container)
        accepted = {PREFIX + f.name.upper() for f in msgspec.structs.fields(settings_type)}
        unknown = {n for n in names if n.startswith(PREFIX)} - accepted
        assert not unknown, f"{workload}: {sorted(unknown)} are not {settings_type.__name__}"
        settings = load_settings(settings_type, env=values)  # validates as at start
        if isinstance(settings, AgentSettings):
            assert settings.node_id == "zapfleet-agent-0"
            assert settings.metrics_host == "0.0.0.0"
        else:
            assert isinstance(settings, ControlPlaneSettings)
            assert settings.http_host == "0.0.0.0"
            assert not settings.webhooks_in_process  # the dispatchers are their own pods
    assert seen == set(SETTINGS)


def test_production_runs_replicated_nats_and_survives_losing_one_of_anything() -> None:
    objects = render("production")
    nats_urls = by_kind(objects, "ConfigMap")
    [url] = [c["data"]["ZAPFLEET_NATS_URL"] for n, c in nats_urls.items() if "nats" in n]
    assert len(url.split(",")) == 3  # every server: any one may be gone
    budgets = by_kind(objects, "PodDisruptionBudget")
    assert set(budgets) == {"zapfleet-control-plane", "zapfleet-webhooks", "zapfleet-agent"}
    assert budgets["zapfleet-agent"]["spec"]["maxUnavailable"] == 1
    hpa = by_kind(objects, "HorizontalPodAutoscaler")["zapfleet-control-plane"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    # no Secret in the repository: the operator creates it (docs/kubernetes.md)
    assert not by_kind(objects, "Secret")


def test_agents_keep_their_node_id_and_device_stores_and_have_time_to_hand_over() -> None:
    objects = render("production")
    agents = by_kind(objects, "StatefulSet")["zapfleet-agent"]
    pod = agents["spec"]["template"]["spec"]
    [container] = pod["containers"]
    node_id = next(e for e in container["env"] if e["name"] == "ZAPFLEET_NODE_ID")
    assert node_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    [claim] = agents["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config = by_kind(objects, "ConfigMap")
    [agent_config] = [c["data"] for n, c in config.items() if n.startswith("zapfleet-agent")]
    assert mounts[claim["metadata"]["name"]] == agent_config["ZAPFLEET_DATA_DIR"]
    # stopping sessions in order takes well under a minute for 150 (docs/failover.md)
    assert pod["terminationGracePeriodSeconds"] >= 60


def test_probes_point_at_endpoints_the_control_plane_serves() -> None:
    from litestar.handlers import HTTPRouteHandler

    from control_plane.api.monitoring import MonitoringController

    prefix = MonitoringController.path.rstrip("/")
    paths = {
        prefix + path
        for handler in vars(MonitoringController).values()
        if isinstance(handler, HTTPRouteHandler)
        for path in handler.paths
    }
    objects = render("production")
    deployment = by_kind(objects, "Deployment")["zapfleet-control-plane"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    probes = {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")}
    assert probes == {"/monitoring/ready", "/monitoring/health"}
    assert probes <= paths


def test_the_nats_values_ask_for_a_three_server_jetstream_cluster() -> None:
    values = yaml.safe_load((ROOT / "nats-values.yaml").read_text())
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["jetstream"]["fileStore"]["pvc"]["enabled"] is True
