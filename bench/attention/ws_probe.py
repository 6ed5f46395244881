"""Probe for the warp-specialised (TMA + intra-warpgroup pipelined) entry of native-kernels/attention_hopper.cu on the
GPU machine, no .NET needed: flash_attn_wgmma_ws_d128_n{BN} against an fp32 reference (hopper_probe.reference) on odd
shapes, with the cache past the step's length filled with NaN and the output poisoned, then timed against the entry the
engine used before it (flash_attn_wgmma_d128_n64_g2) and PyTorch SDPA, alternating, in one process.
Compiled with NVRTC through CuPy (the engine's options); the tensor maps are encoded and the kernels launched through
the driver API with ctypes (CuPy cannot pass a 128-byte struct by value).
Usage there: python3 bench/attention/ws_probe.py [--out DIR] [--variants "label=DEF=1,DEF2=0;..."] [--lengths 2048,8192]
"""
import argparse, ctypes, json, math, os, sys

import cupy as cp
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hopper_probe import reference, compile_module, HD  # noqa: E402

cuda = ctypes.CDLL("libcuda.so.1")
SCALE_LOG2 = 1.0 / math.sqrt(HD) * 1.4426950408889634


def check_cu(rc, what):
    if rc != 0:
        raise RuntimeError(f"{what}: CUDA error {rc}")


class TensorMap:
    """A 4-D bf16 tensor map (head_dim, kv_heads, positions, batch), box (64, 1, bn, 1), 128-byte swizzle."""
    def __init__(self, ptr, kv_heads, length, batch, capacity, bn):
        self.buf = (ctypes.c_uint64 * 32)()
        addr = (ctypes.addressof(self.buf) + 127) & ~127
        self.map = (ctypes.c_uint64 * 16).from_address(addr)
        dims = (ctypes.c_uint64 * 4)(HD, kv_heads, length, batch)
        strides = (ctypes.c_uint64 * 3)(HD * 2, kv_heads * HD * 2, capacity * kv_heads * HD * 2)
        box = (ctypes.c_uint32 * 4)(64, 1, bn, 1)
        es = (ctypes.c_uint32 * 4)(1, 1, 1, 1)
        check_cu(cuda.cuTensorMapEncodeTiled(ctypes.c_void_p(addr), 9, 4, ctypes.c_void_p(ptr), dims, strides, box, es, 0, 3, 3, 0),
                 "cuTensorMapEncodeTiled")


def launch(func, grid, block, smem, args):
    """args: list of ctypes objects (passed by address)."""
    arr = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) if not isinstance(a, TensorMap)
                                          else ctypes.c_void_p(ctypes.addressof(a.map)) for a in args])
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    check_cu(cuda.cuLaunchKernel(ctypes.c_void_p(func), grid[0], grid[1], 1, block, 1, 1, smem, stream, arr, None), "cuLaunchKernel")


class Kernels:
    def __init__(self, variants):
        self.mods = {"": compile_module("attention_hopper.cu")}
        self.bn, self.stages, self.persistent = {"": 128}, {"": 2}, {"": True}
        for label, defs in variants:
            self.mods[label] = compile_module("attention_hopper.cu", defs)
            self.bn[label] = next((int(d.split("=")[1]) for d in defs if d.startswith("WS_BN=")), 128)
            self.stages[label] = next((int(d.split("=")[1]) for d in defs if d.startswith("WS_STAGES=")), 2)
            self.persistent[label] = "WS_PERSISTENT=0" not in defs
        self.funcs = {}
        self.sms = torch.cuda.get_device_properties(0).multi_processor_count

    def func(self, variant, name, smem):
        key = (variant, name)
        if key not in self.funcs:
            f = self.mods[variant].get_function(name)
            f.max_dynamic_shared_size_bytes = smem
            self.funcs[key] = f.kernel.ptr
        return self.funcs[key]

    def ws(self, variant, q, k, v, out, batch, T, heads, kv_heads, pos0, cap, rope=None):
        bn, stages = self.bn[variant], self.stages[variant]
        smem = 2 * 128 * 128 + 2 * stages * 2 * bn * 128 + 4 * stages * 8 + 1024
        f = self.func(variant, f"flash_attn_wgmma_ws_d128_n{bn}", smem)
        mk = TensorMap(k.data_ptr(), kv_heads, pos0 + T, batch, cap, bn)
        mv = TensorMap(v.data_ptr(), kv_heads, pos0 + T, batch, cap, bn)
        m_tiles = (T * (heads // kv_heads) + 127) // 128
        grid = (min(self.sms, m_tiles * batch * kv_heads), 1) if self.persistent[variant] else (m_tiles, batch * kv_heads)
        args = [ctypes.c_uint64(q.data_ptr()), ctypes.c_int64(T * heads * HD), ctypes.c_int32(heads * HD), mk, mv,
                ctypes.c_uint64(out.data_ptr()), ctypes.c_int64(T * heads * HD), ctypes.c_int32(batch), ctypes.c_int32(T), ctypes.c_int32(heads),
                ctypes.c_int32(kv_heads), ctypes.c_int32(pos0), ctypes.c_float(SCALE_LOG2),
                ctypes.c_uint64(rope.data_ptr() if rope is not None else 0),
                ctypes.c_uint64(0)]   # qb: no bf16 queries (the fp32 q above, rotated on load when rope is given)
        launch(f, grid, 384, smem, args)

    def old(self, q, k, v, out, batch, T, heads, kv_heads, pos0, cap, rope=None):
        smem = (128 + 4 * 64) * 256 + 1024
        f = self.func("", "flash_attn_wgmma_d128_n64_g2", smem)
        m_tiles = (T * (heads // kv_heads) + 127) // 128
        args = [ctypes.c_uint64(q.data_ptr()), ctypes.c_int64(T * heads * HD), ctypes.c_int32(heads * HD), ctypes.c_uint64(k.data_ptr()),
                ctypes.c_uint64(v.data_ptr()), ctypes.c_int64(cap * kv_heads * HD), ctypes.c_uint64(out.data_ptr()),
                ctypes.c_int64(T * heads * HD), ctypes.c_int32(T), ctypes.c_int32(heads), ctypes.c_int32(kv_heads), ctypes.c_int32(pos0),
                ctypes.c_float(SCALE_LOG2), ctypes.c_uint64(rope.data_ptr() if rope is not None else 0)]
        launch(f, (m_tiles, batch * kv_heads), 256, smem, args)


def rope_table(T, pos0):
    inv = 1.0 / (500000.0 ** (torch.arange(0, HD, 2, device="cuda").float() / HD))
    ang = (pos0 + torch.arange(T, device="cuda").float())[:, None] * inv[None, :]
    return torch.cat([ang.cos(), ang.sin()], 1).contiguous()          # (T, 128): [cos of 64 pairs | sin]


def rotate(q, table, heads):
    T = q.shape[0]
    x = q.view(T, heads, HD)
    c, s = table[:, None, :HD // 2], table[:, None, HD // 2:]
    a, b = x[..., :HD // 2], x[..., HD // 2:]
    return torch.cat([a * c - b * s, b * c + a * s], -1).reshape(T, heads * HD)


def check(K, results):
    torch.manual_seed(11)
    cases = [  # batch, T, heads, kv_heads, pos0, capacity, rope
        (1, 300, 32, 8, 0, 340, False), (2, 200, 32, 8, 77, 300, False), (1, 129, 8, 8, 0, 160, False), (1, 257, 28, 4, 5, 300, True),
        (1, 1, 32, 8, 500, 520, False), (3, 64, 16, 2, 0, 64, False), (1, 77, 32, 8, 0, 90, True), (1, 2048, 32, 8, 0, 2048, True),
        (2, 1000, 32, 8, 37, 1100, False)]
    for (batch, T, heads, kv_heads, pos0, cap, use_rope) in cases:
        q = torch.randn(batch, T, heads * HD, device="cuda") * 2
        k = torch.randn(batch, cap, kv_heads, HD, device="cuda").bfloat16()
        v = torch.randn(batch, cap, kv_heads, HD, device="cuda").bfloat16()
        k[:, pos0 + T:] = float("nan")                     # past the step: never read as a value
        v[:, pos0 + T:] = float("nan")
        table = rope_table(T, pos0) if use_rope else None
        qr = torch.stack([rotate(q[b], table, heads) for b in range(batch)]) if use_rope else q
        refs = [reference(qr[b].bfloat16(), k[b], v[b], heads, kv_heads, pos0) for b in range(batch)]
        kernels = [("old n64 g2", lambda o: K.old(q, k, v, o, batch, T, heads, kv_heads, pos0, cap, table))]
        kernels += [(f"ws n{K.bn[vr]}{'[' + vr + ']' if vr else ''}", (lambda vr: lambda o: K.ws(vr, q, k, v, o, batch, T, heads, kv_heads, pos0, cap, table))(vr))
                    for vr in K.mods]
        for label, fn in kernels:
            out = torch.full((batch, T, heads * HD), float("nan"), device="cuda").bfloat16()
            fn(out)
            torch.cuda.synchronize()
            err = max(((out[b].float() - refs[b]).norm() / refs[b].norm()).item() for b in range(batch))
            finite = bool(torch.isfinite(out.float()).all())
            ok = finite and err < 1e-2
            results["check"].append(dict(kernel=label, batch=batch, T=T, heads=heads, kv_heads=kv_heads, pos0=pos0, rope=use_rope, rel_err=err, ok=ok))
            print(f"check {label:14s} b{batch} T{T} h{heads}/{kv_heads} pos0 {pos0} rope {int(use_rope)}: rel err {err:.2e} finite {finite} {'ok' if ok else 'FAIL'}", flush=True)


def bench(K, results, lengths, rounds):
    heads, kv_heads = 32, 8
    for S in lengths:
        q = torch.randn(1, S, heads * HD, device="cuda")
        k = torch.randn(1, S, kv_heads, HD, device="cuda").bfloat16()
        v = torch.randn(1, S, kv_heads, HD, device="cuda").bfloat16()
        out = torch.empty(1, S, heads * HD, device="cuda").bfloat16()
        table = rope_table(S, 0)
        flops = 2.0 * S * S * HD * heads
        reps = max(3, min(50, int(4e13 // flops)))
        qs = q.view(1, S, heads, HD).transpose(1, 2).bfloat16()
        ks, vs = k.view(1, S, kv_heads, HD).transpose(1, 2), v.view(1, S, kv_heads, HD).transpose(1, 2)
        fns = [("old n64 g2", lambda: K.old(q, k, v, out, 1, S, heads, kv_heads, 0, S, table))]
        fns += [(f"ws n{K.bn[vr]}{'[' + vr + ']' if vr else ''}", (lambda vr: lambda: K.ws(vr, q, k, v, out, 1, S, heads, kv_heads, 0, S, table))(vr)) for vr in K.mods]
        fns += [("sdpa", lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True))]
        times = {n: [] for n, _ in fns}
        for n, f in fns:
            f()
        torch.cuda.synchronize()
        for _ in range(rounds):
            for n, f in fns:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for _ in range(reps):
                    f()
                b.record()
                torch.cuda.synchronize()
                times[n].append(a.elapsed_time(b) / reps)
        row = dict(S=S, reps=reps, ms={n: sorted(t)[len(t) // 2] for n, t in times.items()}, rounds=times)
        results["bench"].append(row)
        print(f"bench S={S} (rope on load, median of {rounds} rounds x {reps}): " + ", ".join(
            f"{n} {m:.3f} ms {flops / m / 1e9:.0f} TFLOP/s" for n, m in row["ms"].items()), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--variants", default="")
    ap.add_argument("--lengths", default="2048,8192,32768")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    variants = []
    for spec in filter(None, a.variants.split(";")):
        label, _, defs = spec.partition("=")
        variants.append((label, [d for d in defs.split(",") if d]))
    print(torch.cuda.get_device_name(), flush=True)
    K = Kernels(variants)
    results = dict(device=torch.cuda.get_device_name(), check=[], bench=[])
    check(K, results)
    bench(K, results, [int(x) for x in a.lengths.split(",") if x], a.rounds)
    with open(os.path.join(a.out, "ws_probe.json"), "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
