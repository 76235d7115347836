#!/usr/bin/env bash
# ncu per-instruction profile (SASS execution counts and stall samples) of one kernel of the
# kb68 forward+backward:  KERNEL=window_tc_kernel bash scripts/profile_src.sh [float|bf16|half]
# Leaves $OUT/src_<dtype>.csv (the source page) and the report; the build must already exist.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
DT=${1:-bf16}; K=${KERNEL:-window_tc_kernel}
timeout 300 ncu --clock-control none -k "regex:$K" -c 1 --import-source no \
  --section SourceCounters --section WarpStateStats --section InstructionStats --section SpeedOfLight \
  --metrics smsp__inst_executed.sum,smsp__cycles_active.avg \
  -o "$OUT/rep_${DT}" -f env PYTHONPATH=. python3 scripts/profile_problem.py "$DT" ${PROBLEM:-kb68} ${BATCH:-2} > "$OUT/ncu_src_${DT}.log" 2>&1
ncu -i "$OUT/rep_${DT}.ncu-rep" --page details > "$OUT/details_${DT}.txt" 2>&1
ncu -i "$OUT/rep_${DT}.ncu-rep" --page source --csv --print-source sass > "$OUT/src_${DT}.csv" 2>"$OUT/src_err.txt"
wc -c "$OUT/src_${DT}.csv"; head -c 600 "$OUT/src_err.txt"
