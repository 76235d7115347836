#!/usr/bin/env bash
# ncu of the wgmma window kernel on $PROBLEM (default kb68, batch $BATCH = 2): speed of light, memory, warp states and
# the per-instruction source page.   bash scripts/profile_wg.sh [bf16|float]
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
DT=${1:-bf16}; K=${KERNEL:-window_wg_kernel}
t0=$(date +%s)
python3 -c "import model_new" > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 ))s"
timeout 300 ncu --clock-control none -k "regex:$K" -c 1 --import-source no \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
  --section SourceCounters --section LaunchStats --section Occupancy \
  --metrics sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_tensor_op_gmma.sum,smsp__inst_executed.sum,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_sectors_srcunit_tex_op_write.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum \
  -o "$OUT/rep_wg_${DT}" -f env PYTHONPATH=. python3 scripts/profile_problem.py "$DT" ${PROBLEM:-kb68} ${BATCH:-2} > "$OUT/ncu_wg_${DT}.log" 2>&1
ncu -i "$OUT/rep_wg_${DT}.ncu-rep" --page details > "$OUT/details_wg_${DT}.txt" 2>&1
ncu -i "$OUT/rep_wg_${DT}.ncu-rep" --page source --csv --print-source sass > "$OUT/src_wg_${DT}.csv" 2>"$OUT/src_err.txt"
grep -E "Duration|Throughput|gmma|Pipe|Stall|stall|Warp Cycles|Issued|Eligible|Hit Rate|sectors|bytes|wavefronts|Registers|Shared Memory" "$OUT/details_wg_${DT}.txt" | head -70
echo "total: $(( $(date +%s) - t0 ))s"
