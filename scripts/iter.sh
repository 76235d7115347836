#!/usr/bin/env bash
# A development iteration in one device call: build once (with the ptxas report; or load the
# extension scripts/prebuild.sh built, carried as .prebuilt), then the
# pass times under each environment setting in $ENVS (VAR=value, comma-separated for more
# than one; "-" for none), then a targeted pytest. Logs to $OUT.
#   ENVS="CT3D_WG_WS=0 -" PROBLEMS="kb68 kb61" bash scripts/iter.sh
# ALGOS="auto tc_mma" times each kernel family (model_new._ALGOS) too.
# The build has CT3D_PTXAS_VERBOSE=1, and build flags are part of the extension's name: a
# python command after this script in the same device call must export it too, or it builds
# the extension a second time (a timeout during that build leaves torch's lock file, and
# every later import in the call waits on it: this cost a whole call once).
set -uo pipefail
export PYTHONUNBUFFERED=1 CT3D_PTXAS_VERBOSE=1
OUT=${OUT:-out}; mkdir -p "$OUT"
# A build killed by a timeout on this (warm) machine leaves torch's lock file behind, and
# every later import waits on it forever: no build runs yet, so none can hold it.
rm -f "${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}"/*/*/lock
# The extension built without a GPU by scripts/prebuild.sh (carried as .prebuilt), where it
# matches this tree: model_new loads it, else builds (with a warning).
[ -n "${CT3D_PREBUILT:-}" ] || [ ! -f .prebuilt/prebuilt.json ] || export CT3D_PREBUILT=$PWD/.prebuilt
t0=$(date +%s)
CT3D_VERBOSE_BUILD=1 python3 -c "import model_new; print('extension:', model_new._ext.__file__)" > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 ))s"; grep -E "^extension:|CT3D_PREBUILT" "$OUT/build.log"
if grep -q "ptxas info" "$OUT/build.log"; then python3 scripts/ptxas_summary.py "$OUT/build.log" > "$OUT/ptxas.txt"
else cp .prebuilt/ptxas.txt "$OUT/ptxas.txt"; fi
grep -c "" "$OUT/ptxas.txt"; grep -v "spill st/ld 0/0" "$OUT/ptxas.txt" | head
pargs=""; for p in ${PROBLEMS:-kb58 kb61 kb68 kb72}; do pargs="$pargs --problem $p"; done
margs=""; for m in ${MODES:-tf32 bf16}; do margs="$margs --mode $m"; done
for a in ${ALGOS:-auto}; do
  for e in ${ENVS:--}; do
    echo "== env: $e algo: $a" | tee -a "$OUT/pass_times.txt"
    [ "$e" = "-" ] && e=""
    env ${e//,/ } timeout 200 python3 scripts/pass_times.py $pargs $margs --algo $a --passes ${PASSES:-fwd,dgrad} 2>&1 | tee -a "$OUT/pass_times.txt"
  done
done
echo "passes: $(( $(date +%s) - t0 ))s"
[ -n "${SKIP_TESTS:-}" ] || timeout 200 python3 -m pytest -q -x -p no:cacheprovider test_parity.py \
  -k "${TESTS:-named_problem or deterministic or edge_case or only_requested or families or layouts}" 2>&1 | tail -5
echo "total: $(( $(date +%s) - t0 ))s"
