"""Sums an Nsight Compute CSV (ncu --csv --metrics gpu__time_duration.sum ...) per kernel name and grid size.

Usage: python3 bench/ncu_summary.py ncu.csv [--top 40]
Prints count, total and mean microseconds per (kernel, grid), largest total first: where a step's GPU time goes,
kernel by kernel (ncu serialises launches, so the totals are of isolated kernels, without overlap).
"""
import csv, sys, collections

def main():
    path = sys.argv[1]
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 40
    rows = [r for r in csv.reader(l for l in open(path) if l.startswith('"'))]
    head, rows = rows[0], rows[1:]
    ix = {n: i for i, n in enumerate(head)}
    agg = collections.defaultdict(lambda: [0, 0.0])
    for r in rows:
        if r[ix["Metric Name"]] != "gpu__time_duration.sum":
            continue
        unit, v = r[ix["Metric Unit"]], float(r[ix["Metric Value"]].replace(",", ""))
        us = v / 1000 if unit in ("ns", "nsecond") else v * 1000 if unit in ("ms", "msecond") else v
        key = (r[ix["Kernel Name"]][:90], r[ix["Grid Size"]])
        agg[key][0] += 1
        agg[key][1] += us
    total = sum(a[1] for a in agg.values())
    print(f"{'total us':>10} {'count':>6} {'mean us':>9}  kernel [grid]   (all kernels: {total:.0f} us)")
    for (name, grid), (n, us) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"{us:10.0f} {n:6d} {us / n:9.1f}  {name} [{grid}]")

if __name__ == "__main__":
    main()
