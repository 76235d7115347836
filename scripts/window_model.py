"""A model of the wgmma window kernel's geometry (run_window_wg in kernels/window_wg.cuh),
without a GPU: per problem and pass, the MACs the tiles compute against the useful ones
(bench.py's floor counts those), split into their factors, and whether a plane's last tile
leaves a warpgroup idle (what CT3D_WG_SKIP_IDLE skips). NOTES.md, "What the window design
can reach", has its table. A model: keep it in step with the planner when that changes.

    python3 scripts/window_model.py [--problem kb58 ...] [--half]

--half: the half-width shape (CT3D_WG_TWO_BLOCKS=1: 256 positions a block).
"""
import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import reference as ref  # noqa: E402


def t3(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


def phase_dim(c, k, s, p, d, out):
    """common.cuh's phase_dim: (positions, taps, tap step in the source) of phase c."""
    P = (out - c + s - 1) // s if c < out else 0
    r0 = next((r for r in range(k) if (c + p - r * d) % s == 0), -1)
    g = math.gcd(s, d)
    T = 0 if r0 < 0 else (k - 1 - r0) // (s // g) + 1
    return P, T, d // g


def geometry(cfg: dict, job: str, q: int):
    """Sub-problems (phases) of a pass as (Ph, Pw, C, taps h, taps w), the stack J, q_step."""
    k, s, p = t3(cfg["kernel_size"]), t3(cfg["stride"]), t3(cfg["padding"])
    op, d = t3(cfg["output_padding"]), t3(cfg.get("dilation", 1))
    inp, G = cfg["input"], cfg["groups"]
    out = [(inp[e] - 1) * s[e] - 2 * p[e] + d[e] * (k[e] - 1) + op[e] + 1 for e in range(3)]
    if job == "dgrad" and (s[1] != 1 or s[2] != 1):
        return None  # grad input at stride > 1 in h or w: not the window kernel
    out_cg = (cfg["out_channels"] if job == "fwd" else cfg["in_channels"]) // G
    J = min(64 // out_cg, k[2]) if out_cg <= 32 and s[2] == 1 else 1
    while J > 1 and (J - 1) * d[2] > q // 4:
        J -= 1
    subs = []
    if job == "fwd":
        for ch in range(s[1]):
            for cw in range(s[2]):
                Ph, Th, _ = phase_dim(ch, k[1], s[1], p[1], d[1], out[1])
                Pw, Tw, dw = phase_dim(cw, k[2], s[2], p[2], d[2], out[2])
                if Ph and Pw:
                    subs.append((Ph, Pw, Pw + max(Tw - 1, 0) * dw, Th, Tw))
    else:
        subs.append((inp[1], inp[2], inp[2] + (k[2] - 1) * d[2], k[1], k[2]))
    return subs, J, q - (J - 1) * d[2], out_cg, out


def report(name: str, cfg: dict, job: str, split: bool, half: bool) -> str:
    q = 256 if split or half else 512
    g = geometry(cfg, job, q)
    if g is None:
        return f"{name} {job}: not on the window kernel"
    subs, J, q_step, out_cg, _ = g
    rows = J * out_cg / (64 * math.ceil(J * out_cg / 64)) if J > 1 else out_cg / (64 * math.ceil(out_cg / 64))
    lines = []
    for Ph, Pw, C, Th, Tw in subs[:1]:  # the first phase stands for all at stride 1
        tiles = math.ceil(Ph * C / q_step)
        last = Ph * C - (tiles - 1) * q_step
        slots = Tw / (math.ceil(Tw / J) * J)
        pos = Ph * Pw / (tiles * q)
        # forward at stride 1: an output position takes every tap, of which those reading
        # inside x are the useful ones (x's h x w over the output's)
        halo = cfg["input"][1] * cfg["input"][2] / (Ph * Pw)
        ceiling = rows * slots * pos * halo
        lines.append(f"{name} {job} {'3xTF32' if split else 'TF32/16-bit'}{' half' if half else ''}: J={J} "
                     f"tiles/plane={tiles} (last {last} of {q}, warpgroup 1 idle: {last <= q // 2}) "
                     f"rows {rows:.3f} tap slots {slots:.3f} positions {pos:.3f}"
                     + (f" h/w halo {halo:.3f} -> ceiling {100 * ceiling:.0f}% of the floor" if job == "fwd" else ""))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problem", action="append", choices=sorted(ref.PROBLEMS))
    ap.add_argument("--half", action="store_true", help="the half-width shape (two blocks an SM)")
    a = ap.parse_args()
    for name in a.problem or ["kb58", "kb61", "kb68"]:
        p = ref.PROBLEMS[name]
        cfg = dict(p, dilation=1)
        for job in ("fwd", "dgrad"):
            for split in (False, True):
                print(report(name, cfg, job, split, a.half and not split))


if __name__ == "__main__":
    main()
