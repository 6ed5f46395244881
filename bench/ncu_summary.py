"""Sums an Nsight Compute CSV (ncu --csv --metrics gpu__time_duration.sum ...) per kernel name and grid size.

Usage: python3 bench/ncu_summary.py ncu.csv [--top 40]
Prints count, total and mean microseconds per (kernel, grid), largest total first: where a step's GPU time goes,
kernel by kernel (ncu serialises launches, so the totals are of isolated kernels, without overlap).
load() and print_by_kernel() are shared with bench/ncu_steps.py.
"""
import csv, sys, collections

_US = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6}


def load(path):
    """Every launch's ((process, ID), kernel name, grid, microseconds), in launch order."""
    rows = [r for r in csv.reader(l for l in open(path) if l.startswith('"'))]
    head, rows = rows[0], rows[1:]
    ix = {n: i for i, n in enumerate(head)}
    out = []
    for r in rows:
        if r[ix["Metric Name"]] != "gpu__time_duration.sum":
            continue
        unit, v = r[ix["Metric Unit"]], float(r[ix["Metric Value"]].replace(",", ""))
        if unit not in _US:
            sys.exit(f"unknown time unit {unit!r} in {path}")
        pid = int(r[ix["Process ID"]]) if "Process ID" in ix else 0
        out.append(((pid, int(r[ix["ID"]])), r[ix["Kernel Name"]][:90], r[ix["Grid Size"]], v * _US[unit]))
    out.sort()
    return out


def print_by_kernel(launches, top, title):
    """Count, total and mean microseconds per (kernel, grid), largest total first."""
    agg = collections.defaultdict(lambda: [0, 0.0])
    for _, name, grid, us in launches:
        agg[(name, grid)][0] += 1
        agg[(name, grid)][1] += us
    total = sum(a[1] for a in agg.values())
    print(f"{title}: {total:.0f} us in {len(launches)} kernels")
    print(f"{'total us':>10} {'count':>6} {'mean us':>9}  kernel [grid]")
    for (name, grid), (n, us) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"{us:10.0f} {n:6d} {us / n:9.1f}  {name} [{grid}]")


def main():
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 40
    print_by_kernel(load(sys.argv[1]), top, "all kernels")


if __name__ == "__main__":
    main()
