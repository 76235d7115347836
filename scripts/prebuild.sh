#!/usr/bin/env bash
# Build the extension here, without a GPU, for the device machines' Python and torch (see
# ../.library/device KINDS.md: Python 3.12, torch 2.11.0+cu130), into .prebuilt/, so that a
# device call loads it instead of spending 4-5 minutes on a build:
#   bash scripts/prebuild.sh            # then: run(..., carry=[".prebuilt"])
# scripts/iter.sh and gpu_suite.sh export CT3D_PREBUILT=.prebuilt when it is there; model_new
# builds as usual (with a warning) if the copy does not match the tree or does not load.
# Makes a venv once ($PREBUILD_VENV) with that torch (its wheel alone; the CUDA libraries of
# this machine's python3 serve for the import) and ninja. ~1 min the first time, then one
# build (~3 min on 2 cores). Logs: .prebuilt/build.log, .prebuilt/ptxas.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=${DEVICE_TORCH:-2.11.0}
PYV=${DEVICE_PYTHON:-3.12}
VENV=${PREBUILD_VENV:-/tmp/ct3d_prebuild_py${PYV}}
OUTDIR=${PREBUILT_DIR:-.prebuilt}
if [ ! -x "$VENV/bin/python" ]; then
  base=$(ls -d /root/.pyenv/versions/"$PYV".*/bin/python 2>/dev/null | tail -1 || true)
  base=${base:-$(command -v "python$PYV")}
  "$base" -m venv "$VENV"
  "$VENV/bin/pip" install -q --no-deps "torch==$TORCH_VERSION"
  "$VENV/bin/pip" install -q filelock typing-extensions sympy networkx jinja2 fsspec 'setuptools<82' numpy ninja
  # torch imports its CUDA libraries from the nvidia packages: use this machine's
  nv=$(python3 -c "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))")
  mkdir -p "$VENV/nvlink" && ln -sfn "$nv/nvidia" "$VENV/nvlink/nvidia"
  echo "$VENV/nvlink" > "$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')/nvlink.pth"
fi
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
rm -rf "$OUTDIR"; mkdir -p "$OUTDIR"
log=$(mktemp)
t0=$(date +%s)
TORCH_EXTENSIONS_DIR=$(mktemp -d) CT3D_PTXAS_VERBOSE=1 CT3D_VERBOSE_BUILD=1 PATH="$VENV/bin:$PATH" \
  "$VENV/bin/python" scripts/prebuild.py "$OUTDIR" > "$log" 2>&1 || { tail -40 "$log"; exit 1; }
mv "$log" "$OUTDIR/build.log"
python3 scripts/ptxas_summary.py "$OUTDIR/build.log" > "$OUTDIR/ptxas.txt"
echo "prebuild: $(( $(date +%s) - t0 ))s; $(tail -1 "$OUTDIR/ptxas.txt")"
ls -la "$OUTDIR"
