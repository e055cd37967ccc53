#!/usr/bin/env bash
# The test command: lint, format, types, the layer order of the imports, then the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check fuseblk tests tools
.venv/bin/ruff format --check fuseblk tests tools
.venv/bin/mypy fuseblk
.venv/bin/python tools/check_layers.py
.venv/bin/pytest -q "$@"
