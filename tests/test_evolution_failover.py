"""An Evolution client across a failover (issue 20, docs/evolution.md): instances created
and paired through the facade with the PyPI ``evolutionapi`` client keep working when the
agent running them is killed with -9 — connectionState is ``open`` again once the
instance runs on another node, and a message sent before and one sent after each arrive
once.
Runs on the failover cluster of tests/test_failover.py (its own nats-server, three sim
agents), with one more control plane that serves the facade."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from evolutionapi.client import EvolutionClient
from evolutionapi.models.instance import InstanceConfig
from evolutionapi.models.message import TextMessage
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from contract.protocol import Event
from node_agent.engines.sim import link
from tests.conftest import ADMIN_KEY, spawn, stop_process, wait_until_ready
from tests.helpers import unique
from tests.test_failover import (  # noqa: F401  (fixtures)
    FAILOVER_BOUND_S,
    LOG_DIR,
    Cluster,
    cluster,
    cnc,
    phone,
)
from zapfleet.devservers import free_port, wait_for_port


@pytest.fixture(scope="module")
def facade_url(cluster: Cluster) -> Iterator[str]:  # noqa: F811
    port = free_port()
    process = spawn(
        "control-plane-evolution-failover",
        ["control-plane"],
        {
            "ZAPFLEET_NATS_URL": cluster.nats_url,
            "ZAPFLEET_VALKEY_URL": cluster.valkey_url.rsplit("/", 1)[0] + "/5",
            "ZAPFLEET_RATE_LIMITS_ENABLED": "false",
            "ZAPFLEET_ADMIN_KEY": ADMIN_KEY,
            "ZAPFLEET_HTTP_PORT": str(port),
            "ZAPFLEET_DEFAULT_ENGINE": "sim",
            "ZAPFLEET_WEBHOOKS_IN_PROCESS": "false",
            "ZAPFLEET_RECONCILER": "false",  # the cluster's control planes reconcile
            "ZAPFLEET_RPC_TIMEOUT_S": "2",
            "ZAPFLEET_EVOLUTION": "1",
        },
        LOG_DIR,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, 60, process)
        wait_until_ready(f"{url}/monitoring/ready", process)
        yield url
    finally:
        stop_process(process)


async def call(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def state(client: EvolutionClient, name: str, token: str) -> str:
    answer = await call(client.instance_operations.get_connection_state, name, token)
    return str(answer["instance"]["state"])


async def wait_state(
    client: EvolutionClient, name: str, token: str, wanted: str, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    seen = ""
    while time.monotonic() < deadline:
        seen = await state(client, name, token)
        if seen == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} not {wanted} within {timeout_s} s: {seen}")


async def test_an_evolution_client_keeps_working_across_a_kill_9_of_its_agent(
    cluster: Cluster,  # noqa: F811
    cnc: NATS,  # noqa: F811
    facade_url: str,
) -> None:
    cluster.ensure_agents()
    client = EvolutionClient(facade_url, ADMIN_KEY)
    instances: dict[str, tuple[str, str]] = {}  # name -> (token, phone)
    for prefix, number in (("fa", phone(9801)), ("fb", phone(9802))):
        name = unique(prefix)
        created = await call(
            client.instances.create_instance, InstanceConfig(instanceName=name, qrcode=True)
        )
        assert (await link(cnc, created["qrcode"]["code"], number)).ok
        await wait_state(client, name, created["hash"], "open", 15)
        instances[name] = (created["hash"], number)
    (ann, (ann_token, _)), (bob, (bob_token, bob_phone)) = instances.items()
    received: list[Event] = []

    async def on_event(msg: Msg) -> None:
        event = msgspec.json.decode(msg.data, type=Event)
        if event.session_id == bob and event.type == "message.received":
            received.append(event)

    sub = await cnc.subscribe("zf.events.*.*.message.received", cb=on_event)
    try:
        async with httpx.AsyncClient(base_url=facade_url) as api:
            for name, token in ((ann, ann_token), (bob, bob_token)):
                patched = await api.patch(
                    f"/v1/sessions/{name}/settings",
                    headers={"X-API-Key": token},
                    json={"pacing": {"enabled": False}},
                )
                assert patched.status_code == 200, patched.text
            before = (await api.get(f"/v1/sessions/{ann}", headers={"X-API-Key": ann_token})).json()

        first = await call(
            client.messages.send_text, ann, TextMessage(number=bob_phone, text="before"), ann_token
        )
        assert first["status"] == "PENDING"
        await _until(lambda: any(e.data["text"] == "before" for e in received), 15)

        cluster.agents[before["node_id"]].kill()  # kill -9
        await wait_state(client, ann, ann_token, "open", FAILOVER_BOUND_S + 15)
        await wait_state(client, bob, bob_token, "open", FAILOVER_BOUND_S + 15)
        async with httpx.AsyncClient(base_url=facade_url) as api:
            after = (await api.get(f"/v1/sessions/{ann}", headers={"X-API-Key": ann_token})).json()
        assert after["node_id"] != before["node_id"]

        second = await call(
            client.messages.send_text, ann, TextMessage(number=bob_phone, text="after"), ann_token
        )
        assert second["status"] == "PENDING" and second["key"]["id"] != first["key"]["id"]
        await _until(lambda: any(e.data["text"] == "after" for e in received), 15)
        await asyncio.sleep(0.5)  # a duplicate would arrive right behind
        texts = sorted(e.data["text"] for e in received)
        assert texts == ["after", "before"]
    finally:
        await sub.unsubscribe()
        cluster.ensure_agents()


async def _until(predicate: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
