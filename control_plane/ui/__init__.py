"""The operator web UI: static HTML/CSS/ES modules under ``static/`` served at ``/ui``
(no build step), plus the few helper routes the pages need that are not part of ``/v1``."""

from control_plane.ui.routes import STATIC_DIR, ui_route_handlers

__all__ = ["STATIC_DIR", "ui_route_handlers"]
