#!/usr/bin/env bash
# The chaos tests (tests/chaos) at the run counts docs/reliability.md reports: 20 SIGKILLs, 5 SIGTERMs per
# delivery mode, 5 duplicate deliveries, 3 poison jobs, 3 Redis restarts, 12 cancels. CI runs the same
# tests with small counts. Prints one CHAOS-FIGURES JSON line per test and keeps them all in
# var/chaos-figures.jsonl. Extra arguments go to pytest, e.g. ./scripts/chaos.sh -k sigkill
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 PROMPTUNE_CHAOS=full
export PROMPTUNE_CHAOS_FIGURES=${PROMPTUNE_CHAOS_FIGURES:-var/chaos-figures.jsonl}
mkdir -p "$(dirname "$PROMPTUNE_CHAOS_FIGURES")"
: > "$PROMPTUNE_CHAOS_FIGURES"
.venv/bin/python -m pytest tests/chaos -m chaos -q -s -p no:cacheprovider --timeout=3600 "$@"
echo "chaos: figures in $PROMPTUNE_CHAOS_FIGURES"
