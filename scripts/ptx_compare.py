"""Whether a change altered the kernels' code: compiles the CUDA source of this tree and of
a git revision to PTX (cicc only: no ptxas, no GPU; ~2.5 min each) and compares each
kernel's PTX with comments and line-info dropped. For refactors made without a device: a
kernel whose PTX is unchanged runs the same machine code as before.

    python3 scripts/ptx_compare.py [REV (HEAD)] [--only unit_tap] [--nvcc PATH] [--sass]

--sass compares the machine code instead (ptxas too, ~2.5 min each on 2 cores; cuobjdump
from CUOBJDUMP or CUDA_HOME): each kernel's SASS without addresses and encodings, and with
the constant-bank offsets masked, so that a change of a parameter struct's layout (a field
removed) does not count. --drop-rev does for the revision's names what --drop does for the
tree's (a template argument the change removed).

Needs a CUDA build of torch and nvcc (CUDA_HOME); prints one line a kernel that differs,
or that all are the same.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def sources_at(rev: str) -> str:
    """kernel_sources()'s CUDA text at git revision rev (its model_new.py and kernels/)."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(f"git -C {ROOT} archive {rev} model_new.py kernels | tar -x -C {d}", shell=True, check=True)
        code = "import sys; sys.path.insert(0, sys.argv[1]); import model_new as mn; sys.stdout.write(mn.kernel_sources()[1])"
        return subprocess.run([sys.executable, "-c", code, d], capture_output=True, text=True, check=True,
                              cwd=d).stdout


def ptx_of(cu_text: str, nvcc: str, work: Path, tag: str, sass: bool = False) -> str:
    import torch.utils.cpp_extension as ce
    src, out = work / f"{tag}.cu", work / f"{tag}.ptx"
    src.write_text("#include <torch/types.h>\n#include <cuda.h>\n#include <cuda_runtime.h>\n" + cu_text)
    inc = [a for p in ce.include_paths(device_type="cuda") for a in ("-isystem", p)]
    inc += [f"-I{p}" for p in (Path(sys.prefix) / "lib").glob("python3*/site-packages/nvidia/cu13/include")]
    flags = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
             "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr", "-gencode=arch=compute_90a,code=sm_90a",
             "-O3", "-std=c++20", "-DTORCH_EXTENSION_NAME=ct3d_ext", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    import sysconfig
    inc += ["-isystem", sysconfig.get_paths()["include"]]
    if sass:  # ptxas on every CPU: the same machine code (NOTES.md, "Build time")
        out = work / f"{tag}.cubin"
        flags += ["-cubin", "-Xptxas=--split-compile=0"]
    else:
        flags += ["-ptx"]
    r = subprocess.run([nvcc, *inc, *flags, str(src), "-o", str(out)], capture_output=True, text=True)
    if r.returncode != 0:  # nvcc's warnings are many: shown only where it failed
        sys.exit(f"nvcc failed on the {tag} source:\n{r.stderr[-4000:]}")
    if not sass:
        return out.read_text()
    cuobjdump = os.environ.get("CUOBJDUMP") or str(Path(nvcc).parent / "cuobjdump")
    return subprocess.run([cuobjdump, "-sass", str(out)], capture_output=True, text=True, check=True).stdout


def sass_entries(sass: str, only: str, drops=()) -> dict:
    """Each kernel's SASS (cuobjdump -sass) without addresses and encodings, constant-bank
    offsets masked, by mangled name renamed by `drops`."""
    out = {}
    for part in re.split(r"\n\s*Function : ", sass)[1:]:
        name, _, body = part.partition("\n")
        name = name.strip()
        if only and only not in name:
            continue
        body = re.sub(r"/\*\s*0x[0-9a-f]+\s*\*/|/\*[0-9a-f]{4,}\*/", "", body)
        body = re.sub(r"c\[0x0\]\[0x[0-9a-f]+\]", "c[0x0][_]", body)
        out[renamed(name, drops)] = "\n".join(l.strip() for l in body.splitlines() if l.strip())
    return out


def renamed(name: str, drops) -> str:
    """name with each of `drops` applied in turn: a string removed, or OLD=NEW, OLD replaced
    by NEW (a template argument the change added or removed)."""
    for d in drops:
        old, _, new = d.partition("=")
        name = name.replace(old, new)
    return name


def entries(ptx: str, only: str, drops=(), loose: bool = False) -> dict:
    """Each kernel's PTX without comments and line info, labels numbered without the
    function's index (which moves when kernels are added), by mangled name renamed by `drops` (a
    template argument the change added, as mangled, e.g. Lb0E for a trailing false);
    `loose`: virtual register numbers dropped too (same instructions, renumbered)."""
    out = {}
    for m in re.finditer(r"\.visible \.entry (\S+)\(", ptx):
        name = m.group(1)
        if only and only not in name:
            continue
        body = re.sub(r"\.loc[^\n]*|//[^\n]*", "", ptx[m.start():ptx.index("\n}\n", m.start())])
        body = re.sub(r"\$L__BB\d+_", "$L__BB_", body)
        if drops:  # the PTX names its parameters after the kernel
            body = body.replace(name, renamed(name, drops))
        if loose:
            body = re.sub(r"%(rd|rs|r|p|fd|f)\d+", r"%\1", body)
        out[renamed(name, drops)] = body
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", nargs="?", default="HEAD")
    ap.add_argument("--only", default="", help="compare kernels whose mangled name contains this")
    ap.add_argument("--drop", action="append", default=[],
                    help="removed from the tree's kernel names (an added template argument), or OLD=NEW: OLD "
                    "replaced by NEW; repeatable")
    ap.add_argument("--drop-rev", action="append", default=[],
                    help="as --drop, for the revision's names (a removed template argument); repeatable")
    ap.add_argument("--loose", action="store_true", help="ignore virtual register numbering")
    ap.add_argument("--sass", action="store_true", help="compare the machine code (constant-bank offsets masked)")
    ap.add_argument("--nvcc", default=os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"))
    a = ap.parse_args()
    import model_new as mn
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        if a.sass:
            new = sass_entries(ptx_of(mn.kernel_sources()[1], a.nvcc, work, "tree", True), a.only, a.drop)
            old = sass_entries(ptx_of(sources_at(a.rev), a.nvcc, work, "rev", True), a.only, a.drop_rev)
        else:
            new = entries(ptx_of(mn.kernel_sources()[1], a.nvcc, work, "tree"), a.only, a.drop, a.loose)
            old = entries(ptx_of(sources_at(a.rev), a.nvcc, work, "rev"), a.only, a.drop_rev, a.loose)
    diff = [k for k in sorted(set(new) | set(old)) if new.get(k) != old.get(k)]
    for k in diff:
        print("differs:" if k in new and k in old else "only in one:", k)
    print(f"{len(new)} kernels in the tree, {len(old)} at {a.rev}: "
          + ("all the same" if not diff else f"{len(diff)} differ"))


if __name__ == "__main__":
    main()
