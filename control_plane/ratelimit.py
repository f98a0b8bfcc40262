"""Rate limits: GCRA in Valkey, one round trip per request (docs/api.md).

Every /v1 request belongs to one operation class (``messages``, ``sessions``, ``queries``)
and to ``global``; both limits are checked by one Lua script, keyed by API key id +
client IP + class. GCRA (the generic cell rate algorithm) keeps one number per key, the
theoretical arrival time, so a limit of N per period allows a burst of N and then one
request every period/N. A refused request does not consume anything.

Answers carry ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` (seconds
until the quota is full again) and ``RateLimit-Policy`` of the class closest to its limit;
a refusal is 429 problem+json with ``Retry-After``.

While Valkey is unreachable the same limits are enforced per worker process in memory
(:class:`control_plane.valkey_guard.LocalGcra`, see that module for the whole policy).
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any

from litestar import Request
from litestar.types import Message, Scope
from prometheus_client import Counter

from control_plane.problems import ProblemError
from control_plane.resp import HotClient
from control_plane.settings import ControlPlaneSettings
from control_plane.valkey_guard import LocalGcra, ValkeyGuard

CLASSES = ("messages", "sessions", "queries")
SCOPE_KEY = "zf_rate"

REFUSED = Counter(
    "zapfleet_api_rate_limited_total", "Requests refused by a rate limit", ["rate_class"]
)

# KEYS: one per limit, then keys to read when allowed; ARGV: n_limits, then limit_1,
# period_ms_1, limit_2, period_ms_2, ...
# Returns {allowed (0/1), index of the reported limit (1-based), remaining, retry_ms,
# reset_ms, values of the read keys...}: a cached read shares the round trip of its limit.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local new_tats = {}
local deny_i, deny_retry = 0, 0
for i = 1, n do
  local limit = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local step = period / limit
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local new_tat = tat + step
  local allow_at = new_tat - period
  if allow_at > now and allow_at - now > deny_retry then
    deny_i, deny_retry = i, allow_at - now
  end
  new_tats[i] = new_tat
end
if deny_i > 0 then
  local reset = tonumber(redis.call('GET', KEYS[deny_i])) - now
  return {0, deny_i, 0, math.ceil(deny_retry), math.ceil(reset)}
end
local best_i, best_remaining, best_reset = 1, nil, 0
for i = 1, n do
  local limit = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local step = period / limit
  local ttl = math.ceil(new_tats[i] - now)
  redis.call('SET', KEYS[i], string.format('%.3f', new_tats[i]), 'PX', ttl + 1000)
  local remaining = math.floor((period - (new_tats[i] - now)) / step)
  if best_remaining == nil or remaining < best_remaining then
    best_i, best_remaining, best_reset = i, remaining, ttl
  end
end
local result = {1, best_i, best_remaining, 0, best_reset}
for i = n + 1, #KEYS do
  result[#result + 1] = redis.call('GET', KEYS[i])
end
return result
"""


def default_class(method: str) -> str:
    return "queries" if method in ("GET", "HEAD") else "sessions"


class RateLimiter:
    def __init__(
        self, client: HotClient, settings: ControlPlaneSettings, guard: ValkeyGuard | None = None
    ) -> None:
        self.guard = guard or ValkeyGuard()
        self.local = LocalGcra()
        self.enabled = settings.rate_limits_enabled
        self.prefix = settings.cache_prefix + "rl:"
        self.client = client
        self._limits: dict[str, tuple[int, int]] = {}
        for name in (*CLASSES, "global"):
            limit, period_s = settings.rate(name)
            self._limits[name] = (limit, max(1, round(period_s * 1000)))
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies]
        # ARGV per class, built once
        global_limit = self._limits["global"]
        self._argv = {name: [2, *self._limits[name], *global_limit] for name in CLASSES}

    def client_ip(self, request: Request[Any, Any, Any]) -> str:
        """The peer address, or — when the peer is a trusted proxy — the right-most
        address of X-Forwarded-For that is not itself a trusted proxy."""
        client = request.scope.get("client")
        peer = client[0] if client else "unknown"
        if not self._trusted or not self._is_trusted(peer):
            return peer
        forwarded = request.headers.get("x-forwarded-for")
        if not forwarded:
            return peer
        for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
            if not self._is_trusted(hop):
                return hop
        return peer

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    async def check(
        self, request: Request[Any, Any, Any], key_id: str, reads: tuple[str, ...] = ()
    ) -> list[bytes | None]:
        """Count this request against its class and the global limit (or raise 429);
        returns the values of ``reads`` fetched in the same round trip."""
        rate_class = request.route_handler.opt.get("rate") or default_class(request.method)
        ip = self.client_ip(request)
        keys = [
            f"{self.prefix}{rate_class}:{key_id}:{ip}",
            f"{self.prefix}global:{key_id}:{ip}",
            *reads,
        ]
        argv = self._argv[rate_class]
        reply = await self.guard.call(
            "rate_limits", lambda: self.client.evalsha(_GCRA, keys, argv), None
        )
        if reply is None:  # degraded mode: this worker's memory, and no cached reads
            local = self.local.check(keys[:2], [(argv[1], argv[2]), (argv[3], argv[4])])
            reply = [*local, *([None] * len(reads))]
        allowed, index, remaining, retry_ms, reset_ms = reply[:5]
        name = rate_class if index == 1 else "global"
        limit, period_ms = self._limits[name]
        headers = {
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(max(0, math.ceil(reset_ms / 1000))),
            "RateLimit-Policy": f'{limit};w={period_ms // 1000};name="{name}"',
        }
        if not allowed:
            REFUSED.labels(name).inc()
            retry_s = max(1, math.ceil(retry_ms / 1000))
            headers["Retry-After"] = str(retry_s)
            raise ProblemError(
                429,
                "rate_limited",
                f"rate limit '{name}' ({limit} per {period_ms / 1000:g} s) exceeded; "
                f"retry in {retry_s} s",
                headers=headers,
            )
        request.scope["state"][SCOPE_KEY] = headers
        return list(reply[5:])


async def add_rate_headers(message: Message, scope: Scope) -> None:
    """``before_send`` hook: copy the rate-limit headers of this request to its answer."""
    if message["type"] != "http.response.start":
        return
    state = scope.get("state")
    headers = state.get(SCOPE_KEY) if state else None
    if headers:
        raw = list(message.get("headers", ()))
        raw.extend((k.lower().encode(), v.encode()) for k, v in headers.items())
        message["headers"] = raw
