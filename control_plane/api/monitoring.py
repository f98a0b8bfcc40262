"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

from litestar import Controller, MediaType, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from control_plane.models import Health
from control_plane.services import Services


class MonitoringController(Controller):
    path = "/"
    tags = ["monitoring"]

    @get("/monitoring/health", summary="Liveness: the process serves requests")
    async def health(self) -> Health:
        return Health(status="ok")

    @get("/monitoring/ready", summary="Readiness: NATS and Valkey reachable")
    async def ready(self, services: Services) -> Response[Health]:
        checks = {"nats": "ok" if services.nc.is_connected else "disconnected"}
        try:
            await services.valkey.ping()
            checks["valkey"] = "ok"
        except Exception as exc:
            checks["valkey"] = f"error: {type(exc).__name__}"
        healthy = all(v == "ok" for v in checks.values())
        return Response(
            Health(status="ok" if healthy else "degraded", checks=checks),
            status_code=200 if healthy else 503,
        )

    @get("/metrics", media_type=MediaType.TEXT, summary="Prometheus metrics")
    async def metrics(self) -> Response[bytes]:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
