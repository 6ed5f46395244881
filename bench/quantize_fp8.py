"""Rewrite a bf16 Hugging Face Llama checkpoint as an FP8 one in the compressed-tensors layout llm-compressor's
FP8_DYNAMIC scheme writes (Snowflake's *-FP8 uploads): every decoder Linear weight as float8_e4m3fn with a bf16
scale per output channel ('<m>.weight_scale' [out, 1]), lm_head, embeddings and norms unchanged. Used on the GPU
machine to time the engine's loading of an 8B-shaped FP8 checkpoint (`swiftkv bench --load DIR`) beside its bf16
source. Quantizes on the GPU when there is one.
Usage: python3 bench/quantize_fp8.py SRC_DIR DST_DIR
"""
import json
import os
import shutil
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file

E4M3_MAX = 448.0


def main():
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    index_path = os.path.join(src, "model.safetensors.index.json")
    shards = sorted(set(json.load(open(index_path))["weight_map"].values())) if os.path.exists(index_path) else ["model.safetensors"]
    weight_map = {}
    for shard in shards:
        out = {}
        with safe_open(os.path.join(src, shard), framework="pt") as f:
            for name in f.keys():
                w = f.get_tensor(name)
                if name.startswith("model.layers.") and name.endswith("_proj.weight"):
                    w = w.to(dev).float()
                    scale = (w.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp(min=1e-12).to(torch.bfloat16)
                    q = (w / scale.float()).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
                    out[name] = q.cpu()
                    out[name[: -len("weight")] + "weight_scale"] = scale.cpu()
                else:
                    out[name] = w
        save_file(out, os.path.join(dst, shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in out})
        print(f"{shard}: {len(out)} tensors", flush=True)
    if len(shards) > 1:
        total = sum(os.path.getsize(os.path.join(dst, s)) for s in shards)
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, open(os.path.join(dst, "model.safetensors.index.json"), "w"))
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"],
                                      "weights": {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False, "strategy": "channel"},
                                      "input_activations": {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": True, "strategy": "token"}}},
        "ignore": ["lm_head"]}
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)
    for extra in os.listdir(src):
        if extra.endswith(".json") and extra not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(os.path.join(src, extra), dst)


if __name__ == "__main__":
    main()
