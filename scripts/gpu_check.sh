#!/usr/bin/env bash
# One device call: build (with the ptxas report), GPU tests, bench. Logs go to $OUT.
#   bash scripts/gpu_check.sh [pytest args...]
set -uo pipefail
export PYTHONUNBUFFERED=1 CT3D_PTXAS_VERBOSE=1  # one build: the flags are part of the extension hash
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
t0=$(date +%s)
CT3D_VERBOSE_BUILD=1 python3 -c "import model_new" > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 ))s"
# ptxas summary: kernel, registers, spills
python3 scripts/ptxas_summary.py "$OUT/build.log" | tee "$OUT/ptxas.txt"
export CT3D_HARNESS_REPORT="$OUT/harness.md"; : > "$CT3D_HARNESS_REPORT"
timeout ${PYTEST_TIMEOUT:-330} python3 -m pytest -q -rs -p no:cacheprovider test_parity.py "$@" 2>&1 | tee "$OUT/pytest.log" | tail -40
echo "pytest: $(( $(date +%s) - t0 ))s"
echo "| reference | dtype | check | reference ms | ours ms | speedup |"; cat "$CT3D_HARNESS_REPORT"
[ -n "${SKIP_BENCH:-}" ] || timeout ${BENCH_TIMEOUT:-200} python3 bench.py --json "$OUT/bench.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
echo "total: $(( $(date +%s) - t0 ))s"
