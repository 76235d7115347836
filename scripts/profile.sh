#!/usr/bin/env bash
# ncu on the kb68 tensor-core kernels (forward window conv, grad weight). Logs to $OUT.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -c "import model_new" > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
for k in window_tc_kernel wgrad_tc_kernel; do
  timeout 200 ncu --clock-control none -k "regex:$k" -c 1 \
    --section SpeedOfLight --section WarpStateStats --section Occupancy --section MemoryWorkloadAnalysis \
    --metrics sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active \
    env PYTHONPATH=. python3 scripts/profile_kb68.py > "$OUT/ncu_$k.txt" 2>&1
  grep -E "Duration|Throughput|Pipe|hmma|Stall|stall|Occupancy|Registers|Warp Cycles|Issued|Eligible|L1/TEX Hit|L2 Hit|lsu|Active Warps" "$OUT/ncu_$k.txt" | head -60
done
