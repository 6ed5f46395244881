"""Kernel-level probe for native-kernels/attention_hopper.cu on the GPU machine (no .NET needed).

Compiles attention_hopper.cu and attention_flash.cu with NVRTC (through CuPy, the same compiler and options the
engine uses), checks the contiguous wgmma entry (the paged ones are tested by tests/SwiftKV.Cuda.Tests) against an
fp32 reference (bf16-rounded inputs) on odd shapes, then
times the wgmma entries, the mma.sync kernel Auto picks for prefill (flash_attn_d128_w4_m2_n32) and PyTorch SDPA
on the same data in the same process. Also prints registers / spills from nvcc -Xptxas -v and counts HGMMA in
the SASS. Usage there: python3 bench/attention/hopper_probe.py [--out DIR] [--quick] [--variants "label=DEF=1;..."]
"""
import argparse, json, math, os, subprocess, sys, tempfile

import cupy as cp
import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KDIR = os.path.join(ROOT, "native-kernels")
HD = 128
WGMMA = [(64, 2, "", "")]   # (keys per tile, warpgroups, entry suffix, build variant): the entries attention_hopper.cu builds


def compile_module(name, defines=()):
    src = open(os.path.join(KDIR, name)).read()
    opts = ("--gpu-architecture=sm_90a", "--std=c++17", "-default-device", f"-I{KDIR}") + tuple(f"-D{d}" for d in defines)
    return cp.RawModule(code=src, options=opts, backend="nvrtc")


def resources(name):
    """Registers, spills, shared memory per entry from ptxas (nvcc), and HGMMA count in the SASS."""
    with tempfile.TemporaryDirectory() as d:
        cubin = os.path.join(d, "k.cubin")
        r = subprocess.run(["nvcc", "-cubin", "-gencode=arch=compute_90a,code=sm_90a", "-std=c++17", "-Xptxas", "-v",
                            f"-I{KDIR}", "-o", cubin, os.path.join(KDIR, name)], capture_output=True, text=True)
        lines = [l for l in (r.stdout + r.stderr).splitlines() if "registers" in l or "spill" in l or "Compiling" in l or "error" in l or "warning" in l]
        sass = subprocess.run(["cuobjdump", "--dump-sass", cubin], capture_output=True, text=True).stdout if r.returncode == 0 else ""
        return lines, sass.count("HGMMA"), sass.count("HMMA")


def reference(qb, k, v, heads, kv_heads, pos0):
    """fp32 causal GQA attention of bf16-rounded queries; q (T, heads*D), k/v (cap, kv_heads, D) bf16."""
    T = qb.shape[0]
    L = pos0 + T
    qh = qb.view(T, heads, HD).permute(1, 0, 2).float()
    kh = k[:L].float().permute(1, 0, 2).repeat_interleave(heads // kv_heads, 0)
    vh = v[:L].float().permute(1, 0, 2).repeat_interleave(heads // kv_heads, 0)
    s = qh @ kh.transpose(1, 2) / math.sqrt(HD)
    mask = torch.arange(L, device=s.device)[None, :] > (pos0 + torch.arange(T, device=s.device))[:, None]
    s.masked_fill_(mask, float("-inf"))
    return (torch.softmax(s, -1) @ vh).permute(1, 0, 2).reshape(T, heads * HD)


class Launcher:
    def __init__(self, variants=()):
        # "" = the file as the engine builds it; each variant ("label", ["DEF=1", ...]) = the same file with -D overrides.
        # Both files get every variant's defines (each file ignores the other's switches).
        self.hopper = {"": compile_module("attention_hopper.cu")}
        self.flash = {"": compile_module("attention_flash.cu")}
        for label, defines in variants:
            self.hopper[label] = compile_module("attention_hopper.cu", defines)
            self.flash[label] = compile_module("attention_flash.cu", defines)

    def wgmma(self, bn, nwg, suffix, variant, q, k, v, out, batch, T, heads, kv_heads, pos0, q_bstride, kv_bstride, o_bstride):
        f = self.hopper[variant].get_function(f"flash_attn_wgmma_d128_n{bn}_g{nwg}{suffix}")
        bm = 64 * nwg
        smem = (bm + 4 * bn) * 256 + 1024
        f.max_dynamic_shared_size_bytes = smem
        m_tiles = (T * (heads // kv_heads) + bm - 1) // bm
        f((m_tiles, batch * kv_heads), (128 * nwg,),
          (np.uint64(q.data_ptr()), np.int64(q_bstride), np.int32(heads * HD), np.uint64(k.data_ptr()), np.uint64(v.data_ptr()),
           np.int64(kv_bstride), np.uint64(out.data_ptr()), np.int64(o_bstride), np.int32(T), np.int32(heads),
           np.int32(kv_heads), np.int32(pos0), np.float32(1.0 / math.sqrt(HD) * 1.4426950408889634), np.uint64(0)), shared_mem=smem)

    def mma(self, q, k, v, out, batch, T, heads, kv_heads, pos0, q_bstride, kv_bstride, o_bstride, variant=""):
        f = self.flash[variant].get_function("flash_attn_d128_w4_m2_n32")
        smem = (4 * 32 + 128) * (HD + 8) * 2
        f.max_dynamic_shared_size_bytes = smem
        m_tiles = (T * (heads // kv_heads) + 127) // 128
        f((m_tiles, batch * kv_heads, 1), (128,),
          (np.uint64(q.data_ptr()), np.int64(q_bstride), np.int32(heads * HD), np.uint64(k.data_ptr()), np.uint64(v.data_ptr()),
           np.int64(kv_bstride), np.uint64(out.data_ptr()), np.int64(o_bstride), np.uint64(0), np.uint64(0), np.int32(T),
           np.int32(heads), np.int32(kv_heads), np.int32(pos0), np.int32(2 ** 30), np.float32(1.0 / math.sqrt(HD) * 1.4426950408889634),
           np.uint64(0), np.uint64(0)), shared_mem=smem)


def check(L, results):
    torch.manual_seed(7)
    cases = [  # batch, T, heads, kv_heads, pos0, capacity
        (1, 300, 32, 8, 0, 300), (2, 200, 32, 8, 77, 300), (1, 129, 8, 8, 0, 160), (1, 257, 28, 4, 5, 300),
        (1, 1, 32, 8, 500, 520), (3, 64, 16, 2, 0, 64), (1, 2048, 32, 8, 0, 2048)]
    for (batch, T, heads, kv_heads, pos0, cap) in cases:
        q = torch.randn(batch, T, heads * HD, device="cuda") * 2
        k = (torch.randn(batch, cap, kv_heads, HD, device="cuda")).bfloat16()
        v = torch.randn(batch, cap, kv_heads, HD, device="cuda").bfloat16()
        refs = [reference(q[b].bfloat16(), k[b], v[b], heads, kv_heads, pos0) for b in range(batch)]
        for label, fn in [(f"wgmma n{bn} g{g}{x}{'[' + vr + ']' if vr else ''}", (lambda bn, g, x, vr: lambda *a: L.wgmma(bn, g, x, vr, *a))(bn, g, x, vr))
                          for bn, g, x, vr in WGMMA] + [(f"mma m2 n32{'[' + vr + ']' if vr else ''}", (lambda vr: lambda *a: L.mma(*a, variant=vr))(vr))
                                                        for vr in L.flash]:
            out = torch.full((batch, T, heads * HD), float("nan"), device="cuda").bfloat16()   # poisoned
            fn(q, k, v, out, batch, T, heads, kv_heads, pos0, T * heads * HD, cap * kv_heads * HD, T * heads * HD)
            torch.cuda.synchronize()
            err = max(((out[b].float() - refs[b]).norm() / refs[b].norm()).item() for b in range(batch))
            finite = bool(torch.isfinite(out.float()).all())
            ok = finite and err < 1e-2
            results["check"].append(dict(kernel=label, batch=batch, T=T, heads=heads, kv_heads=kv_heads, pos0=pos0, rel_err=err, ok=ok))
            print(f"check {label:18s} b{batch} T{T} h{heads}/{kv_heads} pos0 {pos0}: rel err {err:.2e} {'ok' if ok else 'FAIL'}", flush=True)


def timed(fn, reps):
    fn(); torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def bench(L, results, lengths):
    heads, kv_heads = 32, 8
    for S in lengths:
        q = torch.randn(S, heads * HD, device="cuda")
        k = torch.randn(S, kv_heads, HD, device="cuda").bfloat16()
        v = torch.randn(S, kv_heads, HD, device="cuda").bfloat16()
        out = torch.empty(S, heads * HD, device="cuda").bfloat16()
        flops = 2.0 * S * S * HD * heads
        reps = 20 if S <= 8192 else 5
        row = dict(S=S)
        args = (q, k, v, out, 1, S, heads, kv_heads, 0, 0, 0, 0)
        for bn, g, x, vr in WGMMA:
            row[f"wgmma_n{bn}_g{g}{x}{'[' + vr + ']' if vr else ''}"] = timed(lambda: L.wgmma(bn, g, x, vr, *args), reps)
        for vr in L.flash:
            row[f"mma_m2_n32{'[' + vr + ']' if vr else ''}"] = timed(lambda: L.mma(*args, variant=vr), reps)
        qs = q.view(1, S, heads, HD).transpose(1, 2).bfloat16()
        ks, vs = k.view(1, S, kv_heads, HD).transpose(1, 2), v.view(1, S, kv_heads, HD).transpose(1, 2)
        row["sdpa"] = timed(lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True), reps)
        results["bench"].append(row)
        print(f"bench S={S}: " + ", ".join(f"{kk} {vv:.3f} ms {flops / vv / 1e9:.1f} TFLOP/s" for kk, vv in row.items() if kk != "S"), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--variants", default="", help='build variants timed beside the file as built: "label=DEF=1,DEF2=0;label2=..."')
    a = ap.parse_args()
    variants = []
    for spec in filter(None, a.variants.split(";")):
        label, _, defs = spec.partition("=")
        variants.append((label, [d for d in defs.split(",") if d]))
        WGMMA.extend((bn, g, x, label) for bn, g, x, vr in list(WGMMA) if vr == "")
    results = dict(gpu=torch.cuda.get_device_name(), check=[], bench=[])
    lines, hgmma, hmma = resources("attention_hopper.cu")
    print("\n".join(lines)); print(f"SASS: {hgmma} HGMMA, {hmma} HMMA", flush=True)
    results["ptxas"] = lines
    L = Launcher(variants)
    check(L, results)
    bench(L, results, [2048, 8192] if a.quick else [2048, 4096, 8192, 16384, 32768])
    json.dump(results, open(os.path.join(a.out, "hopper_probe.json"), "w"), indent=1)
    if not all(c["ok"] for c in results["check"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
