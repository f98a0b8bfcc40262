"""Typed settings from environment variables (prefix ``ZAPFLEET_``).

Each process declares one msgspec Struct of settings; :func:`load_settings` fills it from
``ZAPFLEET_<FIELD>`` variables, converts strings to the declared types and fails at start
with one message that names every bad variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

PREFIX = "ZAPFLEET_"
S = TypeVar("S", bound=msgspec.Struct)


class SettingsError(ValueError):
    pass


def _parse(raw: str, annotation: Any) -> Any:
    text = str(annotation)
    if "dict[" in text or "list[" in text:
        if raw.lstrip().startswith(("{", "[")):
            return msgspec.json.decode(raw)
        if "dict[" in text:
            pairs = (item.split("=", 1) for item in raw.split(",") if item.strip())
            return {k.strip(): v.strip() for k, v in pairs}
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


# former names still read (when the new name is unset), so an upgrade keeps its settings
RENAMED = {
    # one development SSRF setting for webhooks and media alike (zapfleet/ssrf.py)
    "ZAPFLEET_ALLOW_PRIVATE_TARGETS": (
        "ZAPFLEET_WEBHOOK_ALLOW_PRIVATE",
        "ZAPFLEET_MEDIA_ALLOW_PRIVATE",
    ),
}


def load_settings(cls: type[S], env: Mapping[str, str] | None = None, **overrides: Any) -> S:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        name = PREFIX + field.name.upper()
        if name not in env:
            name = next((old for old in RENAMED.get(name, ()) if old in env), name)
        if name in env:
            values[field.name] = _parse(env[name], field.type)
    values.update(overrides)
    try:
        settings = msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as exc:
        path = str(exc).rsplit("at `$.", 1)
        variable = PREFIX + path[1].rstrip("`").split(".")[0].upper() if len(path) == 2 else ""
        raise SettingsError(f"invalid setting {variable}: {exc}") from None
    validate = getattr(settings, "validate", None)
    if validate is not None:
        validate()
    return settings
