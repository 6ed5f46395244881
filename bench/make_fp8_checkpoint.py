"""Write a random FP8 Llama checkpoint at Llama-3.1-8B or 70B shape straight from the GPU, in the compressed-tensors
layout llm-compressor's FP8_DYNAMIC scheme writes (Snowflake's *-FP8 uploads; bench/quantize_fp8.py makes the same
layout from a bf16 checkpoint): every decoder Linear weight float8_e4m3fn with a bf16 scale per output channel
('<m>.weight_scale' [out, 1]); embeddings, lm_head and norms bf16. Weights are N(0, 0.02) before quantization.
Config and tokenizer come from a small checkpoint `swiftkv make-model --preset tiny` wrote (same vocabulary and RoPE
settings as Llama 3.1), with the shape replaced. Used on the GPU machine to time loading and decoding a real-format
FP8 checkpoint (`swiftkv bench --load DIR --fp8-weights keep|dequantize`) without writing 16 GB of bf16 first.
Usage: python3 bench/make_fp8_checkpoint.py --like TINY_DIR --preset 8b|70b --out DIR
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file

SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8),
}
E4M3_MAX = 448.0
SHARD_BYTES = 4 << 30


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--like", required=True)
    ap.add_argument("--preset", choices=SHAPES, default="8b")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cfg = json.load(open(os.path.join(args.like, "config.json")))
    cfg.update(SHAPES[args.preset], head_dim=128, tie_word_embeddings=False)
    cfg["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "float-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}},
        "ignore": ["lm_head"],
    }
    json.dump(cfg, open(os.path.join(args.out, "config.json"), "w"), indent=2)
    for f in os.listdir(args.like):
        if f.startswith("tokenizer") or f in ("special_tokens_map.json", "generation_config.json"):
            shutil.copy(os.path.join(args.like, f), args.out)

    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q, kv = cfg["num_attention_heads"] * 128, cfg["num_key_value_heads"] * 128
    gen = torch.Generator(device="cuda").manual_seed(1)

    def bf16(*shape):
        return (torch.randn(*shape, device="cuda", generator=gen) * 0.02).to(torch.bfloat16).cpu()

    def fp8(name, out, inp, tensors):
        w = torch.randn(out, inp, device="cuda", generator=gen) * 0.02
        scale = (w.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp(min=1e-12).to(torch.bfloat16)
        tensors[name + ".weight"] = (w / scale.float()).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).cpu()
        tensors[name + ".weight_scale"] = scale.cpu()

    shards, current, size = [], {}, 0

    def flush():
        nonlocal current, size
        if current:
            shards.append(current)
            current, size = {}, 0

    def add(tensors):
        nonlocal size
        current.update(tensors)
        size += sum(t.numel() * t.element_size() for t in tensors.values())
        if size >= SHARD_BYTES:
            flush()

    add({"model.embed_tokens.weight": bf16(vocab, h)})
    for i in range(cfg["num_hidden_layers"]):
        t, p = {}, f"model.layers.{i}."
        for name, out, inp in (("self_attn.q_proj", q, h), ("self_attn.k_proj", kv, h), ("self_attn.v_proj", kv, h), ("self_attn.o_proj", h, q),
                               ("mlp.gate_proj", inter, h), ("mlp.up_proj", inter, h), ("mlp.down_proj", h, inter)):
            fp8(p + name, out, inp, t)
        t[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        t[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        add(t)
    add({"model.norm.weight": torch.ones(h, dtype=torch.bfloat16), "lm_head.weight": bf16(vocab, h)})
    flush()

    weight_map, total = {}, 0
    for k, tensors in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, os.path.join(args.out, name), metadata={"format": "pt"})
        for t in tensors:
            weight_map[t] = name
        total += sum(v.numel() * v.element_size() for v in tensors.values())
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, open(os.path.join(args.out, "model.safetensors.index.json"), "w"), indent=2)
    print(f"wrote {args.out}: {len(shards)} shards, {total / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
