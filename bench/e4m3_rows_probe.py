"""native-kernels/gemm_e4m3_rows.cu alone, its compile-time switches side by side, on one card in one call.

The question: in the engine (3973467, one H200) an 8B decode step of 32 rows over kept e4m3 weights took 9.5 ms
against 7.7 in bf16, although it streams half the weight bytes. Which of the kernel's switches moves it?
  E4R_PREFETCH   weight chunks in flight per warp (default: 2 / 4 / 4 / 6 by 16-row fragment count; set, all of them)
  E4R_XAHEAD     1: x rows loaded a chunk ahead too
  E4R_MINBLOCKS  CTAs per SM the launch bounds ask for (entries of up to 32 rows)
  E4R_KSPLIT     warps per 16 output columns (block 64 x KSPLIT threads)
Each variant is compiled by NVRTC through CuPy for sm_90a with the engine's include path; the probe prints its
registers and spill bytes per entry, checks it against a float64 reference (plain: every output within 1e-6 of its terms'
magnitude; SwiGLU: 8e-3 of the value for bf16's rounding plus
that error carried through silu(g) · u), and times the projections of one layer (Llama-3.1-8B and -70B shapes: [q; k; v], o, [gate; up] with
SwiGLU, down) at 9, 16, 32 and 64 rows with CUDA events, the codes rotated over copies larger than L2, rounds
alternating between variants. Reported: us per layer and the codes' GB/s, beside the card's copy rate and torch's
bf16 matmul over the same shapes (cuBLAS reading 2 bytes a weight: the bf16 model's decode projections).

  python3 bench/e4m3_rows_probe.py [--variants "P3;P2;P4;X1;M2;K2"] [--rows 9,16,32,64] [--rounds 3]
"""
import argparse
import os

import cupy as cp
import numpy as np
import torch

KDIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "native-kernels")
KEYS = {"P": "E4R_PREFETCH", "X": "E4R_XAHEAD", "M": "E4R_MINBLOCKS", "K": "E4R_KSPLIT"}
SHAPES = {  # name: [(out or inter, in, silu)] for one layer
    "8b": [(6144, 4096, False), (4096, 4096, False), (14336, 4096, True), (4096, 14336, False)],
    "70b": [(10240, 8192, False), (8192, 8192, False), (28672, 8192, True), (8192, 28672, False)],
}


def defines(variant):
    """'P3,M2' -> {E4R_PREFETCH: 3, E4R_MINBLOCKS: 2}."""
    return {KEYS[t[0]]: int(t[1:]) for t in variant.split(",") if t}


def build(variant):
    d = defines(variant)
    src = open(os.path.join(KDIR, "gemm_e4m3_rows.cu")).read()
    opts = ("--gpu-architecture=sm_90a", "--std=c++17", "-default-device", f"-I{KDIR}") + tuple(f"-D{k}={v}" for k, v in d.items())
    mod = cp.RawModule(code=src, options=opts, backend="nvrtc")
    block = 64 * d.get("E4R_KSPLIT", 4)
    fns = {}
    for mf in range(1, 5):
        for silu in (False, True):
            f = mod.get_function(f"gemm_{'silu_' if silu else ''}e4m3_rows_m{mf}")
            fns[(mf, silu)] = f
    return fns, block


def launch(fns, block, silu, x, rows, k, codes, scales, y, n):
    f = fns[((rows + 15) // 16, silu)]
    if silu:
        f(((n + 15) // 16,), (block,), (x.data_ptr(), codes.data_ptr(), scales.data_ptr(), y.data_ptr(), np.int32(rows), np.int32(k), np.int32(n)))
    else:
        f(((n + 31) // 32,), (block,), (x.data_ptr(), codes.data_ptr(), scales.data_ptr(), y.data_ptr(), np.int32(rows), np.int32(k),
                                       np.int32(n), np.int32(n), np.int32(0)))


def random_codes(out, k, gen):
    c = torch.randint(0, 256, (out, k), device="cuda", dtype=torch.uint8, generator=gen)
    return torch.where((c & 0x7F) == 0x7F, c ^ 1, c)   # no NaN codes


def check(fns, block, rows):
    gen = torch.Generator(device="cuda").manual_seed(rows)
    k, out, inter = 4160, 37, 19
    x = (torch.rand(rows, k, device="cuda", generator=gen) * 2 - 1).to(torch.bfloat16)
    worst = {}
    for silu, n in ((False, out), (True, inter)):
        rows_w = 2 * n if silu else n
        codes = random_codes(rows_w, k, gen)
        scales = torch.rand(rows_w, device="cuda", generator=gen) * 0.01 + 0.002
        w = codes.view(torch.float8_e4m3fn).double() * scales.double().unsqueeze(1)
        terms = x.double() @ w.T
        mag = x.double().abs() @ w.abs().T
        y = torch.full((rows, n), float("nan"), device="cuda", dtype=torch.bfloat16 if silu else torch.float32)
        launch(fns, block, silu, x, rows, k, codes, scales, y, n)
        torch.cuda.synchronize()
        if silu:
            g, u = terms[:, :n], terms[:, n:]
            ref = g / (1 + torch.exp(-g)) * u
            # bf16's rounding of the value, plus the sums' error (1e-6 of their magnitude) carried through silu(g) · u
            # (d/dg is at most 1.1 |u|, d/du is |silu(g)| <= |g|)
            bound = ref.abs() * 8e-3 + 1e-6 * (1.1 * mag[:, :n] * u.abs() + g.abs() * mag[:, n:]) + 1e-6
            err = float(((y.double() - ref).abs() / bound).max())
        else:
            err = float(((y.double() - terms).abs() / (mag * 1e-6 + 1e-6)).max())
        worst["silu" if silu else "plain"] = err
    return worst


def time_layer(fns, block, shapes, rows, reps):
    """us per layer (sum of the four projections' means over reps) and the codes' bytes."""
    total_us, total_bytes = 0.0, 0
    for n, k, silu in shapes:
        rows_w = 2 * n if silu else n
        bytes_w = rows_w * k
        copies = max(2, -(-512 * 2**20 // bytes_w))
        gen = torch.Generator(device="cuda").manual_seed(n + k)
        ws = [random_codes(rows_w, k, gen) for _ in range(copies)]
        scales = torch.rand(rows_w, device="cuda") * 0.01 + 0.002
        x = (torch.rand(rows, k, device="cuda") * 2 - 1).to(torch.bfloat16)
        y = torch.empty(rows, n, device="cuda", dtype=torch.bfloat16 if silu else torch.float32)
        launch(fns, block, silu, x, rows, k, ws[0], scales, y, n)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for i in range(reps):
            launch(fns, block, silu, x, rows, k, ws[i % copies], scales, y, n)
        e1.record()
        torch.cuda.synchronize()
        total_us += e0.elapsed_time(e1) * 1e3 / reps
        total_bytes += bytes_w
        del ws
    return total_us, total_bytes


def torch_bf16_layer(shapes, rows, reps):
    total = 0.0
    for n, k, silu in shapes:
        rows_w = 2 * n if silu else n
        copies = max(2, -(-512 * 2**20 // (2 * rows_w * k)))
        ws = [torch.randn(rows_w, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        torch.matmul(x, ws[0].T)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for i in range(reps):
            torch.matmul(x, ws[i % copies].T)
        e1.record()
        torch.cuda.synchronize()
        total += e0.elapsed_time(e1) * 1e3 / reps
        del ws
    return total


def copy_gbps():
    a = torch.empty(2**30, device="cuda", dtype=torch.uint8)
    b = torch.empty_like(a)
    b.copy_(a)
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(10):
        b.copy_(a)
    e1.record()
    torch.cuda.synchronize()
    return 2 * 2**30 * 10 / (e0.elapsed_time(e1) * 1e-3) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="P3;P2;P4;X1;M2;K2")
    ap.add_argument("--rows", default="9,16,32,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    variants = a.variants.split(";")
    rowss = [int(r) for r in a.rows.split(",")]
    print(torch.cuda.get_device_name(), f"copy {copy_gbps():.0f} GB/s")
    built = {}
    for v in variants:
        fns, block = build(v)
        built[v] = (fns, block)
        regs = " ".join(f"m{mf}{'s' if s else ''}:{f.num_regs}r/{f.local_size_bytes}B" for (mf, s), f in fns.items())
        checks = [check(fns, block, r) for r in (9, 17, 40, 64)]
        worst = {k: max(c[k] for c in checks) for k in checks[0]}
        print(f"variant {v or 'default'}: block {block}; registers/spill {regs}; worst error / bound: plain {worst['plain']:.3f}, "
              f"SwiGLU {worst['silu']:.3f} (<= 1 passes)")
    for model, shapes in SHAPES.items():
        for rows in rowss:
            results = {v: [] for v in variants}
            for _ in range(a.rounds):
                for v in variants:
                    results[v].append(time_layer(*built[v], shapes, rows, a.reps))
            tb = torch_bf16_layer(shapes, rows, a.reps)
            line = f"{model} rows {rows:2d}: torch bf16 {tb:7.1f} us/layer |"
            for v in variants:
                us = sorted(t for t, _ in results[v])[len(results[v]) // 2]
                gb = results[v][0][1] / (us * 1e-6) / 1e9
                line += f" {v or 'default'}: {us:7.1f} us ({gb:5.0f} GB/s) |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
