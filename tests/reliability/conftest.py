"""Fixtures of the reliability suite: fleets of their own (tests/reliability/harness.py)
that drills may break, and the numbers each drill reports for docs/security.md."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.reliability.harness import NO_PACING, Fleet
from tests.reliability.report import record_result

FleetFactory = Callable[..., Fleet]


@pytest.fixture
async def new_fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FleetFactory]:
    """``new_fleet(name, **control_plane_env)``: an unstarted Fleet, stopped at teardown."""
    fleets: list[Fleet] = []

    def make(name: str, agent_extra: dict[str, str] | None = None, **cp_env: str) -> Fleet:
        fleet = Fleet(
            name=name,
            root=tmp_path_factory.mktemp(name),
            cp_env=cp_env,
            agent_extra=agent_extra or {},
        )
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


@pytest.fixture
def report() -> Callable[..., None]:
    """``report(drill, **numbers)``: print a drill's numbers and keep them in
    test-artifacts/reliability.json (docs/security.md quotes them)."""

    def save(drill: str, **numbers: Any) -> None:
        record_result(drill, numbers)

    return save


@dataclass
class Tenant:
    tenant_id: str
    key: str
    session_id: str
    phone: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}


@dataclass
class Catalog:
    """A fleet for the bad-input catalog: DEBUG logs, small body and media limits, two
    tenants with a key and one connected session each."""

    fleet: Fleet
    acme: Tenant
    globex: Tenant

    def client(self, tenant: Tenant | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = tenant.headers if tenant else self.fleet.admin_headers
        return httpx.AsyncClient(
            base_url=self.fleet.base_url, headers=headers, timeout=15, **kwargs
        )


MAX_BODY = 65536
MAX_MEDIA = 4096


@pytest.fixture(scope="session")
async def catalog(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Catalog]:
    fleet = Fleet(
        name="catalog",
        root=tmp_path_factory.mktemp("catalog"),
        cp_env={
            "ZAPFLEET_LOG_LEVEL": "DEBUG",
            "ZAPFLEET_MAX_BODY_BYTES": str(MAX_BODY),
            "ZAPFLEET_MAX_MEDIA_BYTES": str(MAX_MEDIA),
        },
        agent_extra={"ZAPFLEET_LOG_LEVEL": "DEBUG", "ZAPFLEET_MAX_MEDIA_BYTES": str(MAX_MEDIA)},
    )
    try:
        await fleet.start()
        nc = await fleet.nats_client()
        tenants = []
        async with fleet.admin() as admin:
            for name, phone in (("acme", "15550700001"), ("globex", "15550700002")):
                assert (await admin.post("/v1/tenants", json={"tenant_id": name})).is_success
                key = (await admin.post(f"/v1/tenants/{name}/keys", json={})).json()["key"]
                tenant = Tenant(name, key, f"{name}-s1", phone)
                async with httpx.AsyncClient(
                    base_url=fleet.base_url, headers=tenant.headers, timeout=15
                ) as api:
                    await fleet.connected_session(
                        api, nc, tenant.session_id, phone, pacing=NO_PACING
                    )
                tenants.append(tenant)
        await nc.close()
        yield Catalog(fleet, *tenants)
    finally:
        fleet.stop()
