#!/usr/bin/env bash
# The thin-group kernels in one device call: the TF32 rounding check
# (scripts/tf32_cvt_check.cu), build (with the ptxas report), kb72's pass times under the
# A/B settings (algo auto / tc_mma, CT3D_THIN_WGRAD on / off: tc_mma and CT3D_THIN_WGRAD=0
# run the kernels the thin ones replace; AB=0 skips them), the other problems' pass times
# (OTHERS, TF32), the tests that exercise the thin kernels, then bench.py on kb72
# (SKIP_BENCH=1: not). Logs to $OUT.   bash scripts/thin_iter.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 CT3D_PTXAS_VERBOSE=1
OUT=${OUT:-out}; mkdir -p "$OUT"
rm -f "${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}"/*/*/lock
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
t0=$(date +%s)
NVCC=$(command -v nvcc || echo "$(python3 -c 'from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME)')/bin/nvcc")
"$NVCC" -arch=sm_90a -o /tmp/tf32_cvt_check scripts/tf32_cvt_check.cu && /tmp/tf32_cvt_check | tee "$OUT/tf32_cvt_check.txt"
CT3D_VERBOSE_BUILD=1 python3 -c "import model_new" > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 ))s"
python3 scripts/ptxas_summary.py "$OUT/build.log" > "$OUT/ptxas.txt"; tail -1 "$OUT/ptxas.txt"
for a in auto tc_mma; do
  for e in "" CT3D_THIN_WGRAD=0; do
    [ "$a" = tc_mma ] && [ -n "$e" ] && continue
    [ "${AB:-1}" = 0 ] && { [ "$a" = tc_mma ] || [ -n "$e" ]; } && continue
    echo "== algo $a ${e:-default}"
    env $e timeout 120 python3 scripts/pass_times.py --problem ${PROBLEM:-kb72} --mode tf32 --mode fp32 --mode bf16 --algo $a
  done
done 2>&1 | tee "$OUT/pass_times.txt"
for p in ${OTHERS:-}; do timeout 120 python3 scripts/pass_times.py --problem $p --mode tf32; done 2>&1 | tee -a "$OUT/pass_times.txt"
echo "passes: $(( $(date +%s) - t0 ))s"
timeout ${PYTEST_TIMEOUT:-280} python3 -m pytest -q -x -n 4 -p no:cacheprovider test_parity.py \
  -k "${TESTS:-thin or random_config or edge_case or deterministic or kernel_families or (named_problem and kb72)}" \
  > "$OUT/pytest.log" 2>&1
tail -15 "$OUT/pytest.log"
echo "tests: $(( $(date +%s) - t0 ))s"
[ -n "${SKIP_BENCH:-}" ] || timeout 150 python3 bench.py --problem ${PROBLEM:-kb72} 2>&1 | tee "$OUT/bench.log" | tail -25
echo "total: $(( $(date +%s) - t0 ))s"
