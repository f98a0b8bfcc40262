"""SSRF guard for URLs zapfleet calls on a user's behalf — webhooks (control plane) and
media by URL (node agent), one policy for both: only http(s), and only to public
addresses unless an operator allows more.

A URL is refused when its host is, or resolves to, an address that is not globally
routable — loopback, private (RFC 1918, ULA), link-local (cloud metadata lives at
169.254.169.254), carrier-grade NAT, unspecified, reserved — or multicast.

Link-local, unspecified (``0.0.0.0``, ``::``, which connect to this host) and multicast
addresses are refused in every mode: no setting opens them. The rest can be allowed by
one development setting that the control plane (webhooks) and the node agent (media)
read alike, ``ZAPFLEET_ALLOW_PRIVATE_TARGETS`` (``zapfleet up`` sets it), or by
networks an operator names (``ZAPFLEET_WEBHOOK_ALLOWED_NETWORKS``, e.g. ``127.0.0.1/32``
in tests).

Webhooks are checked twice: when a URL is configured (a clear 422 for the user) and at
connect time, so a name that later resolves elsewhere (DNS rebinding) is refused too.
Media URLs are checked before each request and each redirect (``node_agent/media.py``),
and at connect time too.

One pinned-dial mechanism for both: a connection resolves the name once with
:func:`dial_addresses` (the addresses the policy allows) and connects to one of those
addresses, never to the name, while TLS keeps the name (SNI and the certificate check).
The webhook client (``control_plane/webhooks/http.py``) dials them itself; the media
fetcher's httpx client does it through :class:`PinnedBackend`, an httpcore network
backend.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class UnsafeURLError(ValueError):
    """The URL may not be called; the message says why, for the user."""


def _describe(address: IPAddress) -> str:
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:
        return "private"
    return "non-public"


def _never_allowed(address: IPAddress) -> str | None:
    """Why ``address`` is refused in every mode, or None: link-local (cloud metadata at
    169.254.169.254, fe80::/10), unspecified (0.0.0.0 and :: reach this host's every
    interface) and multicast."""
    if address.is_multicast:
        return "multicast"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified:
        return "unspecified"
    if isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK:
        return "unspecified"  # 0.0.0.0/8: "this network", Linux connects it to this host
    return None


_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
ALLOW_PRIVATE_SETTING = "ZAPFLEET_ALLOW_PRIVATE_TARGETS"


@dataclass(frozen=True)
class AddressPolicy:
    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def from_settings(cls, allow_private: bool, allowed_networks: Iterable[str]) -> AddressPolicy:
        return cls(
            allow_private=allow_private,
            allowed_networks=tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks),
        )

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be called, or None when it may."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        never = _never_allowed(address)
        if never is not None:
            return never  # not even an allowed network or the development setting opens it
        if any(address in network for network in self.allowed_networks):
            return None
        if address.is_global:
            return None
        if self.allow_private:
            return None
        return _describe(address)


def split_url(url: str, what: str = "webhook URL") -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, or UnsafeURLError saying what is wrong."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"{url!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURLError(f"a {what} must use http or https, not {scheme or 'nothing'!r}")
    host = parts.hostname
    if not host:
        raise UnsafeURLError(f"{url!r} has no host")
    return scheme, host, port or (443 if scheme == "https" else 80)


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses of ``host``; none when it does not resolve (now)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):  # unknown, or not even a valid name
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


# How a name becomes addresses: :func:`resolve` (the system resolver) unless a caller
# passes another — the tests do, to give a name several addresses or let it rebind,
# which no test could arrange with the system resolver without editing /etc/hosts
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


async def check_url(
    url: str,
    policy: AddressPolicy,
    *,
    what: str = "webhook URL",
    allow_setting: str = "ZAPFLEET_WEBHOOK_ALLOWED_NETWORKS",
    resolver: Resolver = resolve,
) -> list[IPAddress]:
    """Refuse (UnsafeURLError) a URL whose host is or resolves to a forbidden address,
    else return the addresses it resolved to. Every resolved address must be allowed: one
    bad record is enough to refuse. A name that does not resolve at all passes (no
    addresses): the caller decides — webhooks accept it (DNS may be down for a moment,
    and the connect-time guard checks every delivery), media fails the fetch."""
    _, host, port = split_url(url, what)
    literal = ip_literal(host)
    addresses = [literal] if literal is not None else await resolver(host, port)
    for address in addresses:
        reason = policy.refusal(address)
        if reason is not None:
            shown = host if literal is not None else f"{host} ({address})"
            opening = (
                "no setting allows them"
                if _never_allowed(address) is not None
                else f"an operator can allow them with {allow_setting}"
            )
            raise UnsafeURLError(
                f"{what} {redact_url(url)!r} points to a {reason} address ({shown}); "
                f"such targets are refused to prevent server-side request forgery ({opening})"
            )
    return addresses


async def dial_addresses(
    host: str, port: int, policy: AddressPolicy, resolver: Resolver = resolve
) -> list[IPAddress]:
    """The addresses a connection to ``host`` may dial, resolved now: the literal itself,
    or every address the name resolves to that the policy allows (the refused ones are
    left out, so a name with one bad record still reaches its good ones). UnsafeURLError
    when none is allowed; an empty list when the name does not resolve."""
    literal = ip_literal(host)
    resolved = [literal] if literal is not None else await resolver(host, port)
    allowed = [a for a in resolved if policy.refusal(a) is None]
    if resolved and not allowed:
        reason = policy.refusal(resolved[0])
        raise UnsafeURLError(
            f"{host} resolves to a {reason} address ({resolved[0]}): refused (SSRF guard)"
        )
    return allowed


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore (httpx) network backend that dials what :func:`dial_addresses` allows,
    never the name itself; httpcore still uses the URL's name for the Host header, SNI and
    the certificate check. Refusals raise UnsafeURLError; a name that does not resolve,
    or no address that answers, httpcore.ConnectError."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver = resolve) -> None:
        self.policy = policy
        self.resolver = resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await dial_addresses(host, port, self.policy, self.resolver)
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host!r}")
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def redact_url(url: str) -> str:
    """The URL without user info or query, for logs and errors (both may hold secrets)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


__all__: list[Any] = [
    "ALLOW_PRIVATE_SETTING",
    "AddressPolicy",
    "PinnedBackend",
    "Resolver",
    "UnsafeURLError",
    "check_url",
    "dial_addresses",
    "ip_literal",
    "redact_url",
    "split_url",
]
