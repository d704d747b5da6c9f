#!/usr/bin/env bash
# The GPU benchmark: build the zoo's `gpu` profile (three models in parallel on one CUDA GPU), then run
# (or continue: results are resumable) the `gpu` benchmark profile. What made docs/benchmarks.md.
#   scripts/bench_gpu.sh [OUT_DIR] [BENCH_MINUTES]
# Env: PYTHON (default python3), WORKERS (benchmark processes, default 12), ZOO_MAX_SECONDS (a wall-time cap
# per zoo model, recorded in its recipe), SKIP_BENCH=1 (zoo only).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-zoo-gpu}
minutes=${2:-60}
py=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
cap=()
[ -n "${ZOO_MAX_SECONDS:-}" ] && cap=(--max-seconds "$ZOO_MAX_SECONDS")
mkdir -p "$out"
if [ ! -f "$out/backbones.json" ] || [ "$(grep -c '"sha256"' "$out/backbones.json")" -lt 3 ]; then
  for m in zoo-clip-tiny zoo-vit-sup-tiny zoo-vit-mae-tiny; do
    "$py" scripts/build_zoo.py --out "$out" --profile gpu --only "$m" --device cuda --data-workers 4 \
      "${cap[@]}" >"$out/build-$m.log" 2>&1 &
  done
  wait
  tail -n 12 "$out"/build-*.log
  "$py" scripts/build_zoo.py --out "$out" --profile gpu --device cuda "${cap[@]}" | tail -n 6  # all cached: registry
fi
[ -n "${SKIP_BENCH:-}" ] && exit 0
"$py" -m models.bench run --profile gpu --registry "$out/backbones.json" --out "$out/bench" --device cuda \
  --workers "${WORKERS:-12}" --max-minutes "$minutes"
