"""native-kernels/gemm_e4m3_rows.cu alone, its settings side by side, on one card in one call.

The question: how close does the kernel come to streaming its codes at the card's copy rate at 9-64 rows, against
torch's bf16 matmul over the same shapes (cuBLAS reading 2 bytes a weight: the bf16 model's decode projections) and,
with --old PATH, against an earlier version of the kernel file (its register-prefetch launch: no ring, no stages)?
Variants are ';'-separated lists of ','-separated settings:
  S<n>   ring stages at launch (default: the launcher's table, 3 / 4 / 3 / 3 by 16-row fragment count, capped by the
         GPU's shared memory per block)
  M<n>   E4R_MINBLOCKS, the launch bounds' CTAs per SM for entries of up to 32 rows
  P0     E4R_PF256=0, the codes' copies without the L2 256-byte prefetch
  G0     E4R_STAGGER=0, every CTA starts its chunks at the same offset
  wide   the _wide_ entries (eight tiles a warp, 64 columns a CTA) for up to 32 rows
  W<n>   E4R_WARPS, warps per CTA (block 32 n)
  old    the --old file
Each variant is compiled by NVRTC through CuPy for sm_90a with the engine's include path; the probe prints its
registers and spill bytes per entry, checks it against a float64 reference (plain: every output within 1e-6 of its terms'
magnitude; SwiGLU: 8e-3 of the value for bf16's rounding plus that error carried through silu(g) · u), and times the
projections of one layer (Llama-3.1-8B and -70B shapes: [q; k; v], o, [gate; up] with SwiGLU, down) at 9, 16, 32 and
64 rows with CUDA events, the codes rotated over copies larger than L2, rounds alternating between variants. Reported:
us per layer and the codes' GB/s, beside the card's copy rate and torch's bf16 matmul.

  python3 bench/e4m3_rows_probe.py [--variants ";S2;S3;S6;S3,M2;P0;old"] [--old PATH] [--rows 9,16,32,64] [--rounds 3]
"""
import argparse
import os

import cupy as cp
import numpy as np
import torch

KDIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "native-kernels")
KEYS = {"M": "E4R_MINBLOCKS", "P": "E4R_PF256", "G": "E4R_STAGGER", "W": "E4R_WARPS"}
PREFERRED_STAGES = [0, 3, 4, 3, 3]   # E4m3RowsGemmKernel.PreferredStages
OLD = None                           # --old: an earlier kernel file
SHAPES = {  # name: [(out or inter, in, silu)] for one layer
    "8b": [(6144, 4096, False), (4096, 4096, False), (14336, 4096, True), (4096, 14336, False)],
    "70b": [(10240, 8192, False), (8192, 8192, False), (28672, 8192, True), (8192, 28672, False)],
}


def settings(variant):
    """'S3,M2' -> ({E4R_MINBLOCKS: 2}, stages 3 or None, old False, wide False)."""
    toks = [t for t in variant.split(",") if t]
    d = {KEYS[t[0]]: int(t[1:]) for t in toks if t[0] in KEYS and t[1:].isdigit()}
    stages = next((int(t[1:]) for t in toks if t[0] == "S"), None)
    return d, stages, "old" in toks, "wide" in toks


def stage_bytes(mf, warps=8, nt=4):
    return nt * 16 * 32 * warps + warps * 16 * mf * 144   # E4m3RowsGemmKernel.StageBytes


class Built:
    def __init__(self, variant):
        d, self.stages, self.old, wide = settings(variant)
        self.warps = d.get("E4R_WARPS", 8)
        path = OLD if self.old else os.path.join(KDIR, "gemm_e4m3_rows.cu")
        opts = ("--gpu-architecture=sm_90a", "--std=c++17", "-default-device", f"-I{KDIR}") + tuple(f"-D{k}={v}" for k, v in d.items())
        mod = cp.RawModule(code=open(path).read(), options=opts, backend="nvrtc")
        optin = cp.cuda.runtime.deviceGetAttribute(getattr(cp.cuda.runtime, "cudaDevAttrMaxSharedMemoryPerBlockOptin", 97), 0)
        self.fns, self.depth, self.nt = {}, {}, {}
        for mf in range(1, 5):
            self.nt[mf] = 8 if wide and mf <= 2 else 4
            depth = min(self.stages or PREFERRED_STAGES[mf], optin // stage_bytes(mf, self.warps, self.nt[mf]))
            self.depth[mf] = depth
            for silu in (False, True):
                name = f"gemm_{'silu_' if silu else ''}e4m3_rows_{'wide_' if self.nt[mf] == 8 else ''}m{mf}"
                f = mod.get_function(name)
                if not self.old:
                    # The card's most, not this variant's: variants that differ only in stages share CuPy's cached module.
                    f.max_dynamic_shared_size_bytes = optin
                self.fns[(mf, silu)] = f


def launch(b, silu, x, rows, k, codes, scales, y, n):
    mf = (rows + 15) // 16
    f = b.fns[(mf, silu)]
    extra = () if b.old else (np.int32(b.depth[mf]),)
    shared = 0 if b.old else b.depth[mf] * stage_bytes(mf, b.warps, b.nt[mf])
    block = 256 if b.old else 32 * b.warps
    cols = 32 if b.old else 8 * b.nt[mf]
    if silu:
        f(((n + cols // 2 - 1) // (cols // 2),), (block,), (x.data_ptr(), codes.data_ptr(), scales.data_ptr(), y.data_ptr(), np.int32(rows), np.int32(k), np.int32(n)) + extra,
          shared_mem=shared)
    else:
        f(((n + cols - 1) // cols,), (block,), (x.data_ptr(), codes.data_ptr(), scales.data_ptr(), y.data_ptr(), np.int32(rows), np.int32(k),
                                      np.int32(n), np.int32(n), np.int32(0)) + extra, shared_mem=shared)


def random_codes(out, k, gen):
    c = torch.randint(0, 256, (out, k), device="cuda", dtype=torch.uint8, generator=gen)
    return torch.where((c & 0x7F) == 0x7F, c ^ 1, c)   # no NaN codes


def check(b, rows):
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
        launch(b, silu, x, rows, k, codes, scales, y, n)
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


def time_layer(b, shapes, rows, reps):
    """us per layer (sum of the four projections' means over reps), the codes' bytes, and (us, bytes) per projection."""
    total_us, total_bytes, parts = 0.0, 0, []
    for n, k, silu in shapes:
        rows_w = 2 * n if silu else n
        bytes_w = rows_w * k
        copies = max(2, -(-512 * 2**20 // bytes_w))
        gen = torch.Generator(device="cuda").manual_seed(n + k)
        ws = [random_codes(rows_w, k, gen) for _ in range(copies)]
        scales = torch.rand(rows_w, device="cuda") * 0.01 + 0.002
        x = (torch.rand(rows, k, device="cuda") * 2 - 1).to(torch.bfloat16)
        y = torch.empty(rows, n, device="cuda", dtype=torch.bfloat16 if silu else torch.float32)
        launch(b, silu, x, rows, k, ws[0], scales, y, n)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for i in range(reps):
            launch(b, silu, x, rows, k, ws[i % copies], scales, y, n)
        e1.record()
        torch.cuda.synchronize()
        us = e0.elapsed_time(e1) * 1e3 / reps
        parts.append((us, bytes_w))
        total_us += us
        total_bytes += bytes_w
        del ws
    return total_us, total_bytes, parts


def gemv_module():
    """native-kernels/gemv.cu with the engine's options: its e4m3 entries, the route below E4m3RowsGemmFromRows."""
    opts = ("--gpu-architecture=sm_90a", "--std=c++17", "-default-device", f"-I{KDIR}")
    return cp.RawModule(code=open(os.path.join(KDIR, "gemv.cu")).read(), options=opts, backend="nvrtc")


def gemv_layer(mod, shapes, rows, reps):
    """us per layer of the e4m3 GEMV (GemvKernel's grids: 8 warps, ceil(out / 16) plain, ceil(inter / 8) SwiGLU)."""
    total = 0.0
    for n, k, silu in shapes:
        rows_w = 2 * n if silu else n
        copies = max(2, -(-512 * 2**20 // (rows_w * k)))
        gen = torch.Generator(device="cuda").manual_seed(n + k)
        ws = [random_codes(rows_w, k, gen) for _ in range(copies)]
        scales = torch.rand(rows_w, device="cuda") * 0.01 + 0.002
        x = (torch.rand(rows, k, device="cuda") * 2 - 1).to(torch.bfloat16)
        y = torch.empty(rows, n, device="cuda", dtype=torch.bfloat16 if silu else torch.float32)
        f = mod.get_function(f"gemv_{'silu_' if silu else ''}e4m3_r{rows}")

        def go(codes):
            if silu:
                f(((n + 7) // 8,), (256,), (x.data_ptr(), codes.data_ptr(), scales.data_ptr(), y.data_ptr(), np.int32(k), np.int32(n)))
            else:
                f(((n + 15) // 16,), (256,), (x.data_ptr(), codes.data_ptr(), scales.data_ptr(), y.data_ptr(), np.int32(k), np.int32(n),
                                              np.int32(n), np.int32(0)))
        go(ws[0])
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for i in range(reps):
            go(ws[i % copies])
        e1.record()
        torch.cuda.synchronize()
        total += e0.elapsed_time(e1) * 1e3 / reps
        del ws
    return total


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
    global OLD
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=";S2;S3;S6;S3,M2;P0")
    ap.add_argument("--old", help="an earlier gemm_e4m3_rows.cu for the variant 'old'")
    ap.add_argument("--rows", default="9,16,32,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--detail", action="store_true", help="also each projection's us and GB/s (the median round)")
    ap.add_argument("--gemv", action="store_true", help="also the e4m3 GEMV (gemv.cu) at rows <= 8, the route below E4m3RowsGemmFromRows")
    a = ap.parse_args()
    OLD = a.old
    variants = a.variants.split(";")
    rowss = [int(r) for r in a.rows.split(",")]
    print(torch.cuda.get_device_name(), f"copy {copy_gbps():.0f} GB/s")
    gemv = gemv_module() if a.gemv else None
    built = {}
    for v in variants:
        b = Built(v)
        built[v] = b
        regs = " ".join(f"m{mf}{'s' if s else ''}:{f.num_regs}r/{f.local_size_bytes}B" for (mf, s), f in b.fns.items())
        depth = "register prefetch" if b.old else "stages " + "/".join(str(b.depth[mf]) for mf in range(1, 5))
        checks = [check(b, r) for r in (9, 17, 40, 64)]
        worst = {k: max(c[k] for c in checks) for k in checks[0]}
        print(f"variant {v or 'default'}: {depth}; registers/spill {regs}; worst error / bound: plain {worst['plain']:.3f}, "
              f"SwiGLU {worst['silu']:.3f} (<= 1 passes)", flush=True)
    for model, shapes in SHAPES.items():
        for rows in rowss:
            results = {v: [] for v in variants}
            for _ in range(a.rounds):
                for v in variants:
                    results[v].append(time_layer(built[v], shapes, rows, a.reps))
            tb = torch_bf16_layer(shapes, rows, a.reps)
            line = f"{model} rows {rows:2d}: torch bf16 {tb:7.1f} us/layer |"
            if gemv is not None and rows <= 8:
                gu = sorted(gemv_layer(gemv, shapes, rows, a.reps) for _ in range(a.rounds))[a.rounds // 2]
                line += f" e4m3 GEMV {gu:7.1f} us ({results[variants[0]][0][1] / (gu * 1e-6) / 1e9:5.0f} GB/s) |"
            details = []
            for v in variants:
                median = sorted(results[v], key=lambda r: r[0])[len(results[v]) // 2]
                us, gb = median[0], median[1] / (median[0] * 1e-6) / 1e9
                line += f" {v or 'default'}: {us:7.1f} us ({gb:5.0f} GB/s) |"
                details.append(f"    {v or 'default'}: " + " | ".join(
                    f"{n}x{k}{' swiglu' if silu else ''} {pu:6.1f} us ({pb / (pu * 1e-6) / 1e9:4.0f})" for (n, k, silu), (pu, pb) in zip(shapes, median[2])))
            print(line, flush=True)
            if a.detail:
                print("\n".join(details), flush=True)


if __name__ == "__main__":
    main()
