"""Nightly-style fuzzing of conv_transpose3d against a float64 ground truth.

Draws random valid configurations of every nn.ConvTranspose3d argument (channels, groups up
to depthwise, kernel, stride, padding, output_padding, dilation, bias, batch including 0,
sizes including 1-voxel inputs and kernels larger than the input), a precision mode (fp32
with and without TF32, fp16, bf16, fp64), a memory layout (contiguous, channels_last_3d,
channel-sliced and W-strided views) and a kernel family (auto mostly; tiled, direct), runs
forward and backward and checks the output and all three gradients with
test_parity.check_against_truth: the contract's bounds against float64, no less accurate
than the reference, allclose to it where the contract says so, PyTorch's output strides.

Every mismatch is reported with a command line that reproduces it.

    python scripts/fuzz.py --count 2000 --seed 0 [--json mismatches.json]
    python scripts/fuzz.py --repro '<config json>'
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import test_parity as tp  # noqa: E402  (the checker and the precision contract live there)


def fuzz_case(rng: random.Random) -> dict:
    """One random case: a configuration plus how to run it."""
    if rng.random() < 0.1:  # depthwise
        c = rng.randint(1, 12)
        g, cin, cout = c, c, c * rng.choice([1, 1, 2])
    else:
        g = rng.choice([1, 1, 1, 1, 2, 3, 4])
        wide = rng.random() < 0.1  # several channel chunks / N tiles; wgrad's FFMA fallback past 64
        cin = g * (rng.randint(1, 80) if wide else rng.randint(1, 12))
        cout = g * (rng.randint(1, 80) if wide else rng.randint(1, 12))
    k = [rng.randint(1, 5) for _ in range(3)]
    s = [rng.choice([1, 1, 2, 2, 3, 4]) for _ in range(3)]
    d = [rng.choice([1, 1, 1, 2, 3]) for _ in range(3)]
    size = [rng.choice([1, 1, 2, 3, 4, 5, 6, 8, 9]) for _ in range(3)]
    op = [rng.randint(0, max(s[e], d[e]) - 1) if rng.random() < 0.4 else 0 for e in range(3)]
    p = []
    for e in range(3):
        full = (size[e] - 1) * s[e] + d[e] * (k[e] - 1) + op[e] + 1
        p.append(rng.randint(0, (full - 1) // 2) if rng.random() < 0.6 else 0)
    batch = 0 if rng.random() < 0.03 else rng.choice([1, 1, 2, 3])
    cfg = tp.conv_cfg(cin, cout, tuple(k), s=tuple(s), p=tuple(p), op=tuple(op), g=g,
                      bias=rng.random() < 0.5, d=tuple(d), batch=batch, size=tuple(size))
    mode = rng.choice(list(tp.MODES))
    layout = rng.choice(["contiguous"] * 4 + ["channels_last", "channels_last", "channel_slice",
                                              "strided_w"])
    algo = "auto" if mode == "fp64" else rng.choice(["auto"] * 6 + ["tiled", "direct"])
    return dict(cfg=cfg, mode=mode, layout=layout, algo=algo, seed=rng.randint(0, 2 ** 31 - 1))


def run_case(case: dict) -> None:
    tp.check_against_truth(case["cfg"], case["mode"], algo=case["algo"], seed=case["seed"],
                           layout=case["layout"])


def repro_line(case: dict) -> str:
    return f"python scripts/fuzz.py --repro '{json.dumps(case)}'"


def run(count: int, seed: int, log=None, tally: dict | None = None) -> list[dict]:
    """Runs count random cases; returns the mismatches (case, error, repro line). tally, if
    given, counts the cases per mode and per layout."""
    import model_new as mn
    mn.load_extension().set_poison(True)  # unwritten outputs stay NaN and fail the checks
    rng = random.Random(seed)
    mismatches = []
    t0 = time.time()
    for i in range(count):
        case = fuzz_case(rng)
        if tally is not None:
            for key in (case["mode"], case["layout"]):
                tally[key] = tally.get(key, 0) + 1
        try:
            run_case(case)
        except Exception as err:  # a failed check or an error: report it, keep going
            msg = "".join(traceback.format_exception_only(type(err), err)).strip()
            mismatches.append(dict(case=case, error=msg, repro=repro_line(case)))
            if log:
                print(f"MISMATCH {len(mismatches)} (case {i}): {msg[:400]}\n  {repro_line(case)}",
                      file=log, flush=True)
        if log and (i + 1) % 250 == 0:
            print(f"{i + 1}/{count} cases, {len(mismatches)} mismatches, {time.time() - t0:.0f}s",
                  file=log, flush=True)
    return mismatches


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the mismatches here")
    ap.add_argument("--repro", help="run one case given as JSON (from a mismatch report)")
    args = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("fuzz.py needs a CUDA device", file=sys.stderr)
        return 2
    if args.repro:
        case = json.loads(args.repro)
        case["cfg"] = {k: tuple(v) if isinstance(v, list) else v for k, v in case["cfg"].items()}
        import model_new as mn
        mn.load_extension().set_poison(True)
        run_case(case)
        print("case passes")
        return 0
    t0 = time.time()
    tally = {}
    mismatches = run(args.count, args.seed, log=sys.stdout, tally=tally)
    print(f"\nfuzz: {args.count} cases (seed {args.seed}) in {time.time() - t0:.0f}s on "
          f"{torch.cuda.get_device_name()}: {len(mismatches)} mismatches")
    for what, names in (("mode", tp.MODES), ("layout", tp.LAYOUTS)):
        print(f"cases per {what}:", ", ".join(f"{k} {tally[k]}" for k in sorted(names) if k in tally))
    for m in mismatches:
        print(f"- {m['error'][:300]}\n  {m['repro']}")
    if args.json:
        Path(args.json).write_text(json.dumps(mismatches, indent=1))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
