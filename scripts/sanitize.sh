#!/usr/bin/env bash
# compute-sanitizer (memcheck, racecheck, initcheck) over scripts/sanitize_cases.py, which
# reaches every kernel and code path. Each tool's log goes to $OUT (default: ./sanitize_logs);
# the summary lines are printed at the end. Exit status: 0 when every tool reports 0 errors.
#   scripts/sanitize.sh            (needs a GPU and compute-sanitizer on PATH or in CUDA_HOME)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-sanitize_logs}
mkdir -p "$OUT"
SAN=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
# Build or load the extension outside the sanitizer first (the build spawns compilers).
python3 -c "import model_new" || exit 2
# Every allocation its own cudaMalloc, so an access past a tensor's end is outside any allocation.
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
status=0
for tool in memcheck racecheck initcheck; do
  "$SAN" --tool "$tool" --error-exitcode 99 --print-limit 50 \
      python3 scripts/sanitize_cases.py > "$OUT/sanitize_$tool.log" 2>&1
  rc=$?
  summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitize_$tool.log" | tail -1)
  ok=$(grep -c "SANITIZE-CASES-OK" "$OUT/sanitize_$tool.log")
  echo "$tool: exit $rc, cases ran: $ok, ${summary:-no summary line}"
  [ "$rc" -ne 0 ] && status=1
done
exit $status
