"""W8A8 fixtures: FP8 checkpoints with reference logits for both ways the engine can run them, made with PyTorch.

The engine's Fp8Weights.KeepW8A8 runs an FP8 checkpoint as it was published to run (compressed-tensors FP8_DYNAMIC:
e4m3 weights, input activations dynamic per token): every quantized Linear's input row x (bf16 in the engine) is
quantized to e4m3 with its own scale,
    scale = amax(|x|) / 448,   q = e4m3(x * (448 / amax)),
and the GEMM sums q · w_code and applies scale · w_scale. Here each such Linear computes (q.float() * scale) @ W.T with
W the checkpoint's dequantized weight (code * its scale), in fp32, through swiftkv_reference.py's forward (its `linear`
replaced); lm_head, which the checkpoints leave unquantized, stays plain. A static input scale in the config (the
per-tensor case) is not used: the engine quantizes every input per token.

The committed FP8 fixtures (tiny, init std 0.15) amplify any perturbation through their layers: W8A8 and weight-only
logits differ by 22-30% there, so two correct W8A8 implementations that round one bf16 activation differently already
disagree by as much. Each W8A8 fixture is therefore one of them with its decoder weights scaled down (the first factor
that brings the W8A8 / weight-only gap under 8%) and quantized again the same way (per channel or per tensor, scales
rounded to bf16): a model where W8A8's own effect is visible and rounding noise is not.

448 / amax is formed with one division, as the engine forms it. (The first fixtures, before 2026-11-29, wrote
`E4M3_MAX / amax`, which torch computes as amax.reciprocal() * 448: an ulp away for about a quarter of amax values, and
in these small models one code flip moves a row's logits by 1e-2 to 3e-2. Regenerated with one division, the weights
and weight-only logits came out byte-identical and the CPU backend's W8A8 matches the .w8a8 logits to 4.4e-7.)

Usage (any machine with torch; the device has it): python3 tests/reference/make_w8a8_fixtures.py [FIXTURE_DIR] [OUT_DIR]
writes, per case, OUT_DIR/<name>/ (config.json, model.safetensors), <name>.json (token ids, weight-only greedy tokens),
<name>.logits.f32 (weight-only reference) and <name>.w8a8.logits.f32 (W8A8 reference), fp32 little-endian [positions, vocab].
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import swiftkv_reference as ref  # noqa: E402

E4M3_MAX = 448.0
CASES = [("fp8_channel_swiftkv_50_g2", "w8a8_channel_swiftkv_50_g2", "channel"), ("fp8_tensor_base", "w8a8_tensor_base", "tensor")]
FACTORS = [0.5, 1 / 3, 0.25, 0.2, 0.15]
GREEDY_STEPS = 8


def quantize_rows(x):
    """Per-token e4m3 of x's rows, as the engine's quantize_rows_e4m3 does it, returned dequantized (fp32)."""
    xb = x.to(torch.bfloat16).float()                       # the engine's GEMM inputs are bf16
    amax = xb.abs().amax(dim=-1, keepdim=True)
    scaled = amax >= 1e-30                                  # below, 448 / amax would overflow: scale 1, zero codes
    # One division, as the engine forms it: `E4M3_MAX / amax` (a Python float over a tensor) would be computed by torch
    # as amax.reciprocal() * 448, two roundings, an ulp away for about a quarter of amax values.
    inv = torch.where(scaled, torch.full_like(amax, E4M3_MAX) / amax, torch.ones_like(amax))
    scale = torch.where(scaled, amax / E4M3_MAX, torch.ones_like(amax))
    q = (xb * inv).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float()
    return q * scale


def quantize_weight(w, scheme):
    """(codes float8_e4m3fn, bf16 scale [out, 1] or [1]) with w ~= codes * scale, as make_fp8_fixtures.py does it."""
    amax = w.abs().amax(dim=1, keepdim=True) if scheme == "channel" else w.abs().amax().reshape(1)
    scale = (amax / E4M3_MAX).to(torch.bfloat16)
    full = scale.float().expand_as(w) if scheme == "channel" else scale.float()
    return (w / full).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


def dequantized(raw):
    """The checkpoint's tensors in fp32 (fp8 weights times their scales) and the names of the quantized modules."""
    t, modules = {}, set()
    for k, v in raw.items():
        if k.endswith(".weight_scale") or k.endswith(".input_scale"):
            continue
        if v.dtype == torch.float8_e4m3fn:
            scale = raw[k[: -len("weight")] + "weight_scale"].float()
            t[k] = v.float() * (scale if scale.numel() > 1 else scale.reshape(()))
            modules.add(k[: -len(".weight")])
        else:
            t[k] = v.float()
    return t, modules


def run(cfg, t, ids, modules, w8a8):
    plain = ref.linear

    def w8a8_linear(tensors, module, x):
        return plain(tensors, module, quantize_rows(x) if module in modules else x)

    ref.linear = w8a8_linear if w8a8 else plain
    try:
        with torch.no_grad():
            return ref.forward(cfg, t, ids, swiftkv=bool(cfg.get("swiftkv", False)))
    finally:
        ref.linear = plain


def row_gap(a, b):
    return float(((a - b).abs().amax(dim=-1) / b.abs().amax(dim=-1)).max())


def main():
    fixtures = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "fixtures", "fp8")
    out = sys.argv[2] if len(sys.argv) > 2 else fixtures
    for source, name, scheme in CASES:
        src = os.path.join(fixtures, source)
        cfg = json.load(open(os.path.join(src, "config.json")))
        raw = load_file(os.path.join(src, "model.safetensors"))
        ids = json.load(open(os.path.join(fixtures, source + ".json")))["token_ids"]
        base, modules = dequantized(raw)
        for factor in FACTORS:
            stored = {}
            for k, v in raw.items():
                if v.dtype == torch.float8_e4m3fn:
                    q, scale = quantize_weight(base[k] * factor, scheme)
                    stored[k], stored[k[: -len("weight")] + "weight_scale"] = q, scale
                elif not k.endswith(".weight_scale"):
                    stored[k] = v
            t, _ = dequantized(stored)
            w16, w8 = run(cfg, t, ids, modules, False), run(cfg, t, ids, modules, True)
            gap = row_gap(w8, w16)
            print(f"{name}: decoder weights x {factor:.3f}: W8A8 against weight-only, worst row {gap:.3e}", flush=True)
            if gap < 0.08:
                break
        dst = os.path.join(out, name)
        os.makedirs(dst, exist_ok=True)
        save_file(stored, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
        shutil.copy(os.path.join(src, "config.json"), os.path.join(dst, "config.json"))
        ids_now = list(ids)
        greedy = []
        for _ in range(GREEDY_STEPS):
            nxt = int(run(cfg, t, ids_now, modules, False)[-1].argmax())
            greedy.append(nxt)
            ids_now.append(nxt)
        w16.numpy().astype("<f4").tofile(os.path.join(out, name + ".logits.f32"))
        w8.numpy().astype("<f4").tofile(os.path.join(out, name + ".w8a8.logits.f32"))
        meta = {"name": name, "scheme": scheme, "source": source, "weight_factor": factor, "token_ids": ids,
                "greedy_tokens": greedy, "logits_shape": list(w16.shape), "w8a8_vs_weight_only": gap,
                "reference": "swiftkv_reference.py on torch-dequantized weights; .w8a8 with every quantized Linear's "
                             "input quantized per token to e4m3 (make_w8a8_fixtures.py)"}
        json.dump(meta, open(os.path.join(out, name + ".json"), "w"), indent=1)


if __name__ == "__main__":
    main()
