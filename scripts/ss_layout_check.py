"""A CPU model of grad weight's SS path (wgrad_wg_kernel<16-bit, NW, false, true>): the
slice pack, the bulk-copied window, the tap shifts, the position table and wgmma's M-major
A descriptor (the PTX ISA's canonical no-swizzle layout), emulated element by element in
numpy and compared with dw computed directly. It checks the index math of the design, not
the hardware: run it after any change to that path, before spending device time.

    python scripts/ss_layout_check.py
"""

from __future__ import annotations

import itertools
import sys

import numpy as np

BM, KW, EP = 256, 16, 8  # 16-bit: positions a tile, a k-step, a 16-byte piece


def win_dims(P):
    """win_dims(P, kJobGradInput): (positions, multiplier, taps, off0, dstep) a dimension."""
    return [dict(P=P["in"][e], mult=P["s"][e], T=P["k"][e], off0=-P["p"][e], dstep=P["d"][e]) for e in range(3)]


def span(w):
    reach = (w["T"] - 1 if w["T"] > 1 else 0) * w["dstep"]
    return abs(reach)


def off_min(w):
    reach = (w["T"] - 1 if w["T"] > 1 else 0) * w["dstep"]
    return w["off0"] + min(reach, 0)


def model(P, ch=64, nsets=7):
    """dw as the SS kernel computes it, [Cin, Cout/G, kvol]."""
    N, G = P["N"], P["G"]
    cin_g, cout_g = P["Cin"] // G, P["Cout"] // G
    kD, kH, kW = P["k"]
    kvol, ptaps = kD * kH * kW, kH * kW
    out = P["out"]
    wd = win_dims(P)
    Wd, H = wd[2]["P"], wd[1]["P"]
    assert Wd % 16 == 0 and BM % Wd == 0 and BM // Wd <= H and wd[2]["mult"] == 1
    # wgrad_geometry (cap: taps a block, one tap a set)
    cap = 2 * nsets * 64 // ch
    trows = BM // Wd
    R = (min(H, trows) - 1) * wd[1]["mult"] + span(wd[1]) + 1
    C = (Wd - 1) * wd[2]["mult"] + span(wd[2]) + 1
    assert off_min(wd[2]) >= 0 and off_min(wd[2]) + C <= out[2], "SS needs bulk rows"
    if ptaps <= cap:
        win_planes = min(kD, cap // ptaps)
        while kD % win_planes:
            win_planes -= 1
        tap_groups, sub_groups, tpg = kD // win_planes, 1, win_planes * ptaps
    else:
        sub_groups = -(-ptaps // cap)
        tpg = -(-ptaps // sub_groups)
        tap_groups, win_planes = kD * sub_groups, 1
    Td = win_planes
    row_elems = C * 8                        # a window row of one slice: C positions x 8 channels
    slice_e = -(-(Td * R * C * 16) // 128) * 128 // 2  # slice_b in elements (2-byte)
    chunks = -(-cout_g // ch)
    pk_chunks = chunks * ch // 8             # slices of 8 channels a group
    vol = out[0] * out[1] * out[2]
    # the pack: dyp[n][slice][vol][8], slice = g * pk_chunks + c // 8
    dy = P["dy"]
    dyp = np.zeros((N, G * pk_chunks, vol, 8), np.float64)
    for g in range(G):
        for c in range(cout_g):
            dyp[:, g * pk_chunks + c // 8, :, c % 8] = dy[:, g * cout_g + c].reshape(N, vol)
    x = P["x"]
    dw = np.full((P["Cin"], cout_g, kvol), np.nan)
    tiles_pp = -(-(H * Wd) // BM)
    plane = H * Wd
    # pos_tab (row tiles): window position x 16 bytes of tile position p, tile at m0 = 0
    pos_tab = [((p // Wd) * wd[1]["mult"] * C + (p % Wd) * wd[2]["mult"]) * 16 for p in range(BM)]
    for g, chunk, tg in itertools.product(range(G), range(chunks), range(tap_groups)):
        if sub_groups > 1:
            sub = tg % sub_groups
            tap0 = (tg // sub_groups) * ptaps + sub * tpg
            ntaps = min(tpg, ptaps - sub * tpg)
        else:
            tap0 = tg * tpg
            ntaps = min(tpg, kvol - tap0)
        rd0 = tap0 // ptaps

        def tap_shift(tap):
            rw, rh, rd = tap % kW, (tap // kW) % kH, tap // ptaps - rd0
            sh = wd[1]["off0"] + rh * wd[1]["dstep"] - off_min(wd[1])
            sw = wd[2]["off0"] + rw * wd[2]["dstep"] - off_min(wd[2])
            return (rd * R + sh) * C + sw

        nsets_blk = -(-(ntaps * ch) // 64)
        acc = np.zeros((nsets_blk, 64, cin_g))
        for n, jd, t in itertools.product(range(N), range(wd[0]["P"]), range(tiles_pp)):
            m0 = t * BM
            jh0 = m0 // Wd
            od0 = jd * wd[0]["mult"] + wd[0]["off0"] + rd0 * wd[0]["dstep"]
            oh0 = jh0 * wd[1]["mult"] + off_min(wd[1])
            ow0 = off_min(wd[2])
            # the window: ch // 8 slices, Td * R rows of C positions x 8 channels (bulk rows)
            smem = np.full(ch // 8 * slice_e, np.nan)
            for rr, c8 in itertools.product(range(Td * R), range(ch // 8)):
                td, r = rr // R, rr % R
                od, oh = od0 + td * wd[0]["dstep"], oh0 + r
                dst = c8 * slice_e + rr * row_elems
                if 0 <= od < out[0] and 0 <= oh < out[1]:
                    v0 = (od * out[1] + oh) * out[2] + ow0
                    smem[dst:dst + row_elems] = dyp[n, g * pk_chunks + chunk * (ch // 8) + c8, v0:v0 + C].ravel()
                else:
                    smem[dst:dst + row_elems] = 0.0
            # the x tile (B): x[n, g * cin_g + ci, jd, m0 + k], zero past the plane
            xt = np.zeros((BM, cin_g))
            for k in range(BM):
                if m0 + k < plane:
                    xt[k] = x[n, g * cin_g:(g + 1) * cin_g, jd].reshape(cin_g, -1)[:, m0 + k]
            for s in range(nsets_blk):
                tl = s * 64 // ch
                off = tap_shift(tap0 + (tl if tl < ntaps else 0)) * 16
                for k0 in range(0, BM, KW):
                    start = off + pos_tab[k0]  # bytes from the window's start
                    # M-major canonical, no swizzle: ((8,1,m),(8,k)):((1,8,SBO),(8,LBO)) elements
                    mm, kk = np.meshgrid(np.arange(64), np.arange(KW), indexing="ij")
                    e = start // 2 + (mm % 8) + (mm // 8) * slice_e + (kk % 8) * 8 + (kk // 8) * 64
                    A = smem[e]
                    Bk = xt[k0:k0 + KW]
                    if np.isnan(A).any():
                        raise AssertionError(f"A reads an element no copy wrote: set {s} k0 {k0}")
                    acc[s] += A @ Bk
        for s in range(nsets_blk):
            for m in range(64):
                tl, co = (s * 64 + m) // ch, chunk * ch + (s * 64 + m) % ch
                if tl < ntaps and co < cout_g:
                    dw[g * cin_g:(g + 1) * cin_g, co, tap0 + tl] = acc[s, m]
    return dw


def direct(P):
    """dw[g*cin_g + ci, co, r] = sum over n, i of x[n, ci, i] * dy[n, co, i*s - p + r*d]."""
    N, G = P["N"], P["G"]
    cin_g, cout_g = P["Cin"] // G, P["Cout"] // G
    kD, kH, kW = P["k"]
    x, dy, out = P["x"], P["dy"], P["out"]
    dw = np.zeros((P["Cin"], cout_g, kD * kH * kW))
    for rd, rh, rw in itertools.product(range(kD), range(kH), range(kW)):
        r = (rd * kH + rh) * kW + rw
        for i in itertools.product(*(range(P["in"][e]) for e in range(3))):
            o = [i[e] * P["s"][e] - P["p"][e] + (rd, rh, rw)[e] * P["d"][e] for e in range(3)]
            if all(0 <= o[e] < out[e] for e in range(3)):
                for g in range(G):
                    xs = x[:, g * cin_g:(g + 1) * cin_g, i[0], i[1], i[2]]
                    ds = dy[:, g * cout_g:(g + 1) * cout_g, o[0], o[1], o[2]]
                    dw[g * cin_g:(g + 1) * cin_g, :, r] += xs.T @ ds
    return dw


def problem(cin, cout, k, p, g, batch, size, seed=0):
    rng = np.random.default_rng(seed)
    k, p = [k] * 3 if isinstance(k, int) else list(k), [p] * 3 if isinstance(p, int) else list(p)
    out = [(size[e] - 1) - 2 * p[e] + (k[e] - 1) + 1 for e in range(3)]
    return dict(N=batch, Cin=cin, Cout=cout, G=g, k=k, p=p, s=[1, 1, 1], d=[1, 1, 1], **{"in": list(size)},
                out=out, x=rng.standard_normal((batch, cin, *size)), dy=rng.standard_normal((batch, cout, *out)))


def main() -> int:
    cases = {  # test_parity.py's WGMMA_CASES that run SS, and a kb68-like plane (smaller)
        "wgrad_ss": problem(24, 64, (2, 3, 3), (1, 1, 0), 1, 2, (3, 12, 32)),
        "wgrad_ss_groups_chunks": problem(64, 256, (1, 3, 5), 0, 2, 1, (2, 8, 64)),
        "kb68_like": problem(32, 64, (3, 5, 5), 0, 1, 1, (3, 8, 64)),
    }
    bad = 0
    for name, P in cases.items():
        got, want = model(P), direct(P)
        err = np.abs(got - want).max() / np.abs(want).max()
        print(f"{name}: max rel error {err:.2e}")
        bad += not err < 1e-12
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
