#!/usr/bin/env bash
# Install (scripts/setup.sh), lint, and run the whole test suite: what CI runs (.ci/run).
# Extra arguments go to pytest, e.g. ./scripts/test.sh tests/worker -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# chromium too: the console's tests drive a real browser (and fail, not skip, without one here)
export PROMPTUNE_SETUP_BROWSER=1
./scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q --timeout=900 "$@"
