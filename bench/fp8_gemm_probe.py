"""What fp8 GEMMs would give our prefill: the question behind "fp8 would close the 32K target" in docs/BENCHMARKS.md.

Times, on one card in one process, the GEMMs of a Llama-3.1-8B prefill (per layer [q; k; v], o_proj, [gate; up],
down_proj; with --swiftkv also SwiftKV 50%'s later-layer K/V GEMM) as one back-to-back sequence, as the engine runs
them, in three forms:
  bf16         torch.matmul, bf16 in and out, fp32 accumulate (cuBLAS: what the engine's GEMMs run at);
  fp8 tensor   torch._scaled_mm, e4m3 in, bf16 out, one scale per tensor;
  fp8 rowwise  torch._scaled_mm with a scale per token row and per weight row (what an fp8 checkpoint would use).
The activations' quantisation is timed apart (plain PyTorch ops: amax per row, scale, cast), since an engine would
fold it into the RMSNorm / SwiGLU passes that already read those rows. Each sequence runs --repeat times after a
warm-up, so the card reaches its sustained (power-capped) clock as in the engine's back-to-back runs; run under
bench/gpu_clocks.py to see the clock and power of each line's window.

Numerics: fp8 weights and activations are a different model numerically (e4m3 has 3 mantissa bits), so this is a
projection of what an fp8 mode would save, not a result for the issue's bf16 targets.

Usage: python3 bench/fp8_gemm_probe.py [--rows 2048,32768] [--repeat 3] [--json out.json]
"""
import argparse
import json
import torch

H, Q_KV, INTER, LAYERS = 4096, 4096 + 2 * 1024, 14336, 32


def shapes(rows, layers, swiftkv):
    """(M, K, N) of every GEMM of the forward, in order; SwiftKV 50%: half the layers, plus the later layers' K/V."""
    layer = [(rows, H, Q_KV), (rows, H, H), (rows, H, 2 * INTER), (rows, INTER, H)]
    seq = layer * layers
    if swiftkv:
        seq = layer * (layers // 2) + [(rows, H, (layers // 2) * 2 * 1024)]
    return seq


def timed(fn, repeat):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2], times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="2048,32768")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    print(f"card: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        for swiftkv in (False, True):
            seq = shapes(rows, LAYERS, swiftkv)
            flops = sum(2 * m * k * n for m, k, n in seq)
            distinct = sorted(set(seq))
            # One weight per distinct shape (weights stream from HBM at 2K rows either way: each is larger than L2).
            a16 = {(m, k): torch.randn(m, k, device=dev, dtype=torch.bfloat16) for m, k, _ in distinct}
            w16 = {(k, n): torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02 for _, k, n in distinct}
            out = {(m, n): torch.empty(m, n, device=dev, dtype=torch.bfloat16) for m, _, n in distinct}
            a8 = {key: (v / 8).to(torch.float8_e4m3fn) for key, v in a16.items()}
            w8 = {key: (v * 16).to(torch.float8_e4m3fn) for key, v in w16.items()}
            one = torch.ones((), device=dev, dtype=torch.float32)
            sa = {key: torch.full((key[0], 1), 1 / 8, device=dev) for key in a16}
            sw = {key: torch.full((1, key[1]), 1 / 16, device=dev) for key in w16}

            def bf16():
                for m, k, n in seq:
                    torch.matmul(a16[(m, k)], w16[(k, n)].t(), out=out[(m, n)])

            def fp8_tensor():
                for m, k, n in seq:
                    torch._scaled_mm(a8[(m, k)], w8[(k, n)].t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

            def fp8_rowwise():
                for m, k, n in seq:
                    torch._scaled_mm(a8[(m, k)], w8[(k, n)].t(), scale_a=sa[(m, k)], scale_b=sw[(k, n)], out_dtype=torch.bfloat16)

            def quantise():
                # Per forward: each GEMM's input once (the norm, attention or SwiGLU output an engine would quantise).
                for m, k, _ in seq:
                    x = a16[(m, k)]
                    s = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / 448.0
                    (x / s).to(torch.float8_e4m3fn)

            label = f"{'SwiftKV 50%' if swiftkv else 'SwiftKV off'} 1x{rows}"
            for name, fn in (("bf16", bf16), ("fp8 tensor", fp8_tensor), ("fp8 rowwise", fp8_rowwise), ("quantise", quantise)):
                ms, runs = timed(fn, args.repeat)
                tf = flops / ms / 1e9 if name != "quantise" else 0.0
                print(f"prefill {label} GEMMs {name}: {ms:.2f} ms ({tf:.0f} TFLOP/s; {len(seq)} GEMMs; runs "
                      + " / ".join(f"{t:.2f}" for t in runs) + ")", flush=True)
                results.append({"rows": rows, "swiftkv": swiftkv, "form": name, "ms": ms, "runs": runs, "gemms": len(seq),
                                "tflops": tf})
            del a16, w16, out, a8, w8, sa, sw
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
