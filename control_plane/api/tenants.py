"""/v1/tenants: tenants and their API keys (admin key only)."""

from __future__ import annotations

import time

from litestar import Controller, delete, get, post
from litestar.di import Provide

from control_plane.auth import Principal, require_admin
from control_plane.models import (
    CreateKey,
    CreateTenant,
    KeyList,
    KeyView,
    NewKey,
    RotateKey,
    TenantList,
    TenantView,
)
from control_plane.problems import ProblemError
from control_plane.services import Services
from control_plane.tenants import ApiKeyRecord, TenantExists, TenantRecord, new_key

ADMIN_OPS = {"rate": "sessions"}
ADMIN_QUERIES = {"rate": "queries"}


def key_view(record: ApiKeyRecord) -> KeyView:
    return KeyView(
        key_id=record.key_id,
        tenant=record.tenant,
        label=record.label,
        created_at=record.created_at,
        revoked_at=record.revoked_at,
        expires_at=record.expires_at,
    )


async def tenant_or_404(services: Services, tenant_id: str) -> TenantRecord:
    tenant = await services.tenants.get_tenant(tenant_id)
    if tenant is None:
        raise ProblemError(404, "tenant_not_found", f"no tenant {tenant_id!r}")
    return tenant


async def key_or_404(services: Services, tenant_id: str, key_id: str) -> ApiKeyRecord:
    record = await services.tenants.get_key(key_id)
    if record is None or record.tenant != tenant_id:
        raise ProblemError(404, "key_not_found", f"tenant {tenant_id!r} has no key {key_id!r}")
    return record


async def issue_key(
    services: Services, tenant_id: str, label: str | None, replaces: str | None = None
) -> NewKey:
    key, record = new_key(tenant_id, label)
    await services.tenants.put_key(record)
    return NewKey(
        key=key,
        key_id=record.key_id,
        tenant=tenant_id,
        label=label,
        created_at=record.created_at,
        replaces=replaces,
    )


class TenantController(Controller):
    path = "/v1/tenants"
    tags = ["tenants (admin)"]
    dependencies = {"principal": Provide(require_admin)}

    @post("/", status_code=201, opt=ADMIN_OPS, summary="Create a tenant")
    async def create(
        self, data: CreateTenant, services: Services, principal: Principal
    ) -> TenantView:
        record = TenantRecord(
            tenant_id=data.tenant_id, name=data.name or data.tenant_id, created_at=time.time()
        )
        try:
            await services.tenants.create_tenant(record)
        except TenantExists:
            raise ProblemError(
                409, "tenant_exists", f"a tenant {data.tenant_id!r} already exists"
            ) from None
        return TenantView(
            tenant_id=record.tenant_id,
            name=record.name,
            created_at=record.created_at,
            disabled=record.disabled,
        )

    @get("/", opt=ADMIN_QUERIES, summary="Every tenant, with its session and key counts")
    async def list_tenants(self, services: Services, principal: Principal) -> TenantList:
        keys = await services.tenants.list_keys()
        now = time.time()
        views = []
        for tenant in await services.tenants.list_tenants():
            views.append(
                TenantView(
                    tenant_id=tenant.tenant_id,
                    name=tenant.name,
                    created_at=tenant.created_at,
                    disabled=tenant.disabled,
                    sessions=len(services.index.records(tenant.tenant_id)),
                    keys=sum(1 for k in keys if k.tenant == tenant.tenant_id and k.usable(now)),
                )
            )
        return TenantList(tenants=views)

    @get("/{tenant_id:str}", opt=ADMIN_QUERIES, summary="One tenant")
    async def read(self, tenant_id: str, services: Services, principal: Principal) -> TenantView:
        tenant = await tenant_or_404(services, tenant_id)
        now = time.time()
        keys = await services.tenants.list_keys(tenant_id)
        return TenantView(
            tenant_id=tenant.tenant_id,
            name=tenant.name,
            created_at=tenant.created_at,
            disabled=tenant.disabled,
            sessions=len(services.index.records(tenant_id)),
            keys=sum(1 for k in keys if k.usable(now)),
        )

    @delete(
        "/{tenant_id:str}",
        opt=ADMIN_OPS,
        summary="Delete a tenant without sessions; its keys are revoked",
    )
    async def remove(self, tenant_id: str, services: Services, principal: Principal) -> None:
        await tenant_or_404(services, tenant_id)
        sessions = services.index.records(tenant_id)
        if sessions:
            raise ProblemError(
                409,
                "tenant_has_sessions",
                f"tenant {tenant_id!r} still has {len(sessions)} sessions; delete them first",
            )
        now = time.time()
        for record in await services.tenants.list_keys(tenant_id):
            if record.revoked_at is None:
                record.revoked_at = now
                await services.tenants.put_key(record)
        await services.tenants.delete_tenant(tenant_id)
        services.auth.forget(tenant=tenant_id)

    @post(
        "/{tenant_id:str}/keys",
        status_code=201,
        opt=ADMIN_OPS,
        summary="Create an API key (shown once, in this answer)",
    )
    async def create_key(
        self, tenant_id: str, data: CreateKey, services: Services, principal: Principal
    ) -> NewKey:
        await tenant_or_404(services, tenant_id)
        return await issue_key(services, tenant_id, data.label)

    @get("/{tenant_id:str}/keys", opt=ADMIN_QUERIES, summary="The tenant's keys (never secrets)")
    async def list_keys(self, tenant_id: str, services: Services, principal: Principal) -> KeyList:
        await tenant_or_404(services, tenant_id)
        keys = await services.tenants.list_keys(tenant_id)
        return KeyList(keys=[key_view(k) for k in keys])

    @delete("/{tenant_id:str}/keys/{key_id:str}", opt=ADMIN_OPS, summary="Revoke a key")
    async def revoke_key(
        self, tenant_id: str, key_id: str, services: Services, principal: Principal
    ) -> None:
        record = await key_or_404(services, tenant_id, key_id)
        if record.revoked_at is None:
            record.revoked_at = time.time()
            await services.tenants.put_key(record)
        services.auth.forget(key_id=key_id)

    @post(
        "/{tenant_id:str}/keys/{key_id:str}/rotate",
        status_code=201,
        opt=ADMIN_OPS,
        summary="Replace a key: a new key now, the old one revoked (after grace_s)",
    )
    async def rotate_key(
        self,
        tenant_id: str,
        key_id: str,
        data: RotateKey,
        services: Services,
        principal: Principal,
    ) -> NewKey:
        old = await key_or_404(services, tenant_id, key_id)
        if not old.usable(time.time()):
            raise ProblemError(409, "key_revoked", f"key {key_id!r} is already revoked")
        fresh = await issue_key(
            services, tenant_id, data.label if data.label is not None else old.label, key_id
        )
        if data.grace_s > 0:
            old.expires_at = time.time() + data.grace_s
        else:
            old.revoked_at = time.time()
        await services.tenants.put_key(old)
        services.auth.forget(key_id=key_id)
        return fresh
