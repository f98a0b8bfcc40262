"""Fixtures of the reliability suite: fleets of their own (tests/reliability/harness.py)
that drills may break, and the numbers each drill reports for docs/security.md."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.reliability.harness import Fleet
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
