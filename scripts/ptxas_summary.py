"""Summarize `-Xptxas -v` output: one line per kernel with registers, shared memory, spills."""
import re
import subprocess
import sys

text = open(sys.argv[1]).read()
rows, name = [], None
for line in text.splitlines():
    m = re.search(r"Compiling entry function '(\w+)'", line)
    if m:
        name = m.group(1)
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and name:
        rows.append([name, *m.groups()])
    m = re.search(r"Used (\d+) registers", line)
    if m and rows and rows[-1][0] == name and len(rows[-1]) == 4:
        smem = re.search(r"(\d+) bytes smem", line)
        rows[-1] += [m.group(1), smem.group(1) if smem else "0"]
names = [r[0] for r in rows]
try:
    demangled = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True,
                               text=True).stdout.splitlines()
except OSError:
    demangled = names
spills = 0
for r, d in zip(rows, demangled):
    spills += int(r[2]) + int(r[3])
    d = re.sub(r"ct3d::|c10::", "", d)
    print(f"regs {r[4] if len(r) > 4 else '?':>4}  smem {r[5] if len(r) > 5 else '?':>6}  "
          f"stack {r[1]:>4}  spill st/ld {r[2]}/{r[3]}  {d[:110]}")
print(f"{len(rows)} kernels, {spills} bytes of spills in total")
