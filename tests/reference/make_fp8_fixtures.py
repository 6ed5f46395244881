"""Produce the FP8-checkpoint fixtures (run on the GPU machine; CPU torch is enough, but the device has transformers).

Published FP8 Llama checkpoints store every decoder Linear weight as float8 (e4m3) with a scale beside it:
  - compressed-tensors (llm-compressor; Snowflake's Llama-3.1-SwiftKV-8B-Instruct-FP8 is "FP8_DYNAMIC"): '<m>.weight'
    F8_E4M3 and '<m>.weight_scale' per output channel [out, 1] ("channel") or one value [1] ("tensor"); lm_head kept;
  - transformers' "fp8" (FineGrainedFP8, DeepSeek style): '<m>.weight_scale_inv' per [b0, b1] block, fp32.
The real value is fp8(q) * scale. For each case this script takes a seeded bf16 checkpoint the C# CLI writes
(`swiftkv make-model`), quantizes it with PyTorch's float8_e4m3fn cast (scales rounded to their stored dtype first,
so the stored pair defines the weight exactly), writes the FP8 checkpoint (committed as the fixture: the engine's
loader reads it in CI), and computes reference logits from torch's own dequantization:
  - plain Llama: transformers' LlamaForCausalLM on a dequantized fp32 copy;
  - SwiftKV:     swiftkv_reference.py on the dequantized tensors (anchored against transformers with SwiftKV off).
Where this transformers can itself dequantize the format (compressed-tensors needs its package; "fp8" takes
dequantize=True), its logits are compared too and the result is recorded in the case's json ("hf_native_check").
It also writes torch's decoding of all 256 codes of float8_e4m3fn and float8_e5m2 (fp8_codes.f32).

Usage there (after ../shared/device/pack.sh src/SwiftKV.Cli/SwiftKV.Cli.csproj here):
  bash .gpu/gpu-env.sh python3 tests/reference/make_fp8_fixtures.py --cli .gpu/apps/SwiftKV.Cli/swiftkv.dll --out $OUT
and unpack $OUT/fp8.tar.gz into tests/fixtures/.
"""
import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import swiftkv_reference as ref  # noqa: E402
from make_fixtures import GREEDY_STEPS, hf_logits, make_model  # noqa: E402

E4M3_MAX = 448.0
TINY = ["--preset", "tiny", "--vocab-size", "256", "--dtype", "bf16", "--rope-original-max", "64", "--init-std", "0.15",
        "--no-tokenizer"]
CASES = [
    # Snowflake's published layout: SwiftKV 50%, AcrossKV 2, FP8_DYNAMIC, lm_head not quantized.
    {"name": "fp8_channel_swiftkv_50_g2", "scheme": "channel",
     "make_model": TINY + ["--layers", "4", "--swiftkv-layers", "2", "--group-size", "2", "--seed", "31"]},
    # One scale per matrix and a static input scale (which the engine does not apply: it computes in bf16/fp32).
    {"name": "fp8_tensor_base", "scheme": "tensor",
     "make_model": TINY + ["--layers", "3", "--seed", "32"]},
    # transformers' block-wise "fp8" format, rows and columns in blocks of different sizes (transformers refuses
    # blocks that do not divide the matrix; the engine also reads partial blocks, tested in C#).
    {"name": "fp8_block_base", "scheme": "block",
     "make_model": TINY + ["--layers", "3", "--seed", "33"]},
]
BLOCK = [8, 16]
TOKENS = 24


def quantized(name):
    """The decoder's Linear weights; embeddings, norms and lm_head stay as they are (llm-compressor's ignore)."""
    return name.startswith("model.layers.") and name.endswith(".weight") and "_proj" in name


def quantize(w, scheme, scale_dtype):
    """(q float8_e4m3fn, scale) with w ~= q.float() * scale, scale already rounded to scale_dtype."""
    w = w.float()
    out_f, in_f = w.shape
    if scheme == "tensor":
        scale = (w.abs().amax() / E4M3_MAX).reshape(1)
        full = scale.to(scale_dtype).float().expand_as(w)
    elif scheme == "channel":
        scale = (w.abs().amax(dim=1, keepdim=True) / E4M3_MAX)
        full = scale.to(scale_dtype).float().expand_as(w)
    else:
        b0, b1 = BLOCK
        rows, cols = -(-out_f // b0), -(-in_f // b1)
        scale = torch.empty(rows, cols)
        for r in range(rows):
            for c in range(cols):
                scale[r, c] = w[r * b0:(r + 1) * b0, c * b1:(c + 1) * b1].abs().amax() / E4M3_MAX
        full = scale.to(scale_dtype).float().repeat_interleave(b0, 0)[:out_f].repeat_interleave(b1, 1)[:, :in_f]
    scale = scale.to(scale_dtype)
    q = (w / full).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


def dequantize(q, scale, scheme):
    out_f, in_f = q.shape
    s = scale.float()
    if scheme == "block":
        s = s.repeat_interleave(BLOCK[0], 0)[:out_f].repeat_interleave(BLOCK[1], 1)[:, :in_f]
    return q.float() * s


def quantization_config(scheme):
    if scheme == "block":
        return {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": BLOCK,
                "modules_to_not_convert": ["lm_head"]}
    weights = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False, "strategy": scheme,
               "group_size": None, "block_structure": None, "actorder": None, "observer": "minmax",
               "observer_kwargs": {}}
    inputs = ({"num_bits": 8, "type": "float", "symmetric": True, "dynamic": True, "strategy": "token"}
              if scheme == "channel" else
              {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False, "strategy": "tensor"})
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": inputs,
                                          "output_activations": None}},
            "ignore": ["lm_head"], "kv_cache_scheme": None, "global_compression_ratio": None}


def hf_native(path, ids, scheme):
    """transformers' own reading of the FP8 file, where it can dequantize it; None with the reason otherwise."""
    try:
        from transformers import LlamaForCausalLM
        if scheme == "block":
            from transformers import FineGrainedFP8Config
            qc = FineGrainedFP8Config(weight_block_size=BLOCK, dequantize=True)
        else:
            from transformers import CompressedTensorsConfig
            qc = CompressedTensorsConfig(run_compressed=False)
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager",
                                                 quantization_config=qc)
        model.eval()
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].float(), None
    except Exception as e:  # noqa: BLE001 - recorded, not fatal: the reference does not depend on it
        return None, f"{type(e).__name__}: {str(e)[:300]}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    work = tempfile.mkdtemp()
    staging = os.path.join(work, "fp8")
    os.makedirs(staging)
    report = []

    codes = torch.arange(256, dtype=torch.uint8)
    torch.cat([codes.view(torch.float8_e4m3fn).float(), codes.view(torch.float8_e5m2).float()]) \
        .numpy().astype("<f4").tofile(os.path.join(staging, "fp8_codes.f32"))

    for case in CASES:
        name, scheme = case["name"], case["scheme"]
        src = os.path.join(work, name + "-bf16")
        make_model(a.cli, case["make_model"], src)
        cfg = json.load(open(os.path.join(src, "config.json")))
        tensors = load_file(os.path.join(src, "model.safetensors"))
        stored, exact = {}, {}
        for k, w in tensors.items():
            if quantized(k):
                q, scale = quantize(w, scheme, torch.float32 if scheme == "block" else torch.bfloat16)
                m = k[: -len(".weight")]
                stored[k] = q
                stored[m + (".weight_scale_inv" if scheme == "block" else ".weight_scale")] = scale
                if scheme == "tensor":
                    stored[m + ".input_scale"] = torch.tensor([0.05], dtype=torch.bfloat16)
                exact[k] = dequantize(q, scale, scheme)
            else:
                stored[k] = w
                exact[k] = w.float()
        dst = os.path.join(staging, name)
        os.makedirs(dst)
        save_file(stored, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
        json.dump(dict(cfg, quantization_config=quantization_config(scheme)),
                  open(os.path.join(dst, "config.json"), "w"), indent=2)

        # The reference runs on the dequantized fp32 weights, as a plain fp32 checkpoint.
        plain = os.path.join(work, name + "-dequantized")
        os.makedirs(plain)
        save_file({k: v.contiguous() for k, v in exact.items()}, os.path.join(plain, "model.safetensors"),
                  metadata={"format": "pt"})
        json.dump(dict(cfg, torch_dtype="float32"), open(os.path.join(plain, "config.json"), "w"), indent=2)
        ccfg, t = ref.load_checkpoint(plain)
        gen = torch.Generator().manual_seed(1234)
        ids = torch.randint(0, cfg["vocab_size"], (TOKENS,), generator=gen).tolist()
        swift = bool(cfg.get("swiftkv", False))
        with torch.no_grad():
            hf_off, hf_greedy = hf_logits(plain, ids)
            off = ref.forward(ccfg, t, ids, swiftkv=False)
            anchor = float((off - hf_off).abs().max() / hf_off.abs().max())
            if swift:
                logits = ref.forward(ccfg, t, ids, swiftkv=True)
                greedy = ref.greedy(ccfg, t, ids, True, GREEDY_STEPS)
                source = "swiftkv_reference.py on torch-dequantized weights (SwiftKV off vs transformers rel err %.2e)" % anchor
            else:
                logits, greedy = hf_off, hf_greedy
                source = "transformers LlamaForCausalLM on torch-dequantized weights (swiftkv_reference vs it %.2e)" % anchor
        assert anchor < 1e-5, (name, anchor)
        native, why = hf_native(dst, ids, scheme) if not swift else (None, "transformers has no llama_swiftkv")
        check = why if native is None else "transformers' own dequantization, rel err vs the reference %.2e" % float(
            (native - hf_off).abs().max() / hf_off.abs().max())
        logits.numpy().astype("<f4").tofile(os.path.join(staging, name + ".logits.f32"))
        meta = {"name": name, "scheme": scheme, "make_model": case["make_model"], "token_ids": ids,
                "greedy_tokens": greedy, "logits_shape": list(logits.shape), "reference": source,
                "hf_native_check": check}
        json.dump(meta, open(os.path.join(staging, name + ".json"), "w"), indent=1)
        report.append(f"{name}: {source}; native: {check}; greedy {greedy}")
        print(report[-1], flush=True)
        shutil.rmtree(plain)

    with tarfile.open(os.path.join(a.out, "fp8.tar.gz"), "w:gz") as tar:
        tar.add(staging, arcname="fp8")
    open(os.path.join(a.out, "fp8-report.txt"), "w").write("\n".join(report) + "\n")


if __name__ == "__main__":
    main()
