"""The directory of prometheus_client's multiprocess mode (see control_plane.metrics).

Kept apart from :mod:`control_plane.metrics` because prometheus_client picks its value
class when it is imported: the variable must be set before anything imports it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[str]:
    """A fresh directory for the workers' metric files while the server runs (stale files
    of an earlier run would be added up otherwise); removed afterwards if we made it."""
    existing = os.environ.get(ENV)
    if existing:
        shutil.rmtree(existing, ignore_errors=True)
        os.makedirs(existing, exist_ok=True)
        yield existing
        return
    path = tempfile.mkdtemp(prefix="zapfleet-metrics-")
    os.environ[ENV] = path
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
