"""Structured JSON-lines logging shared by every zapfleet process.

Context (tenant, session, node ids) rides in :data:`log_context`, a ContextVar, so every
line emitted inside a session's task carries its ids without passing them around.

Secrets never reach the output (docs/security.md, "Secrets"):

- fields named like a secret (``authorization``, ``x-api-key``, ``secret``, ...) are masked,
  at any depth of nested mappings (a logged ``headers`` dict, say);
- in every string (the message, field values, exception text) ``Bearer <token>``,
  ``Authorization:``/``X-API-Key:`` header values and zapfleet keys
  (``zf_<key_id>_<secret>``; the key id stays, it is public) and passwords in URLs are
  masked;
- values registered with :func:`register_secret` (the admin key, webhook secrets) are
  masked wherever they appear.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import msgspec

log_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "zapfleet_log_context", default=MappingProxyType({})
)

_SECRET_KEYS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api_key",
        "apikey",
        "key",
        "secret",
        "admin_key",
        "webhook_secret",
        "password",
        "token",
        "cookie",
        "set-cookie",
    }
)
_SECRET_PATTERNS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}"), r"\1 ***"),
    (
        re.compile(
            r"""(?i)((?:proxy-)?authorization|x-api-key)(['"]?\s*[:=,]\s*['"]?)[^\s'",}]+"""
        ),
        r"\1\2***",
    ),
    (re.compile(r"\b(zf_[0-9a-f]{16}_)[A-Za-z0-9_-]+"), r"\1***"),
    # passwords in URLs (proxies, device-store and Valkey URLs): scheme://user:***@host
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+@"), r"\1***@"),
)
_registered: set[str] = set()
_registered_re: list[re.Pattern[str]] = []  # one compiled alternation, once registered
_RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_encoder = msgspec.json.Encoder()


def register_secret(value: str | None) -> None:
    """Mask this exact value in every log line of the process from now on."""
    if not value or len(value) < 8 or value in _registered:
        return
    _registered.add(value)
    alternatives = sorted(_registered, key=len, reverse=True)
    _registered_re[:] = [re.compile("|".join(re.escape(v) for v in alternatives))]


def scrub_text(text: str) -> str:
    for registered in _registered_re:
        text = registered.sub("***", text)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _scrub_value(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if depth > 4:
        return value
    if isinstance(value, Mapping):
        return scrub(dict(value), depth + 1)
    if isinstance(value, list | tuple):
        return [_scrub_value(v, depth + 1) for v in value]
    if isinstance(value, BaseException):
        return scrub_text(repr(value))
    return value


def scrub(fields: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    return {
        k: ("***" if str(k).lower() in _SECRET_KEYS else _scrub_value(v, depth))
        for k, v in fields.items()
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": scrub_text(record.getMessage()),
        }
        line.update(log_context.get())
        extra = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
        line.update(scrub(extra))
        if record.exc_info:
            line["exc"] = scrub_text(self.formatException(record.exc_info))
        return _encoder.encode(line).decode()


def bind(**ids: str) -> contextvars.Token[Mapping[str, str]]:
    """Add ids (tenant, session_id, node_id) to the log context of the current task."""
    return log_context.set({**log_context.get(), **ids})


def configure_logging(level: str, fmt: str = "json", process: str = "zapfleet") -> None:
    """Install our handler on the root logger, replacing whatever a library put there
    (neonize calls logging.basicConfig(INFO) at import)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Go-side neonize logs cross the FFI for every line unless a level is set (NEONIZE.md §7).
    logging.getLogger("neonize").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("neonize.utils.log").setLevel(max(logging.WARNING, root.level))
    bind(process=process)
    logging.Formatter.converter = time.gmtime


def dictconfig(level: str, fmt: str = "json") -> dict[str, Any]:
    """The same setup as :func:`configure_logging`, as a logging dictConfig — for servers
    such as granian that configure logging in their worker processes themselves."""
    formatter: dict[str, Any] = (
        {"()": "zapfleet._logging.JsonFormatter"}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "_granian": {"level": level.upper()},
            "granian.access": {"level": level.upper()},
        },
    }
