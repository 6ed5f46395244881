"""W8A8 reference logits for the committed FP8 fixtures (tests/fixtures/fp8), with PyTorch, on any machine with torch.

The engine's Fp8Weights.KeepW8A8 runs an FP8 checkpoint as it was published to run (compressed-tensors FP8_DYNAMIC:
e4m3 weights, input activations dynamic per token): every quantized Linear's input row x (bf16 in the engine) is
quantized to e4m3 with its own scale,
    scale = amax(|x|) / 448,   q = e4m3(x * (448 / amax)),
and the GEMM sums q · w_code and applies scale · w_scale. Here each such Linear computes (q.float() * scale) @ W.T with
W the checkpoint's dequantized weight (code * its scale), in fp32, through swiftkv_reference.py's forward (its `linear`
replaced); lm_head, which the checkpoints leave unquantized, stays plain. A static input scale in the config (the
"tensor" fixture) is not used: the engine quantizes every input per token.

Usage: python3 tests/reference/make_w8a8_fixtures.py [FIXTURE_DIR] [OUT_DIR]
writes <name>.w8a8.logits.f32 (fp32 little-endian, [positions, vocab]) for the per-channel and per-tensor fixtures.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import swiftkv_reference as ref  # noqa: E402

E4M3_MAX = 448.0
NAMES = ["fp8_channel_swiftkv_50_g2", "fp8_tensor_base"]


def quantize_rows(x):
    """Per-token e4m3 of x's rows, as the engine's quantize_rows_e4m3 does it, returned dequantized (fp32)."""
    xb = x.to(torch.bfloat16).float()                       # the engine's GEMM inputs are bf16
    amax = xb.abs().amax(dim=-1, keepdim=True)
    inv = torch.where(amax > 0, E4M3_MAX / amax, torch.ones_like(amax))
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    q = (xb * inv).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float()
    return q * scale


def main():
    fixtures = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "fixtures", "fp8")
    out = sys.argv[2] if len(sys.argv) > 2 else fixtures
    for name in NAMES:
        d = os.path.join(fixtures, name)
        cfg = json.load(open(os.path.join(d, "config.json")))
        raw = load_file(os.path.join(d, "model.safetensors"))
        t, quantized = {}, set()
        for k, v in raw.items():
            if k.endswith(".weight_scale") or k.endswith(".input_scale"):
                continue
            if v.dtype == torch.float8_e4m3fn:
                scale = raw[k[: -len("weight")] + "weight_scale"].float()
                t[k] = v.float() * (scale if scale.numel() > 1 else scale.reshape(()))
                quantized.add(k[: -len(".weight")])
            else:
                t[k] = v.float()

        plain = ref.linear

        def w8a8_linear(tensors, module, x, plain=plain, quantized=quantized):
            return plain(tensors, module, quantize_rows(x) if module in quantized else x)

        meta = json.load(open(os.path.join(fixtures, name + ".json")))
        ids = meta["token_ids"]
        swift = bool(cfg.get("swiftkv", False))
        ref.linear = w8a8_linear
        try:
            with torch.no_grad():
                logits = ref.forward(cfg, t, ids, swiftkv=swift)
        finally:
            ref.linear = plain
        w16 = torch.from_numpy(
            __import__("numpy").fromfile(os.path.join(fixtures, name + ".logits.f32"), dtype="<f4")).reshape(logits.shape)
        gap = float(((logits - w16).abs().amax(dim=-1) / w16.abs().amax(dim=-1)).max())
        logits.numpy().astype("<f4").tofile(os.path.join(out, name + ".w8a8.logits.f32"))
        print(f"{name}: {len(quantized)} quantized Linears, W8A8 logits {tuple(logits.shape)}; worst row against the "
              f"weight-only (W8A16) reference {gap:.3e}", flush=True)


if __name__ == "__main__":
    main()
