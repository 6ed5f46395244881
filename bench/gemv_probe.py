"""Kernel-level probe for the decode GEMV (native-kernels/gemv.cu) and the prefill RMSNorm (rms_norm.cu) on the GPU
machine, no .NET needed: compiles each file with NVRTC through CuPy (the engine's options) once per build variant
(-D overrides of GEMV_WARPS / GEMV_UNROLL, RMS_VEC), checks every entry against PyTorch on the same data, and times
them in one process (--variants "label=DEF=1,DEF2=0;..." times those builds beside the engine's instead of the
warps x unroll grid, and skips RMSNorm; each is built and launched for 8 warps x 2 steps, so its defines must not
be GEMV_WARPS or GEMV_UNROLL):
  - each decode projection of Llama-3.1-8B at one row, over enough weight copies that every byte comes from device
    memory (GB/s = weight bytes / time), and the four of a layer in sequence;
  - RMSNorm of a 2048 x 4096 fp32 block (the prefill shape), GB/s = (read fp32 + write bf16) / time.
Plain launches (no programmatic dependent launch): the figures compare variants, the engine's own bench gives the
end-to-end numbers. Usage there: python3 bench/gemv_probe.py [--out FILE] [--variants SPEC]
"""
import argparse, json, os

import cupy as cp
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KDIR = os.path.join(ROOT, "native-kernels")
HIDDEN, QKV, INTER, EPS = 4096, 6144, 14336, 1e-5
GEMV_VARIANTS = [("w8 u2 (engine)", 8, 2), ("w8 u4", 8, 4), ("w8 u1", 8, 1), ("w4 u2", 4, 2), ("w16 u2", 16, 2), ("w4 u4", 4, 4)]
RMS_VARIANTS = [("registers (RMS_VEC 8)", 8), ("two passes (RMS_VEC 0)", 0)]


def module(name, defines):
    src = open(os.path.join(KDIR, name)).read()
    opts = ("--gpu-architecture=sm_90a", "--std=c++17", "-default-device", f"-I{KDIR}") + tuple(f"-D{d}" for d in defines)
    return cp.RawModule(code=src, options=opts, backend="nvrtc")


def ptr(t):
    return np.uint64(t.data_ptr())


def time_ms(fn, reps=20, warm=3):
    for _ in range(warm):
        fn()
    s, e = cp.cuda.Event(), cp.cuda.Event()
    s.record()
    for _ in range(reps):
        fn()
    e.record()
    e.synchronize()
    return cp.cuda.get_elapsed_time(s, e) / reps


def gemv_variant(label, warps, unroll, out, extra=()):
    m = module("gemv.cu", [f"GEMV_WARPS={warps}", f"GEMV_UNROLL={unroll}", *extra])
    plain, rms, rms_silu = m.get_function("gemv_bf16_r1"), m.get_function("gemv_rms_bf16_r1"), m.get_function("gemv_rms_silu_bf16_r1")
    block = (32 * warps,)
    torch.manual_seed(0)
    x32 = torch.randn(1, HIDDEN, device="cuda")
    nw = torch.rand(HIDDEN, device="cuda") + 0.5
    xi = torch.randn(1, INTER, device="cuda").bfloat16()
    xo = torch.randn(1, HIDDEN, device="cuda").bfloat16()
    shapes = {  # name: (out rows of W, in, launch(w, y))
        "qkv (rms)": (QKV, HIDDEN, lambda w, y: rms(((QKV + 2 * warps - 1) // (2 * warps),), block,
                                                    (ptr(x32), ptr(nw), np.float32(EPS), ptr(w), ptr(y), np.int32(HIDDEN), np.int32(QKV), np.int32(QKV), np.int32(0)))),
        "o_proj (+=)": (HIDDEN, HIDDEN, lambda w, y: plain(((HIDDEN + 2 * warps - 1) // (2 * warps),), block,
                                                          (ptr(xo), ptr(w), ptr(y), np.int32(HIDDEN), np.int32(HIDDEN), np.int32(HIDDEN), np.int32(1)))),
        "gate_up (rms, silu)": (2 * INTER, HIDDEN, lambda w, y: rms_silu(((INTER + warps - 1) // warps,), block,
                                                                        (ptr(x32), ptr(nw), np.float32(EPS), ptr(w), ptr(y), np.int32(HIDDEN), np.int32(INTER)))),
        "down (+=)": (HIDDEN, INTER, lambda w, y: plain(((HIDDEN + 2 * warps - 1) // (2 * warps),), block,
                                                       (ptr(xi), ptr(w), ptr(y), np.int32(INTER), np.int32(HIDDEN), np.int32(HIDDEN), np.int32(1)))),
    }
    res = {}
    layer_ws = []
    for name, (rows, inn, launch) in shapes.items():
        copies = max(2, int(np.ceil(512e6 / (rows * inn * 2))))
        ws = [(torch.randn(rows, inn, device="cuda") * 0.02).bfloat16() for _ in range(copies)]
        silu = "silu" in name
        y = torch.zeros(1, INTER if silu else rows, device="cuda", dtype=torch.bfloat16 if silu else torch.float32)
        # Check one launch against PyTorch.
        y.zero_()
        launch(ws[0], y)
        cp.cuda.runtime.deviceSynchronize()
        if "rms" in name:
            h = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + EPS) * nw)
            ref = h @ ws[0].float().t()
            if silu:
                ref = torch.nn.functional.silu(ref[:, :INTER]) * ref[:, INTER:]
        else:
            ref = (xi if inn == INTER else xo).float() @ ws[0].float().t()
        err = ((y.float() - ref).norm() / ref.norm()).item()
        ms = time_ms(lambda: [launch(w, y) for w in ws], reps=10) / copies
        gbps = rows * inn * 2 / (ms * 1e-3) / 1e9
        res[name] = {"us": ms * 1e3, "gbps": gbps, "rel_err": err}
        layer_ws.append((launch, ws[:max(1, copies // 4)], y))
        print(f"  {label:16} {name:20} {ms * 1e3:7.1f} us {gbps:6.0f} GB/s  (rel err {err:.1e})", flush=True)
    # The four projections of a layer back to back, cycling over weight copies (plain launches).
    n = min(len(ws) for _, ws, _ in layer_ws)
    def layer():
        for i in range(n):
            for launch, ws, y in layer_ws:
                launch(ws[i % len(ws)], y)
    ms = time_ms(layer, reps=10) / n
    res["layer (4 in sequence)"] = {"us": ms * 1e3, "gbps": (QKV * HIDDEN + HIDDEN * HIDDEN + 2 * INTER * HIDDEN + HIDDEN * INTER) * 2 / (ms * 1e-3) / 1e9}
    print(f"  {label:16} {'layer (4 in seq.)':20} {ms * 1e3:7.1f} us {res['layer (4 in sequence)']['gbps']:6.0f} GB/s", flush=True)
    out[label] = res


def rms_variant(label, vec, out):
    f = module("rms_norm.cu", [f"RMS_VEC={vec}"]).get_function("rms_norm_f32")
    rows = 2048
    x = torch.randn(rows, HIDDEN, device="cuda")
    w = torch.rand(HIDDEN, device="cuda") + 0.5
    o = torch.empty(rows, HIDDEN, device="cuda", dtype=torch.bfloat16)
    launch = lambda: f((rows,), (256,), (ptr(x), np.uint64(0), ptr(w), ptr(o), np.int32(rows), np.int32(HIDDEN), np.float32(EPS)))
    launch()
    cp.cuda.runtime.deviceSynchronize()
    ref = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w)
    err = ((o.float() - ref).norm() / ref.norm()).item()
    ms = time_ms(launch, reps=50)
    gbps = rows * HIDDEN * 6 / (ms * 1e-3) / 1e9
    out[label] = {"us": ms * 1e3, "gbps": gbps, "rel_err": err}
    print(f"  rms_norm {label:24} 2048x4096: {ms * 1e3:6.1f} us {gbps:6.0f} GB/s (rel err {err:.1e})", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--variants", default="", help='builds timed beside the engine\'s (8 warps x 2): "label=DEF=1,DEF2=0;label2=..."')
    a = ap.parse_args()
    res = {"device": torch.cuda.get_device_name(), "gemv": {}, "rms_norm": {}}
    extra = []
    for spec in filter(None, a.variants.split(";")):
        label, _, defs = spec.partition("=")
        defines = [d for d in defs.split(",") if d]
        if any(d.split("=")[0] in ("GEMV_WARPS", "GEMV_UNROLL") for d in defines):
            ap.error("--variants: GEMV_WARPS / GEMV_UNROLL are fixed at 8 x 2 there (the launch is sized for them)")
        extra.append((label, defines))
    for p in range(2):   # two passes: the spread between them is the noise
        if extra:
            gemv_variant("w8 u2 (engine)", 8, 2, res["gemv"].setdefault(f"pass {p}", {}))
            for label, defs in extra:
                gemv_variant(label, 8, 2, res["gemv"].setdefault(f"pass {p}", {}), defs)
            continue
        for label, warps, unroll in GEMV_VARIANTS:
            gemv_variant(label, warps, unroll, res["gemv"].setdefault(f"pass {p}", {}))
        for label, vec in RMS_VARIANTS:
            rms_variant(label, vec, res["rms_norm"].setdefault(f"pass {p}", {}))
    if a.out:
        json.dump(res, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
