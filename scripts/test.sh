#!/usr/bin/env bash
# The test command: set the machine up, then lint, type-check and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# pytest exits 5 when it collected nothing: that is a failure too.
.venv/bin/python -m pytest "$@"
