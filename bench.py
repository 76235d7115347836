"""Benchmark: reference (PyTorch / cuDNN ConvTranspose3d) against ours, side by side.

For each named problem and precision mode (fp32 with TF32 as PyTorch's default, fp32 strict,
bf16): check ours against the reference first (no speed is reported for a wrong result),
then time forward and forward+backward (median of CUDA-event timings after warm-up; each
call synchronized, so its host time counts, as in a harness). Our forward is also timed as a
CUDA graph replay (the same kernels, no host work between them), printed in a second table
beside the synchronized time: the rows where the host, not the kernels, sets the time. The
card's ceilings are measured in the same run: TF32, strict-fp32 and bf16 matmul rates and
device-to-device copy bandwidth. The roofline floor of a pass is
max(useful FLOPs / matmul rate, minimum bytes / copy bandwidth).

    python bench.py                    # every problem
    python bench.py --problem kb58     # one problem
    python bench.py --json out.json    # also write every number
    python bench.py --unet             # also the U-Net upsampling layers under bf16 autocast
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import torch

import model_new as mn
import reference as ref

MODES = {  # name: (dtype, TF32 allowed)
    "tf32": (torch.float32, True),
    "fp32": (torch.float32, False),
    "bf16": (torch.bfloat16, False),
}
# Relative L2 distance to the reference that a correct result stays under, per mode (each
# side's own error against the exact result is ~3e-4 in TF32, ~1e-7 strict, ~3e-3 bf16).
CHECK_TOL = {"tf32": 2e-3, "fp32": 1e-4, "bf16": 2e-2}


@contextlib.contextmanager
def tf32(enabled: bool):
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False,
                                    allow_tf32=enabled):
        yield


def time_ms(fn, warmup: int, reps: int) -> float:
    """Median of per-call CUDA-event timings, after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def graph_time_ms(fn, reps: int, replays: int = 4) -> float:
    """Device time of one call without its host time: the call captured once in a CUDA graph,
    replayed `replays` times back to back between two events (the GPU runs ahead of the
    ~10 us a replay costs the host); median over `reps` of that time / replays. Separates what
    the kernels take from what a synchronized call adds on the host (Python, autograd, the
    extension's C++, launches)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up on a side stream before capture, as PyTorch's CUDA-graph docs do
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(replays):
            graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / replays)
    del graph
    return statistics.median(times)


def measure_ceilings() -> dict:
    """The card's matmul rates (TFLOP/s) and copy bandwidth (GB/s, bytes read + written)."""
    n = 8192
    out = {}
    saved = torch.backends.cuda.matmul.allow_tf32
    for name, dtype, allow in (("tf32", torch.float32, True), ("fp32", torch.float32, False),
                               ("bf16", torch.bfloat16, False)):
        torch.backends.cuda.matmul.allow_tf32 = allow
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        ms = time_ms(lambda: a @ b, 2, 5)
        out[name + "_tflops"] = 2 * n ** 3 / ms / 1e9
        del a, b
    torch.backends.cuda.matmul.allow_tf32 = saved
    src = torch.empty(1 << 29, device="cuda", dtype=torch.float32)  # 2 GiB
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), 2, 10)
    out["copy_gbs"] = 2 * src.numel() * 4 / ms / 1e6
    del src, dst
    torch.cuda.empty_cache()
    return out


def useful_flops(p: dict, batch: int) -> float:
    """2 x (multiply-adds that land inside the output), for one forward pass."""
    pairs = 1
    for e in range(3):
        i_n, k, s, pad, d = p["input"][e], p["kernel_size"][e], p["stride"][e], p["padding"][e], 1
        out = (i_n - 1) * s - 2 * pad + d * (k - 1) + p["output_padding"][e] + 1
        pairs *= sum(1 for i in range(i_n) for r in range(k) if 0 <= i * s - pad + r * d < out)
    return 2.0 * batch * p["in_channels"] * (p["out_channels"] // p["groups"]) * pairs


def min_bytes(x_numel: int, w_numel: int, y_numel: int, esize: int, backward: bool) -> float:
    """Fewest bytes a pass must move: forward reads x, w and writes y; backward also reads
    dy, x, w and writes dx, dw."""
    fwd = (x_numel + w_numel + y_numel) * esize
    return fwd + ((y_numel + 2 * x_numel + 2 * w_numel) * esize if backward else 0)


class Conv3dRewrite(torch.nn.Module):
    """What a PyTorch user can do instead at stride 1: conv3d with the weight flipped and its
    channel axes swapped, padding d*(k-1) - p (cuDNN's fprop instead of its dgrad). The
    flipped weight is made once, as a user would store it; bf16 runs in channels_last_3d,
    its fastest form."""

    def __init__(self, conv: torch.nn.ConvTranspose3d, channels_last: bool):
        super().__init__()
        fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        w = conv.weight.detach().flip(2, 3, 4).transpose(0, 1).contiguous(memory_format=fmt)
        self.weight = torch.nn.Parameter(w)
        self.padding = [d * (k - 1) - p for d, k, p in zip(conv.dilation, conv.kernel_size, conv.padding)]
        self.dilation, self.fmt = conv.dilation, fmt

    def forward(self, x):
        return torch.nn.functional.conv3d(x.contiguous(memory_format=self.fmt), self.weight,
                                          None, 1, self.padding, self.dilation)


def rewrite_applies(p: dict) -> bool:
    return (all(s == 1 for s in p["stride"]) and p["groups"] == 1 and not p["bias"]
            and all(d * (k - 1) >= pad for d, k, pad in zip([1, 1, 1], p["kernel_size"], p["padding"])))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def bench_problem(name: str, ceil: dict, warmup: int, reps: int) -> list[dict]:
    p = ref.PROBLEMS[name]
    rows = []
    for mode, (dtype, allow) in MODES.items():
        torch.manual_seed(0)
        refm = ref.Model(*ref.init_args(p)).cuda().to(dtype)
        torch.manual_seed(0)
        ours = mn.ModelNew(*ref.init_args(p)).cuda().to(dtype)
        x = torch.rand(*ref.input_shape(p), device="cuda", dtype=dtype)
        row = {"problem": name, "mode": mode}
        rw = Conv3dRewrite(refm.conv_transpose3d, dtype == torch.bfloat16) if rewrite_applies(p) else None
        with tf32(allow):
            # ---- check first ----
            y_ref, y = refm(x), ours(x)
            dy = torch.randn_like(y_ref)
            grads = {}
            for tag, m in (("ref", refm), ("ours", ours)):
                xg = x.clone().requires_grad_(True)
                m.zero_grad(set_to_none=True)
                m(xg).backward(dy)
                grads[tag] = (xg.grad, m.conv_transpose3d.weight.grad)
            errs = [rel(y, y_ref)] + [rel(a, b) for a, b in zip(grads["ours"], grads["ref"])]
            row["check_rel_err"] = errs
            ok = all(e <= CHECK_TOL[mode] for e in errs) and torch.isfinite(y).all().item()
            if rw is not None:
                row["rewrite_rel_err"] = rel(rw(x), y_ref)
                assert row["rewrite_rel_err"] <= CHECK_TOL[mode], "the conv3d rewrite is wrong"
            row["correct"] = bool(ok)
            del grads, y, y_ref
            if not ok:
                print(f"  {name} {mode}: WRONG RESULT (rel err out/dx/dw {errs}); not timed",
                      file=sys.stderr)
                rows.append(row)
                continue

            # ---- then time ----
            xg = x.clone().requires_grad_(True)

            def fwd(m):
                with torch.no_grad():
                    m(x)

            def fwd_bwd(m):
                m.zero_grad(set_to_none=True)
                xg.grad = None
                m(xg).backward(dy)

            models = [("ref", refm), ("ours", ours)] + ([("rw", rw)] if rw is not None else [])
            for tag, m in models:
                row[f"{tag}_fwd_ms"] = time_ms(lambda: fwd(m), warmup, reps)
                row[f"{tag}_fwdbwd_ms"] = time_ms(lambda: fwd_bwd(m), warmup, max(3, reps // 2))
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fwd_bwd(m)
                torch.cuda.synchronize()
                row[f"{tag}_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
            # Ours again, without the host time of a call (CUDA graph replay): which rows the
            # kernels hold and which the host does.
            try:
                row["ours_fwd_graph_ms"] = graph_time_ms(lambda: fwd(ours), max(3, reps // 2))
            except RuntimeError as e:  # the synchronized timings above stand without it
                print(f"  {name} {mode}: graph replay timing failed: {e}", file=sys.stderr)
                row["ours_fwd_graph_ms"] = None

        w = ours.conv_transpose3d.weight
        y_shape = torch.Size(mn.output_size(x.shape[2:], w.shape[2:], p["stride"], p["padding"],
                                            p["output_padding"], [1, 1, 1]))
        y_numel = x.shape[0] * p["out_channels"] * y_shape.numel()
        flops = useful_flops(p, x.shape[0])
        esize = x.element_size()
        rate = max(ceil["fp32_tflops"], ceil["tf32_tflops"] / 3) if mode == "fp32" else ceil[f"{mode}_tflops"]
        for tag, nflops, backward in (("fwd", flops, False), ("fwdbwd", 3 * flops, True)):
            nbytes = min_bytes(x.numel(), w.numel(), y_numel, esize, backward)
            floor_ms = max(nflops / (rate * 1e9), nbytes / (ceil["copy_gbs"] * 1e6))
            row[f"{tag}_gflop"] = nflops / 1e9
            row[f"{tag}_floor_ms"] = floor_ms
            row[f"{tag}_speedup"] = row[f"ref_{tag}_ms"] / row[f"ours_{tag}_ms"]
            best = min(row[f"ref_{tag}_ms"], row.get(f"rw_{tag}_ms", float("inf")))
            row[f"{tag}_speedup_best"] = best / row[f"ours_{tag}_ms"]
            row[f"{tag}_tflops"] = nflops / row[f"ours_{tag}_ms"] / 1e9
            row[f"{tag}_roofline_pct"] = 100 * floor_ms / row[f"ours_{tag}_ms"]
        graph_ms = row["ours_fwd_graph_ms"]
        row["fwd_graph_roofline_pct"] = None if graph_ms is None else 100 * row["fwd_floor_ms"] / graph_ms
        rows.append(row)
        del refm, ours, rw, x, xg, dy
        torch.cuda.empty_cache()
    return rows


# U-Net upsampling layers (issue 6): kernel 2, stride 2, fp32 parameters under bf16 autocast,
# as a 3D U-Net decoder trains. name: (batch, Cin, Cout, input edge)
UNET_LAYERS = {"unet_320_256_16": (2, 320, 256, 16), "unet_64_32_64": (2, 64, 32, 64)}


def bench_unet(ceil: dict, warmup: int, reps: int) -> list[dict]:
    rows = []
    for name, (n, cin, cout, edge) in UNET_LAYERS.items():
        torch.manual_seed(0)
        refm = torch.nn.ConvTranspose3d(cin, cout, 2, stride=2).cuda()
        ours = mn.ConvTranspose3d(cin, cout, 2, stride=2).cuda()
        ours.load_state_dict(refm.state_dict())
        x = torch.randn(n, cin, edge, edge, edge, device="cuda")
        dy = torch.randn(n, cout, 2 * edge, 2 * edge, 2 * edge, device="cuda", dtype=torch.bfloat16)
        row = {"problem": name, "mode": "autocast-bf16"}
        # ---- check first ----
        res = {}
        for tag, m in (("ref", refm), ("ours", ours)):
            xg = x.clone().requires_grad_(True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = m(xg)
            y.backward(dy)
            res[tag] = (y, xg.grad, m.weight.grad, m.bias.grad)
        errs = [rel(a, b) for a, b in zip(res["ours"], res["ref"])]
        row["check_rel_err"] = errs
        row["correct"] = all(e <= CHECK_TOL["bf16"] for e in errs) and res["ours"][0].dtype == torch.bfloat16
        del res
        if not row["correct"]:
            print(f"  {name}: WRONG RESULT (rel err out/dx/dw/db {errs}); not timed", file=sys.stderr)
            rows.append(row)
            continue
        # ---- then time ----
        xg = x.clone().requires_grad_(True)

        def fwd(m):
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                m(x)

        def fwd_bwd(m):
            m.zero_grad(set_to_none=True)
            xg.grad = None
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = m(xg)
            y.backward(dy)

        for tag, m in (("ref", refm), ("ours", ours)):
            row[f"{tag}_fwd_ms"] = time_ms(lambda: fwd(m), warmup, reps)
            row[f"{tag}_fwdbwd_ms"] = time_ms(lambda: fwd_bwd(m), warmup, max(3, reps // 2))
        flops = 2.0 * n * cin * cout * edge ** 3 * 8
        x_b, w_b, y_b = x.numel() * 2, cin * cout * 8 * 2, dy.numel() * 2  # bf16 operands
        for tag, nflops, nbytes in (("fwd", flops, x_b + w_b + y_b),
                                    ("fwdbwd", 3 * flops, 2 * (x_b + w_b + y_b) + y_b + x_b + w_b)):
            floor_ms = max(nflops / (ceil["bf16_tflops"] * 1e9), nbytes / (ceil["copy_gbs"] * 1e6))
            row[f"{tag}_floor_ms"] = floor_ms
            row[f"{tag}_speedup"] = row[f"ref_{tag}_ms"] / row[f"ours_{tag}_ms"]
            row[f"{tag}_roofline_pct"] = 100 * floor_ms / row[f"ours_{tag}_ms"]
        rows.append(row)
        del refm, ours, x, xg, dy
        torch.cuda.empty_cache()
    return rows


def print_unet_table(rows: list[dict]) -> None:
    print("\nU-Net upsampling (kernel 2, stride 2, fp32 parameters, bf16 autocast; floor from bf16 bytes / FLOPs)\n")
    print("| layer | fwd ref ms | fwd ours ms | vs ref | fwd %roof | f+b ref ms | f+b ours ms | vs ref | f+b %roof |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if not r["correct"]:
            print(f"| {r['problem']} | WRONG RESULT: rel err {r['check_rel_err']} | not timed |")
            continue
        print(f"| {r['problem']} | {r['ref_fwd_ms']:.3f} | {r['ours_fwd_ms']:.3f} | {r['fwd_speedup']:.2f}x | "
              f"{r['fwd_roofline_pct']:.1f}% | {r['ref_fwdbwd_ms']:.3f} | {r['ours_fwdbwd_ms']:.3f} | "
              f"{r['fwdbwd_speedup']:.2f}x | {r['fwdbwd_roofline_pct']:.1f}% |")


def print_table(rows: list[dict], ceil: dict) -> None:
    print(f"\nGPU: {torch.cuda.get_device_name()}  (torch {torch.__version__})")
    print(f"ceilings: TF32 {ceil['tf32_tflops']:.0f} TFLOP/s, strict fp32 {ceil['fp32_tflops']:.0f}, "
          f"bf16 {ceil['bf16_tflops']:.0f}; copy {ceil['copy_gbs'] / 1e3:.2f} TB/s")
    print("floor = max(FLOPs / rate, min bytes / copy bw); strict fp32 rate = max(fp32, TF32/3); "
          "%roof = floor / ours\n")
    hdr = ("| problem | mode | fwd ref ms | fwd conv3d ms | fwd ours ms | vs ref | vs best | ours TFLOP/s "
           "| fwd floor ms | %roof | f+b ref ms | f+b conv3d ms | f+b ours ms | vs ref | vs best "
           "| ours TFLOP/s | f+b floor ms | %roof | peak MiB ref/ours |")
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for r in rows:
        if not r["correct"]:
            print(f"| {r['problem']} | {r['mode']} | WRONG RESULT: rel err {r['check_rel_err']} | not timed |")
            continue
        cells = [r["problem"], r["mode"]]
        for t in ("fwd", "fwdbwd"):
            rw = r.get(f"rw_{t}_ms")
            cells += [f"{r[f'ref_{t}_ms']:.3f}", "-" if rw is None else f"{rw:.3f}",
                      f"{r[f'ours_{t}_ms']:.3f}", f"{r[f'{t}_speedup']:.2f}x",
                      f"{r[f'{t}_speedup_best']:.2f}x", f"{r[f'{t}_tflops']:.1f}",
                      f"{r[f'{t}_floor_ms']:.3f}", f"{r[f'{t}_roofline_pct']:.1f}%"]
        cells.append(f"{r['ref_peak_mib']:.0f}/{r['ours_peak_mib']:.0f}")
        print("| " + " | ".join(cells) + " |")
    print("\nvs ref / vs best: reference time (or the faster of the reference and, at stride 1, "
          "the conv3d rewrite) over ours; >1 means ours is faster.")
    print("\nOur forward with and without the host time of a call (the table above times each call "
          "synchronized, as a harness does; a CUDA graph replay runs the same kernels with no host "
          "work between them):\n")
    print("| problem | mode | fwd ours ms, synchronized call | fwd ours ms, graph replay | host share "
          "| %roof synchronized | %roof graph |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if not r["correct"]:
            continue
        synced, graph = r["ours_fwd_ms"], r["ours_fwd_graph_ms"]
        cells = [f"{synced:.3f}", "-", "-", f"{r['fwd_roofline_pct']:.1f}%", "-"]
        if graph is not None:
            cells[1:3] = [f"{graph:.3f}", f"{max(0.0, 1 - graph / synced):.0%}"]
            cells[4] = f"{r['fwd_graph_roofline_pct']:.1f}%"
        print(f"| {r['problem']} | {r['mode']} | " + " | ".join(cells) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", choices=list(ref.PROBLEMS), action="append",
                    help="problem to run (repeatable); default: all")
    ap.add_argument("--json", help="write every number to this file")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--unet", action="store_true", help="also time the U-Net upsampling layers")
    ap.add_argument("--unet-only", action="store_true", help="only the U-Net upsampling layers")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench.py needs a CUDA device", file=sys.stderr)
        return 2
    t0 = time.time()
    ceil = measure_ceilings()
    print(f"ceilings measured ({time.time() - t0:.1f}s): {ceil}", flush=True)
    rows, unet_rows = [], []
    for name in [] if args.unet_only else (args.problem or list(ref.PROBLEMS)):
        t = time.time()
        rows += bench_problem(name, ceil, args.warmup, args.reps)
        print(f"[{name}] done in {time.time() - t:.1f}s", flush=True)
    if args.unet or args.unet_only:
        unet_rows = bench_unet(ceil, args.warmup, args.reps)
    if rows:
        print_table(rows, ceil)
    if unet_rows:
        print_unet_table(unet_rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "ceilings": ceil, "rows": rows, "unet_rows": unet_rows}, f, indent=1)
    return 0 if all(r["correct"] for r in rows + unet_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
