"""/v1/webhooks: tenant and global webhook configuration, and the dead letters.

A tenant key manages its own tenant. The admin key acts for the tenant named by the
``X-Tenant-Id`` header (``default`` without it), manages the global webhook, and may list,
redrive or purge the dead letters of every tenant at once with ``?all_tenants=true``.
"""

from __future__ import annotations

import hmac
import time
from typing import Annotated, Literal

import msgspec
from litestar import Controller, delete, get, post, put
from litestar.di import Provide
from litestar.params import Parameter, QueryParameter

from contract.protocol import Event
from control_plane.auth import Principal, authenticate
from control_plane.problems import ProblemError
from control_plane.services import Services
from control_plane.webhooks.backlog import backlog_depths, backlog_key
from control_plane.webhooks.config import MAX_URLS, WebhookConfig, validate_event_patterns
from control_plane.webhooks.deadletters import DeadLetter, DeadLetterStore
from control_plane.webhooks.http import parse_target
from control_plane.webhooks.signing import STANDARD, Scheme, new_secret, standard_key
from zapfleet.ssrf import AddressPolicy, UnsafeURLError, check_url, redact_url

AllTenants = Annotated[
    bool,
    QueryParameter(name="all_tenants", description="admin only: the dead letters of every tenant"),
]


WebhookURL = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
MAX_SEQ = 2**63 - 1


class WebhookConfigIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    urls: Annotated[list[WebhookURL], msgspec.Meta(min_length=1, max_length=MAX_URLS)]
    events: (
        Annotated[
            list[str],
            msgspec.Meta(
                description="event types or families ('message.*'); omitted or null = all",
                examples=[["message.received", "session.*"]],
            ),
        ]
        | None
    ) = None
    secret: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=16,
                max_length=256,
                description="HMAC secret; omitted: the current one is kept, or one is made. "
                "For the standard scheme: 'whsec_' + standard base64 of 24-64 bytes",
            ),
        ]
        | None
    ) = None
    enabled: bool = True
    scheme: (
        Annotated[
            Scheme,
            msgspec.Meta(
                description="signature scheme: 'standard' (Standard Webhooks) or "
                "'zapfleet-v1' (the old one); omitted: the current config's, 'standard' "
                "for a new one"
            ),
        ]
        | None
    ) = None


class WebhookConfigView(msgspec.Struct, kw_only=True, omit_defaults=True):
    scope: str
    urls: list[str]
    events: list[str] | None = None
    enabled: bool = True
    has_secret: bool = False
    secret: str | None = None
    """Only in the answer to the PUT that set or generated it."""
    source: Literal["kv", "settings"]
    updated_at: float = 0.0
    scheme: str  # always shown (omit_defaults would hide the default)
    previous_secret_until: float | None = None
    """While a replaced secret still signs (a second signature): until when."""


class WebhookEntry(msgspec.Struct, kw_only=True):
    scope: str
    """``session:<id>``, ``tenant:<id>`` or ``global``."""
    url: str
    events: list[str] | None = None
    enabled: bool = True
    has_secret: bool = False
    scheme: str = STANDARD
    backlog: int = 0
    """Deliveries waiting for this URL after a failure (its backlog; while it is not
    empty, new events queue behind it and only its oldest is tried, with backoff)."""


class WebhookList(msgspec.Struct, kw_only=True):
    webhooks: list[WebhookEntry]


class DeadLetterView(msgspec.Struct, kw_only=True):
    seq: int
    tenant: str
    url: str
    attempts: int
    error: str
    failed_at: float
    event: Event
    reason: str = "attempts_exhausted"
    """attempts_exhausted, refused (SSRF guard) or backlog_full."""


class DeadLetterPage(msgspec.Struct, kw_only=True):
    dead_letters: list[DeadLetterView]
    remaining: int
    next_after: int | None


class RedriveResult(msgspec.Struct, kw_only=True):
    redriven: int
    remaining: int = 0


class PurgeResult(msgspec.Struct, kw_only=True):
    purged: int


def scope_of(principal: Principal, all_tenants: bool = False) -> str | None:
    """The tenant a request acts on (None: every tenant, admin only)."""
    if not all_tenants:
        return principal.tenant
    if not principal.is_admin:
        raise ProblemError(403, "forbidden", "only the admin key may act on every tenant")
    return None


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise ProblemError(403, "forbidden", "the global webhook is managed with the admin key")


async def ensure_safe_url(services: Services, url: str) -> None:
    """422 ``unsafe_webhook_url`` unless ``url`` passes the SSRF guard."""
    settings = services.settings
    policy = AddressPolicy.from_settings(
        settings.allow_private_targets, settings.webhook_allowed_networks
    )
    try:
        parse_target(url, "zapfleet")  # what the dispatcher will send to, spelled out
        await check_url(url, policy)
    except UnsafeURLError as exc:
        raise ProblemError(422, "unsafe_webhook_url", str(exc)) from None


def ensure_event_patterns(patterns: list[str] | None) -> list[str] | None:
    try:
        return validate_event_patterns(patterns)
    except ValueError as exc:
        raise ProblemError(422, "invalid_event_type", str(exc)) from None


async def checked_config(
    services: Services, data: WebhookConfigIn, current: WebhookConfig | None
) -> tuple[WebhookConfig, str | None]:
    """The config to store, and the secret to show once (set or generated now)."""
    events = ensure_event_patterns(data.events)
    for url in data.urls:
        await ensure_safe_url(services, url)
    # a config stored before schemes existed keeps the old one until a PUT names another
    scheme = data.scheme or (current.signing_scheme if current else STANDARD)
    ensure_secret_fits(scheme, data.secret)
    shown = data.secret
    secret = data.secret or (current.secret if current else None)
    if secret is not None and scheme == STANDARD and standard_key(secret) is None:
        secret = None  # switching an old-style secret to the standard scheme: a new one
    if secret is None:
        secret = shown = new_secret()
    config = WebhookConfig(
        urls=list(data.urls), events=events, secret=secret, enabled=data.enabled, scheme=scheme
    )
    if current is not None and current.secret and not hmac.compare_digest(current.secret, secret):
        # rotation: the replaced secret signs too for the grace period
        config.previous_secret = current.secret
        config.previous_secret_until = time.time() + services.settings.webhook_secret_grace_s
    elif current is not None and current.previous_secret_until > time.time():
        config.previous_secret = current.previous_secret
        config.previous_secret_until = current.previous_secret_until
    return config, shown


def ensure_secret_fits(scheme: str, secret: str | None) -> None:
    """422 ``invalid_webhook_secret`` for a standard-scheme secret that receivers'
    Standard Webhooks libraries could not load."""
    if secret is None or scheme != STANDARD:
        return
    key = standard_key(secret)
    if key is None or not 24 <= len(key) <= 64:
        raise ProblemError(
            422,
            "invalid_webhook_secret",
            "a secret of the standard scheme is 'whsec_' followed by 24 to 64 random bytes "
            "in standard base64 (with padding); omit it to have one generated, or choose "
            "the scheme 'zapfleet-v1' for a free-form secret",
        )


def config_view(
    scope: str,
    config: WebhookConfig,
    shown_secret: str | None = None,
    source: Literal["kv", "settings"] = "kv",
) -> WebhookConfigView:
    return WebhookConfigView(
        scope=scope,
        urls=config.urls,
        events=config.events,
        enabled=config.enabled,
        has_secret=bool(config.secret),
        secret=shown_secret,
        source=source,
        updated_at=config.updated_at,
        scheme=config.signing_scheme,
        previous_secret_until=(
            config.previous_secret_until
            if config.previous_secret and config.previous_secret_until > time.time()
            else None
        ),
    )


def letter_view(seq: int, letter: DeadLetter) -> DeadLetterView:
    return DeadLetterView(
        seq=seq,
        tenant=letter.event.tenant,
        url=redact_url(letter.url),
        attempts=letter.attempts,
        error=letter.error,
        failed_at=letter.failed_at,
        event=letter.event,
        reason=letter.reason,
    )


def dead_letters(services: Services) -> DeadLetterStore:
    return DeadLetterStore(services.nc, services.js)


def valid_seq(seq: int) -> int:
    if not 1 <= seq <= MAX_SEQ:
        raise no_dead_letter(seq)
    return seq


def no_dead_letter(seq: int) -> ProblemError:
    return ProblemError(404, "dead_letter_not_found", f"no dead letter with sequence {seq}")


class WebhookController(Controller):
    path = "/v1/webhooks"
    tags = ["webhooks"]
    dependencies = {"principal": Provide(authenticate)}

    @get("/", summary="Every webhook destination the caller's events may go to")
    async def overview(self, services: Services, principal: Principal) -> WebhookList:
        tenant = principal.tenant
        depths = await backlog_depths(services.js)

        def entry(scope: str, url: str, config: WebhookConfig) -> WebhookEntry:
            return WebhookEntry(
                scope=scope,
                url=redact_url(url),
                events=config.events,
                enabled=config.enabled,
                has_secret=bool(config.secret),
                scheme=config.signing_scheme,
                backlog=depths.get(backlog_key(url), 0),
            )

        entries = [
            entry(
                f"session:{record.spec.session_id}",
                record.webhook_url,
                WebhookConfig(
                    urls=[record.webhook_url],
                    events=record.webhook_events,
                    secret=record.webhook_secret,
                    scheme=record.webhook_scheme,
                ),
            )
            for record in services.index.records(tenant)
            if record.webhook_url
        ]
        entries.sort(key=lambda entry: entry.scope)
        config = await services.webhooks.get_tenant(tenant)
        if config is not None:
            entries += [entry(f"tenant:{tenant}", url, config) for url in config.urls]
        if principal.is_admin:
            stored = await services.webhooks.get_global()
            settings = services.settings
            global_config = stored or WebhookConfig(
                urls=settings.webhook_urls,
                events=settings.webhook_events,
                secret=settings.webhook_secret,
                scheme=settings.webhook_scheme,
            )
            entries += [entry("global", url, global_config) for url in global_config.urls]
        return WebhookList(webhooks=entries)

    # -- tenant config -----------------------------------------------------------------

    @get("/config", summary="The tenant's webhook configuration")
    async def get_config(self, services: Services, principal: Principal) -> WebhookConfigView:
        scope = principal.tenant
        config = await services.webhooks.get_tenant(scope)
        if config is None:
            raise ProblemError(404, "webhook_not_configured", f"tenant {scope!r} has no webhook")
        return config_view(f"tenant:{scope}", config)

    @put(
        "/config",
        summary="Set the tenant's webhook: URL(s), event filter, secret (applies at once)",
        description=(
            "URLs are checked against SSRF (no loopback, private, link-local or multicast "
            "targets unless the operator allows them). Without a secret the current one "
            "is kept, or a new one is generated and shown once in the answer."
        ),
    )
    async def put_config(
        self, data: WebhookConfigIn, services: Services, principal: Principal
    ) -> WebhookConfigView:
        scope = principal.tenant
        current = await services.webhooks.get_tenant(scope)
        config, shown = await checked_config(services, data, current)
        await services.webhooks.put_tenant(scope, config)
        return config_view(f"tenant:{scope}", config, shown)

    @delete("/config", status_code=204, summary="Remove the tenant's webhook")
    async def delete_config(self, services: Services, principal: Principal) -> None:
        scope = principal.tenant
        if not await services.webhooks.delete_tenant(scope):
            raise ProblemError(404, "webhook_not_configured", f"tenant {scope!r} has no webhook")

    # -- global config (admin) ---------------------------------------------------------

    @get("/global", summary="The global webhook (admin): KV override, else settings")
    async def get_global(self, services: Services, principal: Principal) -> WebhookConfigView:
        require_admin(principal)
        config = await services.webhooks.get_global()
        if config is not None:
            return config_view("global", config)
        settings = services.settings
        if settings.webhook_urls:
            from_settings = WebhookConfig(
                urls=settings.webhook_urls,
                events=settings.webhook_events,
                secret=settings.webhook_secret,
                scheme=settings.webhook_scheme,
            )
            return config_view("global", from_settings, source="settings")
        raise ProblemError(404, "webhook_not_configured", "no global webhook is configured")

    @put("/global", summary="Set the global webhook (admin); overrides the settings at once")
    async def put_global(
        self, data: WebhookConfigIn, services: Services, principal: Principal
    ) -> WebhookConfigView:
        require_admin(principal)
        current = await services.webhooks.get_global()
        config, shown = await checked_config(services, data, current)
        await services.webhooks.put_global(config)
        return config_view("global", config, shown)

    @delete("/global", status_code=204, summary="Remove the global override (admin)")
    async def delete_global(self, services: Services, principal: Principal) -> None:
        require_admin(principal)
        if not await services.webhooks.delete_global():
            raise ProblemError(404, "webhook_not_configured", "no global override is stored")

    # -- dead letters ------------------------------------------------------------------

    @get("/dead-letters", summary="Deliveries that exhausted their attempts, oldest first")
    async def list_dead_letters(
        self,
        services: Services,
        principal: Principal,
        all_tenants: AllTenants = False,
        after: Annotated[int, Parameter(ge=0, le=MAX_SEQ, description="sequence cursor")] = 0,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> DeadLetterPage:
        scope = scope_of(principal, all_tenants)
        page, remaining = await dead_letters(services).page(scope, after, limit)
        views = [letter_view(stored.seq, letter) for stored, letter in page]
        return DeadLetterPage(
            dead_letters=views,
            remaining=remaining,
            next_after=views[-1].seq if views and remaining else None,
        )

    @get("/dead-letters/{seq:int}", summary="One dead letter")
    async def get_dead_letter(
        self, seq: int, services: Services, principal: Principal, all_tenants: AllTenants = False
    ) -> DeadLetterView:
        letter = await dead_letters(services).get(scope_of(principal, all_tenants), valid_seq(seq))
        if letter is None:
            raise no_dead_letter(seq)
        return letter_view(seq, letter)

    @post(
        "/dead-letters/{seq:int}/redrive",
        status_code=202,
        summary="Deliver a dead letter again (fresh attempts); it leaves the dead letters",
    )
    async def redrive_one(
        self, seq: int, services: Services, principal: Principal, all_tenants: AllTenants = False
    ) -> RedriveResult:
        scope = scope_of(principal, all_tenants)
        letter = await dead_letters(services).redrive(scope, valid_seq(seq))
        if letter is None:
            raise no_dead_letter(seq)
        return RedriveResult(redriven=1)

    @post(
        "/dead-letters/redrive",
        status_code=202,
        summary="Redrive every dead letter (up to 10,000 per call; 'remaining' says if more)",
    )
    async def redrive_all(
        self, services: Services, principal: Principal, all_tenants: AllTenants = False
    ) -> RedriveResult:
        scope = scope_of(principal, all_tenants)
        redriven, remaining = await dead_letters(services).redrive_all(scope)
        return RedriveResult(redriven=redriven, remaining=remaining)

    @delete("/dead-letters/{seq:int}", status_code=204, summary="Drop one dead letter for good")
    async def delete_dead_letter(
        self, seq: int, services: Services, principal: Principal, all_tenants: AllTenants = False
    ) -> None:
        scope = scope_of(principal, all_tenants)
        if not await dead_letters(services).delete(scope, valid_seq(seq)):
            raise no_dead_letter(seq)

    @delete("/dead-letters", status_code=200, summary="Purge: drop every dead letter for good")
    async def purge(
        self, services: Services, principal: Principal, all_tenants: AllTenants = False
    ) -> PurgeResult:
        scope = scope_of(principal, all_tenants)
        return PurgeResult(purged=await dead_letters(services).purge(scope))


__all__ = ["WebhookController"]
