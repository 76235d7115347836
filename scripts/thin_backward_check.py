"""A numpy model of the thin-group backward kernels' index math (grad_input.cu's
thin_dgrad_kernel, grad_weight.cu's thin_wgrad_kernel), checked against dx and dw computed
directly from rule (1), o = i*s - p + r*d. Runs on the CPU, no GPU needed.

It models what the kernel does per block and warp: the dy window (planes od of the valid
depth taps, rows from ih0*sH - pH, columns from iw0*sW - pW, columns stored by residue mod
sW as thin_stage_window stores them), and each warp's reads at slot
(pi*rows + u*sH + rh*dH) * pitch + col_off[rw] + j for position j of its tile, with the
host's window sizes and col_off; and thin_wgrad_kernel's tap offsets toff(r) into a
window of all kD planes (zero where od is outside dy) against its x tile. Exact (float64) sums: what is checked is which dy element
each (position, tap) reads, not rounding.

    python3 scripts/thin_backward_check.py
"""

from __future__ import annotations

import itertools
import sys

import numpy as np


def direct_dgrad(dy, w, P):
    N, Cin, G = P["N"], P["Cin"], P["G"]
    cin_g, cout_g = Cin // G, dy.shape[1] // G
    D, H, W = P["in"]
    s, p, d, k = P["s"], P["p"], P["d"], P["k"]
    dx = np.zeros((N, Cin, D, H, W))
    out = dy.shape[2:]
    for id_, ih, iw in itertools.product(range(D), range(H), range(W)):
        for rd, rh, rw in itertools.product(range(k[0]), range(k[1]), range(k[2])):
            o = (id_ * s[0] - p[0] + rd * d[0], ih * s[1] - p[1] + rh * d[1], iw * s[2] - p[2] + rw * d[2])
            if not all(0 <= o[e] < out[e] for e in range(3)):
                continue
            for g in range(G):
                v = dy[:, g * cout_g:(g + 1) * cout_g, o[0], o[1], o[2]]  # [N, cout_g]
                wt = w[g * cin_g:(g + 1) * cin_g, :, rd, rh, rw]           # [cin_g, cout_g]
                dx[:, g * cin_g:(g + 1) * cin_g, id_, ih, iw] += v @ wt.T
    return dx


def host_plan(P, mw):
    """The launcher's window sizes and col_off (grad_input_thin)."""
    s, d, k = P["s"], P["d"], P["k"]
    rows = 7 * s[1] + (k[1] - 1) * d[1] + 1
    cols = (16 * mw - 1) * s[2] + (k[2] - 1) * d[2] + 1
    qc = (cols + s[2] - 1) // s[2]
    col_off = [(rw * d[2]) % s[2] * qc + (rw * d[2]) // s[2] for rw in range(k[2])]
    return rows, cols, qc, col_off


def stage_window(dyg, planes, rows, cols, qc, mult, row0, col0):
    """The window as thin_stage_window fills it, slot-indexed: dy of one (n, g) ([cout_g,
    D, H, W]) at planes[pi], rows row0.., columns col0.. stored by residue mod mult; zero
    outside dy, NaN in slots it never writes."""
    out = dyg.shape[1:]
    pitch = mult * qc
    win = np.full((len(planes) * rows * pitch, dyg.shape[0]), np.nan)
    for pi, od in enumerate(planes):
        for r, c in itertools.product(range(rows), range(cols)):
            slot = (pi * rows + r) * pitch + (c % mult) * qc + c // mult
            oh, ow = row0 + r, col0 + c
            inside = 0 <= od < out[0] and 0 <= oh < out[1] and 0 <= ow < out[2]
            win[slot] = dyg[:, od, oh, ow] if inside else 0.0
    return win


def model_dgrad(dy, w, P, mw):
    N, Cin, G = P["N"], P["Cin"], P["G"]
    cin_g, cout_g = Cin // G, dy.shape[1] // G
    D, H, W = P["in"]
    s, p, d, k = P["s"], P["p"], P["d"], P["k"]
    out = dy.shape[2:]
    rows, cols, qc, col_off = host_plan(P, mw)
    pitch = s[2] * qc
    RW = 16 * mw
    dx = np.full((N, Cin, D, H, W), np.nan)
    tiles_h, tiles_w = (H + 7) // 8, (W + RW - 1) // RW
    for n, g, id_, th, tw in itertools.product(range(N), range(G), range(D), range(tiles_h), range(tiles_w)):
        ih0, iw0 = th * 8, tw * RW
        taps = [(rd, id_ * s[0] - p[0] + rd * d[0]) for rd in range(k[0])]
        taps = [(rd, od) for rd, od in taps if 0 <= od < out[0]]
        win = stage_window(dy[n, g * cout_g:(g + 1) * cout_g], [od for _, od in taps], rows, cols, qc, s[2],
                           ih0 * s[1] - p[1], iw0 * s[2] - p[2])
        for u in range(8):
            ih = ih0 + u
            if ih >= H:
                continue
            acc = np.zeros((RW, cin_g))
            for pi, (rd, _) in enumerate(taps):
                for rh in range(k[1]):
                    prow = (pi * rows + u * s[1] + rh * d[1]) * pitch
                    for rw in range(k[2]):
                        a = win[prow + col_off[rw] + np.arange(RW)]  # [RW, cout_g]; NaN = unstaged
                        acc += a @ w[g * cin_g:(g + 1) * cin_g, :, rd, rh, rw].T
            for j in range(RW):
                if iw0 + j < W:
                    dx[n, g * cin_g:(g + 1) * cin_g, id_, ih, iw0 + j] = acc[j]
    return dx


def direct_wgrad(dy, x, P):
    N, Cin, G = P["N"], P["Cin"], P["G"]
    cin_g, cout_g = Cin // G, dy.shape[1] // G
    D, H, W = P["in"]
    s, p, d, k = P["s"], P["p"], P["d"], P["k"]
    out = dy.shape[2:]
    dw = np.zeros((Cin, cout_g, *k))
    for id_, ih, iw in itertools.product(range(D), range(H), range(W)):
        for rd, rh, rw in itertools.product(range(k[0]), range(k[1]), range(k[2])):
            o = (id_ * s[0] - p[0] + rd * d[0], ih * s[1] - p[1] + rh * d[1], iw * s[2] - p[2] + rw * d[2])
            if not all(0 <= o[e] < out[e] for e in range(3)):
                continue
            for g in range(G):
                xv = x[:, g * cin_g:(g + 1) * cin_g, id_, ih, iw]           # [N, cin_g]
                dv = dy[:, g * cout_g:(g + 1) * cout_g, o[0], o[1], o[2]]  # [N, cout_g]
                dw[g * cin_g:(g + 1) * cin_g, :, rd, rh, rw] += xv.T @ dv
    return dw


def model_wgrad(dy, x, P, mw):
    N, Cin, G = P["N"], P["Cin"], P["G"]
    cin_g, cout_g = Cin // G, dy.shape[1] // G
    D, H, W = P["in"]
    s, p, d, k = P["s"], P["p"], P["d"], P["k"]
    out = dy.shape[2:]
    rows, cols, qc, col_off = host_plan(P, mw)
    pitch = s[2] * qc
    RW = 16 * mw
    kvol = k[0] * k[1] * k[2]
    toff = []
    for tap in range(kvol):
        rw, rh, rd = tap % k[2], (tap // k[2]) % k[1], tap // (k[1] * k[2])
        toff.append((rd * rows + rh * d[1]) * pitch + col_off[rw])
    dw = np.zeros((Cin, cout_g, kvol))
    tiles_h, tiles_w = (H + 7) // 8, (W + RW - 1) // RW
    for n, g, id_, th, tw in itertools.product(range(N), range(G), range(D), range(tiles_h), range(tiles_w)):
        ih0, iw0 = th * 8, tw * RW
        # every kD plane, zero where od is outside dy
        win = stage_window(dy[n, g * cout_g:(g + 1) * cout_g], [id_ * s[0] - p[0] + rd * d[0] for rd in range(k[0])],
                           rows, cols, qc, s[2], ih0 * s[1] - p[1], iw0 * s[2] - p[2])
        xt = np.zeros((8, RW, cin_g))
        for u, j in itertools.product(range(8), range(RW)):
            if ih0 + u < H and iw0 + j < W:
                xt[u, j] = x[n, g * cin_g:(g + 1) * cin_g, id_, ih0 + u, iw0 + j]
        for u in range(8):
            if ih0 + u >= H:
                break
            for tap in range(kvol):
                b = win[toff[tap] + u * s[1] * pitch + np.arange(RW)]  # [RW, cout_g]
                dw[g * cin_g:(g + 1) * cin_g, :, tap] += xt[u].T @ b
    return dw.reshape(Cin, cout_g, *k)


CASES = {
    # kb72's geometry, cut down: stride 2, padding (1, 2, 3), kernel (3, 5, 7), 2 groups
    "kb72_small": dict(N=1, Cin=4, Cout=4, G=2, k=(3, 5, 7), s=(2, 2, 2), p=(1, 2, 3), op=(1, 1, 1),
                       d=(1, 1, 1), inp=(3, 9, 20)),
    # test_parity's dgrad_mixed_residues
    "mixed_residues": dict(N=1, Cin=6, Cout=8, G=2, k=(2, 3, 4), s=(2, 3, 4), p=(1, 2, 3), op=(1, 2, 1),
                           d=(3, 1, 3), inp=(3, 7, 37)),
    # stride 1 (residues degenerate), dilation 2 in w
    "stride1_dil2": dict(N=2, Cin=3, Cout=5, G=1, k=(2, 2, 3), s=(1, 1, 1), p=(0, 1, 2), op=(0, 0, 1),
                         d=(1, 1, 2), inp=(2, 10, 18)),
}


def main() -> int:
    rng = np.random.default_rng(0)
    ok = True
    for name, c in CASES.items():
        P = dict(N=c["N"], Cin=c["Cin"], G=c["G"], in_=c["inp"], s=c["s"], p=c["p"], d=c["d"], k=c["k"])
        P["in"] = c["inp"]
        out = [(i - 1) * s - 2 * p + d * (k - 1) + op + 1
               for i, s, p, d, k, op in zip(c["inp"], c["s"], c["p"], c["d"], c["k"], c["op"])]
        dy = rng.standard_normal((c["N"], c["Cout"], *out))
        w = rng.standard_normal((c["Cin"], c["Cout"] // c["G"], *c["k"]))
        ref = direct_dgrad(dy, w, P)
        x = rng.standard_normal((c["N"], c["Cin"], *c["inp"]))
        ref_w = direct_wgrad(dy, x, P)
        for mw in (1, 2):
            for what, got, want in (("dx", model_dgrad(dy, w, P, mw), ref), ("dw", model_wgrad(dy, x, P, mw), ref_w)):
                err = np.abs(got - want).max() if not np.isnan(got).any() else float("nan")
                good = not np.isnan(got).any() and err < 1e-9
                ok &= good
                print(f"{name} mw={mw} {what}: max |model - direct| = {err:.3g} {'ok' if good else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
