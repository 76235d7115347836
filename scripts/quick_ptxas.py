"""Registers and spills of one kernel in ~25 s instead of the whole build's ~4.5 min: the
CUDA source (model_new.kernel_sources) cut at the first section banner after the kernel's
definition, with explicit instantiations appended, compiled by nvcc with -Xptxas -v.

    python3 scripts/quick_ptxas.py unit_tap_fwd_kernel \\
        "unit_tap_fwd_kernel<at::BFloat16, true>(const UnitTapParams)" [more instantiations]

An instantiation is written as inside namespace ct3d. Needs a CUDA build of torch and nvcc
(CUDA_HOME); sm_90a, the extension's flags. QUICK_PTXAS_SASS=FILE also writes the SASS
(cuobjdump -sass; CUOBJDUMP=path where nvcc's folder has none) there, to find where
spills (STL / LDL) sit.
"""
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    kernel, insts = sys.argv[1], sys.argv[2:]
    import model_new as mn
    import torch.utils.cpp_extension as ce
    cu = mn.kernel_sources()[1]
    at = re.search(r"__global__[^;{]*\b" + re.escape(kernel) + r"\(", cu)
    if not at:
        sys.exit(f"no __global__ {kernel} in the CUDA source")
    cut = cu.find("\n// ====", at.end())
    src = ("#include <torch/types.h>\n#include <cuda.h>\n#include <cuda_runtime.h>\n" + (cu if cut < 0 else cu[:cut])
           + "\n}  // namespace ct3d\nnamespace ct3d {\n"
           + "".join(f"template __global__ void {i};\n" for i in insts) + "}  // namespace ct3d\n")
    nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    inc = [a for p in ce.include_paths(device_type="cuda") for a in ("-isystem", p)]
    inc += ["-isystem", sysconfig.get_paths()["include"]]
    inc += [f"-I{p}" for p in (Path(sys.prefix) / "lib").glob("python3*/site-packages/nvidia/cu13/include")]
    flags = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
             "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr", "-gencode=arch=compute_90a,code=sm_90a",
             "-O3", "-std=c++20", "-cubin", "-Xptxas", "-v"]
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "one.cu"
        f.write_text(src)
        r = subprocess.run([nvcc, *inc, *flags, str(f), "-o", str(Path(d) / "one.cubin")], capture_output=True, text=True)
        if os.environ.get("QUICK_PTXAS_SASS") and r.returncode == 0:  # keep the SASS (where the spills are)
            cuobjdump = os.environ.get("CUOBJDUMP", os.path.join(os.path.dirname(nvcc), "cuobjdump"))
            sass = subprocess.run([cuobjdump, "-sass", str(Path(d) / "one.cubin")],
                                  capture_output=True, text=True).stdout
            Path(os.environ["QUICK_PTXAS_SASS"]).write_text(sass)
    if r.returncode != 0:
        sys.exit(r.stderr[-4000:])
    lines = r.stderr.splitlines()
    for i, line in enumerate(lines):  # the kernel's report: its "Compiling entry" line, then spills and registers
        if "Compiling entry function" in line and kernel in line:
            print(line.split("'")[1])
            print("\n".join("  " + l.strip() for l in lines[i + 1:i + 4] if "spill" in l or "Used" in l))


if __name__ == "__main__":
    main()
