"""Splits an Nsight Compute CSV of a whole engine run into forward steps and says where each step's GPU time goes.

Usage: python3 bench/ncu_steps.py ncu.csv [--marker embedding_bf16] [--steps 0,1,2] [--top 25]   (the CSV first)
A step starts at each launch whose kernel name contains the marker (the embedding gather opens every forward pass)
and runs to the next one, so kernels between forward passes (a benchmark's own probes, say) count in the step before
them: compare steps whose kernel counts match the model's. Launches are ordered by (process, ID).
For every step: kernel count and summed isolated kernel time; for the chosen steps, the time per kernel name.
Comparing a step's sum with its CUDA-event time from the same build tells what the launches between kernels cost
(ncu serialises launches, so its sum holds no overlap and no launch gap).
"""
import sys

from ncu_summary import load, print_by_kernel


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
        if i < len(steps):
            print()
            print_by_kernel(steps[i], top, f"== step {i}")


if __name__ == "__main__":
    main()
