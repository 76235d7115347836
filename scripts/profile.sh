#!/usr/bin/env bash
# ncu on the kb68 tensor-core kernels (forward window conv = first window_tc_kernel launch,
# grad weight). Logs to $OUT.   bash scripts/profile.sh [float|bf16|half]
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
DT=${1:-float}
python3 -c "import model_new" > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
for k in window_tc_kernel wgrad_tc_kernel; do
  timeout 200 ncu --clock-control none -k "regex:$k" -c 1 \
    --section SpeedOfLight --section WarpStateStats --section Occupancy --section MemoryWorkloadAnalysis \
    --section LaunchStats \
    --metrics sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_tex_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_selected_per_issue_active.ratio,l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed,lts__t_sectors.avg.pct_of_peak_sustained_elapsed \
    env PYTHONPATH=. python3 scripts/profile_problem.py "$DT" ${PROBLEM:-kb68} ${BATCH:-2} > "$OUT/ncu_${DT}_$k.txt" 2>&1
  grep -E "Duration|Throughput|Pipe|hmma|stall|Occupancy|Registers|Warp Cycles|Issued|Eligible|L1/TEX Hit|L2 Hit|lsu|shared|lts__|Active Warps|Block Size|Grid Size" "$OUT/ncu_${DT}_$k.txt" | head -60
done
