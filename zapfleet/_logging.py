"""Structured JSON-lines logging shared by every zapfleet process.

Context (tenant, session, node ids) rides in :data:`log_context`, a ContextVar, so every
line emitted inside a session's task carries its ids without passing them around. Secrets
never reach the output: known secret fields are masked by name.
"""

from __future__ import annotations

import contextvars
import logging
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
    {"authorization", "x-api-key", "api_key", "key", "secret", "admin_key", "password", "token"}
)
_RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_encoder = msgspec.json.Encoder()


def scrub(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: ("***" if k.lower() in _SECRET_KEYS else v) for k, v in fields.items()}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(log_context.get())
        extra = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
        line.update(scrub(extra))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
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
