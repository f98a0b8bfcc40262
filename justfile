# zapfleet tasks. Run them through ./dev (which bootstraps .venv) or with .venv/bin on PATH.
set shell := ["bash", "-euo", "pipefail", "-c"]

export PATH := justfile_directory() + "/.venv/bin:" + env_var("PATH")

# the whole suite: lint, types, tests
test: lint typecheck
    python -m pytest -q

lint:
    ruff check .
    ruff format --check contract control_plane node_agent zapfleet tests bench

typecheck:
    mypy

# format the code in place
fmt:
    ruff format contract control_plane node_agent zapfleet tests bench
    ruff check --fix .

# benchmarks: `just bench` runs all, `just bench api` one of them
bench name="all":
    python -m bench {{name}}

# refresh requirements.lock from pyproject.toml
lock:
    uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock --no-header
