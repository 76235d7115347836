"""Build the extension on this machine (no GPU needed) for a GPU machine's torch and Python,
into a folder that model_new loads where CT3D_PREBUILT names it (model_new.prebuilt_extension).

Device machines start bare, so every device call used to spend 4-5 minutes building the
extension. Run by scripts/prebuild.sh under a Python with the device's torch version:

    python scripts/prebuild.py .prebuilt

Writes ct3d_ext.so and prebuilt.json (the build key: sources, code-changing flags, torch and
Python versions; the target's compute capability). model_new builds as usual, with a
warning, where any of those differ on the machine that loads it.
"""

import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.pop("CT3D_PREBUILT", None)              # build, never load a copy
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a+PTX")  # what _arch_flags picks on an H100/H200

import torch  # noqa: E402

import model_new  # noqa: E402


def main() -> None:
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / ".prebuilt")
    arch = os.environ["TORCH_CUDA_ARCH_LIST"]
    if arch.replace("+PTX", "") != "9.0a":
        raise SystemExit(f"prebuild.py builds for sm_90a only (TORCH_CUDA_ARCH_LIST={arch})")
    import nvidia  # the CUDA headers ATen includes that a bare toolkit may lack (as CI)
    inc = [str(pathlib.Path(p) / "cu13" / "include") for p in nvidia.__path__]
    # The key of the sources the build reads, taken before it: a file edited during the
    # build must not give the old code the new key (checked again after).
    key = model_new.build_key(model_new.cuda_flags())
    ext = model_new.load_extension(extra_include_paths=[p for p in inc if pathlib.Path(p).is_dir()])
    if model_new.build_key(model_new.cuda_flags()) != key:
        raise SystemExit("prebuild.py: kernels/ changed during the build; run it again")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ext.__file__, out / "ct3d_ext.so")
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    meta = {
        "key": key,
        "capability": [9, 0],
        "file": "ct3d_ext.so",
        "torch": torch.__version__,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "commit": commit,
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / model_new.PREBUILT_META).write_text(json.dumps(meta, indent=1) + "\n")
    print("PREBUILT", out / "ct3d_ext.so", meta)


if __name__ == "__main__":
    main()
