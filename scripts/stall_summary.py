"""Stall reasons and hottest instructions of an ncu source page (--page source --csv
--print-source sass), as scripts/diag_wgrad.sh writes it.

    python3 scripts/stall_summary.py src.csv [top (12)]
"""
import csv
import sys

rows = list(csv.reader(open(sys.argv[1])))
top_n = int(sys.argv[2]) if len(sys.argv) > 2 else 12
hdr, data = rows[1], rows[2:]
num = lambda v: float(v) if v not in ("", "-") else 0.0  # noqa: E731
i_s, i_src, i_ex = (hdr.index(h) for h in ("Warp Stall Sampling (All Samples)", "Source", "Instructions Executed"))
total = sum(num(r[i_s]) for r in data) or 1.0
reasons = [i for i, h in enumerate(hdr) if h.startswith("stall_") and "Not Issued" not in h]
print("stall reasons (% of samples):", ", ".join(
    f"{hdr[i][6:]} {100 * s / total:.1f}" for s, i in sorted(((sum(num(r[i]) for r in data), i) for i in reasons), reverse=True)[:8]))
for k in sorted(sorted(range(len(data)), key=lambda k: -num(data[k][i_s]))[:top_n]):
    r = data[k]
    print(f"{k:6d} {100 * num(r[i_s]) / total:5.1f}% exec {r[i_ex]:>10s}  {r[i_src][:70]}")
