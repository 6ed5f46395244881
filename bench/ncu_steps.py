"""Splits an Nsight Compute CSV of a whole engine run into forward steps and says where each step's GPU time goes.

Usage: python3 bench/ncu_steps.py ncu.csv [--marker embedding_bf16] [--steps 0,1,2] [--top 25]   (the CSV first)
A step starts at each launch whose kernel name contains the marker (the embedding gather opens every forward pass)
and runs to the next one, so kernels between forward passes (a benchmark's own probes, say) count in the step before
them: compare steps whose kernel counts match the model's. Launches are ordered by (process, ID).
For every step: kernel count and summed isolated kernel time; for the chosen steps, the time per kernel name.
Comparing a step's sum with its CUDA-event time from the same build tells what the launches between kernels cost
(ncu serialises launches, so its sum holds no overlap and no launch gap).
"""
import csv, sys, collections

def load(path):
    rows = [r for r in csv.reader(l for l in open(path) if l.startswith('"'))]
    head, rows = rows[0], rows[1:]
    ix = {n: i for i, n in enumerate(head)}
    out = []
    for r in rows:
        if r[ix["Metric Name"]] != "gpu__time_duration.sum":
            continue
        unit, v = r[ix["Metric Unit"]], float(r[ix["Metric Value"]].replace(",", ""))
        scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6}
        if unit not in scale:
            sys.exit(f"unknown time unit {unit!r} in {path}")
        pid = int(r[ix["Process ID"]]) if "Process ID" in ix else 0
        out.append(((pid, int(r[ix["ID"]])), r[ix["Kernel Name"]][:80], r[ix["Grid Size"]], v * scale[unit]))
    out.sort()
    return out

def main():
    args = sys.argv[1:]
    opt = lambda name, d: args[args.index(name) + 1] if name in args else d
    marker = opt("--marker", "embedding_bf16")
    top = int(opt("--top", "25"))
    launches = load(args[0])
    steps, cur = [], None
    for l in launches:
        if marker in l[1]:
            cur = []
            steps.append(cur)
        if cur is not None:
            cur.append(l)
    chosen = [int(s) for s in opt("--steps", ",".join(str(i) for i in range(len(steps)))).split(",") if s]
    print(f"{len(launches)} launches, {len(steps)} steps (split at '{marker}')")
    for i, s in enumerate(steps):
        print(f"step {i}: {len(s)} kernels, {sum(l[3] for l in s):.0f} us")
    for i in chosen:
        if i >= len(steps):
            continue
        agg = collections.defaultdict(lambda: [0, 0.0])
        for _, name, grid, us in steps[i]:
            agg[(name, grid)][0] += 1
            agg[(name, grid)][1] += us
        total = sum(a[1] for a in agg.values())
        print(f"\n== step {i}: {total:.0f} us in {len(steps[i])} kernels")
        for (name, grid), (n, us) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]:
            print(f"{us:10.0f} {n:5d} {us / n:9.1f}  {name} [{grid}]")

if __name__ == "__main__":
    main()
