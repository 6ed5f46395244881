"""Runs a command while nvidia-smi samples the card's SM clock, power and clock-event reasons, then says what the card
did during each part of the command's output: the evidence for "this run was power-limited" in docs/BENCHMARKS.md.

Usage: python3 bench/gpu_clocks.py --csv trace.csv [--gpu N] [--period-ms 20] [--mark REGEX] [--md table.md] -- COMMAND ...
The command's output (stdout and stderr together) is echoed with the time each line arrived. Every line matching
--mark (default: benchmark result lines of `swiftkv bench` and bench/hf_peer.py) closes a window that began at the
output line before it (of any kind, so set-up the command logs, such as making weights, stays out), and holds the
work that line reports: warm-up and timed runs alike, and the idle pauses of `--pause-ms`. Lines that arrive together
(a benchmark printing several results at once) share the window of the first. --gpu: the device to sample
(default: the first of CUDA_VISIBLE_DEVICES, else 0). Per window:
samples, SM clock mean / min (MHz), power mean / max (W), hottest GPU temperature, and the share of samples in which
the driver reported the software power cap or a thermal or hardware slowdown as holding the clock down.
"""
import argparse
import datetime
import os
import re
import subprocess
import sys
import threading
import time

# Newer drivers name these clocks_event_reasons.*; power.draw.instant is the unaveraged reading.
QUERIES = [
    "timestamp,clocks.sm,power.draw.instant,temperature.gpu,clocks_event_reasons.active",
    "timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active",
]
REASONS = [(0x4, "power cap"), (0x8, "hw slowdown"), (0x20, "sw thermal"), (0x40, "hw thermal"), (0x80, "power brake")]
DEFAULT_MARK = r"\[bench\] .*(prefill|decode|roofline)|^prefill |^decode |^roofline"


def working_query(period_ms, gpu):
    """The first query this driver fills in (a field it lacks, or answers [N/A], fails parse_sample)."""
    answers = []
    for q in QUERIES:
        try:
            r = subprocess.run(["nvidia-smi", f"--id={gpu}", f"--query-gpu={q}", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True)
        except FileNotFoundError:
            sys.exit("gpu_clocks: nvidia-smi is not on the PATH (it comes with the NVIDIA driver)")
        first = (r.stdout.splitlines() or [""])[0]
        if r.returncode == 0 and parse_sample(first):
            return ["nvidia-smi", f"--id={gpu}", f"--query-gpu={q}", "--format=csv,noheader,nounits", f"-lms={period_ms}"]
        answers.append(f"{q}: {(r.stdout + r.stderr).strip()}")
    sys.exit("gpu_clocks: nvidia-smi fills in none of the clock queries:\n" + "\n".join(answers))


def parse_sample(line):
    """(unix seconds, MHz, W, deg C, reasons bitmask) or None for a line nvidia-smi could not fill."""
    parts = [p.strip() for p in line.split(",")]
    try:
        t = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
        return t, float(parts[1]), float(parts[2]), float(parts[3]), int(parts[4], 16)
    except (ValueError, IndexError):
        return None


def window_row(label, samples):
    if not samples:
        return f"| {label} | 0 | | | | | |"
    n = len(samples)
    clk = [s[1] for s in samples]
    pw = [s[2] for s in samples]
    held = ", ".join(f"{name} {100 * sum(1 for s in samples if s[4] & bit) / n:.0f}%"
                     for bit, name in REASONS if any(s[4] & bit for s in samples)) or "none"
    return (f"| {label} | {n} | {sum(clk) / n:.0f} / {min(clk):.0f} | {sum(pw) / n:.0f} / {max(pw):.0f} | "
            f"{max(s[3] for s in samples):.0f} | {held} |")


def main():
    if "--" not in sys.argv:
        sys.exit(__doc__)
    cut = sys.argv.index("--")
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", required=True)
    ap.add_argument("--md")
    ap.add_argument("--period-ms", type=int, default=20)
    ap.add_argument("--mark", default=DEFAULT_MARK)
    ap.add_argument("--gpu", default=(os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0])
    a = ap.parse_args(sys.argv[1:cut])
    command = sys.argv[cut + 1:]
    mark = re.compile(a.mark)

    samples, lines = [], []
    sampler = subprocess.Popen(working_query(a.period_ms, a.gpu), stdout=subprocess.PIPE, text=True, bufsize=1)
    raw = open(a.csv, "w")

    def read_samples():
        for line in sampler.stdout:
            raw.write(line)
            s = parse_sample(line)
            if s:
                samples.append(s)

    reader = threading.Thread(target=read_samples, daemon=True)
    reader.start()
    time.sleep(0.5)   # the idle card before the command: the first window's baseline
    start = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in proc.stdout:
        t = time.time()
        sys.stdout.write(f"[{t - start:8.2f}s] {line}")
        sys.stdout.flush()
        lines.append((t, line.rstrip("\n")))
    rc = proc.wait()
    time.sleep(0.5)
    sampler.terminate()
    sampler.wait()
    reader.join(timeout=2)
    raw.close()

    out = ["| output line closing the window | samples | SM clock MHz mean / min | power W mean / max | max temp C | clock held by |",
           "|---|---|---|---|---|---|"]
    out.append(window_row("(idle, before the command)", [s for s in samples if s[0] < start]))
    prev, window_start = start, start
    for t, line in lines:
        # A window begins at the line before; lines within 50 ms of it were printed together and share its window.
        if t - prev > 0.05:
            window_start = prev
        if mark.search(line):
            label = line.replace("|", "/")[:140]
            out.append(window_row(label, [s for s in samples if window_start < s[0] <= t]))
        prev = t
    table = "\n".join(out)
    print()
    print(f"{len(samples)} samples every {a.period_ms} ms requested; command exit code {rc}")
    print(table)
    if a.md:
        open(a.md, "w").write(table + "\n")
    sys.exit(rc)


if __name__ == "__main__":
    main()
