"""Where a wgmma window block's time goes: prologue (tables; then the first stages' copies
issued), the stage loop, the epilogue, in cycles a block (mean over the first 16384 blocks
of one forward), from a debug build with clock64 stamps (CT3D_WG_TIMING, window_wg.cuh).

    CT3D_WG_TIMING=1 python scripts/wg_phases.py [--problem kb61] [--mode tf32]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("CT3D_WG_TIMING", "1")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench  # noqa: E402
import model_new as mn  # noqa: E402
import reference as ref  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", choices=list(ref.PROBLEMS), action="append")
    ap.add_argument("--mode", choices=list(bench.MODES), action="append")
    args = ap.parse_args()
    ext = mn._extension()
    print("problem mode | blocks | cycles a block: tables, first copies, stage loop, epilogue | total")
    for name in args.problem or ["kb61", "kb68"]:
        p = ref.PROBLEMS[name]
        for mode in args.mode or ["tf32", "bf16"]:
            dtype, allow = bench.MODES[mode]
            torch.manual_seed(0)
            m = mn.ModelNew(*ref.init_args(p)).cuda().to(dtype)
            conv = m.conv_transpose3d
            x = torch.rand(*ref.input_shape(p), device="cuda", dtype=dtype)
            call = lambda: ext.forward(x, conv.weight.detach(), None, list(conv.stride), list(conv.padding),  # noqa: E731
                                       list(conv.output_padding), [1, 1, 1], conv.groups, allow, 0)
            call()
            torch.cuda.synchronize()
            ext.wgmma_stamps()
            call()
            torch.cuda.synchronize()
            st = ext.wgmma_stamps()
            if st.numel() == 0:
                print("not a CT3D_WG_TIMING build")
                return 1
            st = st[(st[:, 4] > st[:, 0]) & (st[:, 0] > 0)].double()
            d = st[:, 1:] - st[:, :-1]
            mean = d.mean(0).tolist()
            print(f"{name} {mode:4s} | {st.shape[0]:6d} | " + ", ".join(f"{v:8.0f}" for v in mean) +
                  f" | {(st[:, 4] - st[:, 0]).mean().item():8.0f}", flush=True)
            del m, x
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
