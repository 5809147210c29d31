"""Short per-kernel summary of an `ncu --csv --page details` file (scripts/ncu_decode.sh)."""
import csv
import sys
from collections import defaultdict

WANT = ("Duration", "DRAM Throughput", "Memory Throughput", "Registers Per Thread", "Achieved Occupancy",
        "Block Size", "Grid Size", "Dynamic Shared Memory Per Block", "Static Shared Memory Per Block")
rows = [r for r in csv.DictReader(line for line in open(sys.argv[1]) if line.startswith('"'))]
by = defaultdict(dict)
for r in rows:
    key = (r["ID"], r["Kernel Name"][:40])
    by[key][r["Metric Name"]] = (r["Metric Value"], r["Metric Unit"])
for (i, name), mets in by.items():
    main = ", ".join(f"{k.split()[0]}{'/'.join(w[0] for w in k.split()[1:])}={mets[k][0]}{mets[k][1]}"
                     for k in WANT if k in mets)
    stalls = []
    for k, v in mets.items():
        if "issue_stalled" in k or "Warp Cycles Per Issued" in k:
            try:
                stalls.append((float(v[0].replace(",", "")), k.replace("smsp__average_warps_issue_stalled_", "")
                               .replace("_per_issue_active.ratio", "")))
            except ValueError:
                pass
    print(f"[{i}] {name}: {main}")
    print("     " + "; ".join(f"{k}={v:.2f}" for v, k in sorted(stalls, reverse=True)[:7]))
if not by:
    print("no rows parsed; head of the file:")
    print(open(sys.argv[1]).read()[:1500])
