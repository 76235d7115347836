#!/usr/bin/env bash
# One device call of ncu profiles (speed of light, stalls, hottest SASS lines): the unit-tap
# forward and grad input on unet_64_32_64 bf16 (profile_unit_tap.sh), then the wgmma window
# kernel on kb58 TF32 at batch 4 (profile_src.sh). Seven files under $OUT (a device call
# returns eight at most). Made for NOTES.md's "Unit-tap kernels at three blocks an SM".
#   bash scripts/profile_set.sh
set -uo pipefail
OUT=${OUT:-out}
export PYTHONUNBUFFERED=1
t0=$(date +%s)
KERNELS="unit_tap_fwd_kernel unit_tap_dgrad_kernel" BATCH=2 PROBLEM=unet_64_32_64 bash scripts/profile_unit_tap.sh bf16 2>&1 | tail -80
mkdir -p "$OUT/w"
OUT="$OUT/w" KERNEL=window_wg_kernel PROBLEM=kb58 BATCH=4 bash scripts/profile_src.sh float
grep -E "Duration|Throughput|Registers|Achieved Occupancy|Warp Cycles Per Issued|Issued Ipc|Eligible|Executed Ipc|Memory \[%\]|Compute \(SM\)|Executed Instructions " "$OUT/w/details_float.txt" | head -24
python3 scripts/stall_summary.py "$OUT/w/src_float.csv" 30 > "$OUT/stalls_kb58_wg.txt" 2>&1; cat "$OUT/stalls_kb58_wg.txt"
mv "$OUT/w/details_float.txt" "$OUT/details_kb58_wg.txt"; rm -rf "$OUT/w"
echo "total: $(( $(date +%s) - t0 ))s"
