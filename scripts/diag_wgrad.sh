#!/usr/bin/env bash
# Where grad weight's time goes, in one device call: the wgmma loop-rate microbenchmark
# (scripts/wgmma_rs_rate.cu), then ncu of wgrad_wg_kernel on $PROBLEM (kb68) at batch
# $BATCH (16: the bench's size, so L2 reuse is the bench's) in bf16 and TF32: time, DRAM
# bytes, L2 hit rate, tensor-pipe activity, warp stalls and the hottest instructions
# (scripts/stall_summary.py; KEEP_SRC=1 keeps the whole source page). SKIP_RATE=1 skips the
# microbenchmark; KERNEL, PROBLEM, BATCH, DTYPES choose what ncu profiles.
#   OUT=... bash scripts/diag_wgrad.sh
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
t0=$(date +%s)
[ -n "${SKIP_RATE:-}" ] || { nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a scripts/wgmma_rs_rate.cu -o /tmp/wrs && /tmp/wrs | tee "$OUT/rate.txt"; }
python3 -c "import model_new" > /tmp/build.log 2>&1 || { tail -30 /tmp/build.log; exit 1; }
echo "build: $(( $(date +%s) - t0 ))s"
for DT in ${DTYPES:-bf16 float}; do
  timeout 240 ncu --clock-control none -k "regex:${KERNEL:-wgrad_wg_kernel}" -c 1 --import-source no \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
    --section SourceCounters --section LaunchStats --section Occupancy \
    --metrics sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_tensor_op_gmma.sum,smsp__inst_executed.sum,lts__t_sector_hit_rate.pct,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum \
    -o /tmp/rep_$DT -f env PYTHONPATH=. python3 scripts/profile_problem.py "$DT" ${PROBLEM:-kb68} ${BATCH:-16} > /tmp/ncu_$DT.log 2>&1
  tail -3 /tmp/ncu_$DT.log
  ncu -i /tmp/rep_$DT.ncu-rep --page details > "$OUT/details_$DT.txt" 2>&1
  ncu -i /tmp/rep_$DT.ncu-rep --page source --csv --print-source sass > /tmp/src_$DT.csv 2>/dev/null
  python3 scripts/stall_summary.py /tmp/src_$DT.csv 16 | tee -a "$OUT/details_$DT.txt"
  [ -n "${KEEP_SRC:-}" ] && cp /tmp/src_$DT.csv "$OUT/"
  echo "== $DT"; grep -E "Duration|gmma|dram__bytes|hit_rate|Hit Rate|Issued Warp|Eligible|No Eligible|Registers|Stall|wavefronts" "$OUT/details_$DT.txt" | head -30
done
echo "total: $(( $(date +%s) - t0 ))s"
