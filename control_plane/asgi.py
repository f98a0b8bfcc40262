"""ASGI entry point for granian: ``granian --interface asgi --factory control_plane.asgi:app``."""

from __future__ import annotations

from litestar import Litestar

from control_plane.app import create_app
from control_plane.settings import ControlPlaneSettings
from zapfleet._env import load_settings
from zapfleet._logging import configure_logging


def app() -> Litestar:
    settings = load_settings(ControlPlaneSettings)
    configure_logging(settings.log_level, settings.log_format, process="control-plane")
    return create_app(settings)
