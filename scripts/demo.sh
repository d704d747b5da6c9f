#!/usr/bin/env bash
# Install (scripts/setup.sh) and run the demo. With no arguments: `promptune demo --once`
# (train on the bundled digits, predict, stop). `./scripts/demo.sh --port 8000` keeps serving.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1
[ $# -gt 0 ] || set -- --once
exec .venv/bin/promptune demo "$@"
