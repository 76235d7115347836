#!/usr/bin/env bash
# A measuring call: build (ptxas report), host-vs-kernel time of every named problem and
# mode, pass kernels of the small problems, ncu of the wgmma window kernel on $PROBLEM.
set -uo pipefail
export PYTHONUNBUFFERED=1 CT3D_PTXAS_VERBOSE=1
OUT=${OUT:-out}; mkdir -p "$OUT"
t0=$(date +%s)
CT3D_VERBOSE_BUILD=1 python3 -c "import model_new" > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 ))s"
python3 scripts/ptxas_summary.py "$OUT/build.log" > "$OUT/ptxas.txt"
timeout 150 python3 scripts/host_probe.py 2>&1 | tee "$OUT/host.txt"
timeout 40 python3 scripts/host_probe.py --problem kb72 --mode bf16 --cpu-table > "$OUT/host_cpu_kb72.txt" 2>&1
echo "host: $(( $(date +%s) - t0 ))s"
timeout 60 python3 scripts/pass_times.py --problem kb72 --problem kb58 --kernels > "$OUT/pass_small.txt" 2>&1
grep -E "TF/s" "$OUT/pass_small.txt"
echo "passes: $(( $(date +%s) - t0 ))s"
[ -n "${NO_NCU:-}" ] || PROBLEM=${PROBLEM:-kb61} BATCH=${BATCH:-2} timeout 200 bash scripts/profile_wg.sh ${DT:-float} > "$OUT/ncu_summary.txt" 2>&1
tail -40 "$OUT/ncu_summary.txt"
echo "total: $(( $(date +%s) - t0 ))s"
