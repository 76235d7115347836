#!/usr/bin/env bash
# ncu of the unit-tap kernels (forward and grad input, kernel size = stride) on a U-Net
# layer: speed of light, warp stalls and the hottest SASS lines of each, in one device call.
#   PROBLEM=unet_64_32_64 bash scripts/profile_unit_tap.sh [bf16|float]
# CT3D_UNIT_TAP_DGRAD=1 is set here (grad input on the unit-tap kernel on every layout). Logs to $OUT.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export CT3D_UNIT_TAP_DGRAD=1 PYTHONUNBUFFERED=1
DT=${1:-bf16}
t0=$(date +%s)
python3 -c "import model_new" > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 ))s"
for K in ${KERNELS:-unit_tap_dgrad_kernel unit_tap_fwd_kernel}; do
  OUT="$OUT/$K" KERNEL=$K PROBLEM=${PROBLEM:-unet_64_32_64} BATCH=${BATCH:-2} bash scripts/profile_src.sh "$DT"
  d="$OUT/$K"
  echo "== $K"
  grep -E "Duration|Throughput|Registers|Achieved Occupancy|Warp Cycles Per Issued|Issued Ipc|Eligible|Executed Ipc|Memory \[%\]|Compute \(SM\)" "$d/details_${DT}.txt" | head -24
  python3 scripts/stall_summary.py "$d/src_${DT}.csv" 24 > "$OUT/stalls_$K.txt" 2>&1; cat "$OUT/stalls_$K.txt"
  mv "$d/details_${DT}.txt" "$OUT/details_$K.txt"; rm -rf "$d"
done
echo "total: $(( $(date +%s) - t0 ))s"
