#!/usr/bin/env bash
# ncu on one kernel of one pass of a named problem (default: the thin-group forward on kb72).
# Logs to $OUT.   KERNEL=thin_fwd PROBLEM=kb72 MODES="tf32 bf16" PASS=fwd bash scripts/profile_thin.sh
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
K=${KERNEL:-thin_fwd}
for m in ${MODES:-tf32 bf16}; do
  timeout 240 ncu --clock-control none -k "regex:$K" -s 2 -c 1 \
    --section SpeedOfLight --section WarpStateStats --section Occupancy --section MemoryWorkloadAnalysis \
    --section LaunchStats --section SchedulerStats --section MemoryWorkloadAnalysis_Tables \
    python3 scripts/pass_times.py --problem ${PROBLEM:-kb72} --mode $m --passes ${PASS:-fwd} > "$OUT/ncu_${K}_$m.txt" 2>&1
  grep -E "Duration|Throughput|Pipe|stall|Occupancy|Registers|Warp Cycles|Issued|Eligible|Hit Rate|Active Warps|Block Size|Grid Size|Shared Memory|Bank|Sectors|Waves|Limit" "$OUT/ncu_${K}_$m.txt" | head -70
done
