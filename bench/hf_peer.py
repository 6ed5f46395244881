"""The peer and the roofline, measured on the same card in the same device call as our engine's benchmark.

Hugging Face transformers' LlamaForCausalLM (SDPA attention) at Llama-3.1-8B shape with random bf16 weights:
prefill latency/throughput at 1x2048, 1x8192, 1x32768, 8x2048 and decode ms/step at batch 1/32/128 with a 2K
context; plus the card's roofline as PyTorch sees it (bf16 GEMM 8192^3 TFLOP/s, device-to-device copy GB/s).
--preset 70b: Llama-3.1-70B's shape instead (141 GB of bf16 weights: one card of >= 141 GB, such as an H200), at
1x2048 and 1x8192 and decode batch 1, the cases `swiftkv bench --preset llama-3.1-70b` measures on such a card.
Writes one JSON object to --out.

  python3 bench/hf_peer.py --out $OUT/peer.json [--preset 8b|70b] [--quick] [--pause-ms 0] [--prefill-only]
--pause-ms: the GPU idles that long before every prefill forward (the card cools and its clock recovers), to compare
with `swiftkv bench --pause-ms`; by default the forwards run back to back.
"""
import argparse
import json
import time

import torch


def timed(fn, warmup=2, iters=5, pause_s=0.0):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if pause_s:
            time.sleep(pause_s)
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def roofline():
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = timed(lambda: a @ b, 3, 10)
    src = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    c = timed(lambda: dst.copy_(src), 3, 10)
    return {"gemm_bf16_8192_tflops": 2 * n**3 / t / 1e12, "d2d_copy_gbps_read_plus_write": 2 * src.numel() / c / 1e9}


# Meta's published config.json values for the two shapes.
SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64),
}


def sdpa_attention(quick, heads):
    """PyTorch SDPA (FlashAttention-2 backend on H100) causal prefill at the model's attention shape, for comparison
    with our attention kernel: `heads` query heads, 8 KV heads, head_dim 128; FLOPs 2*S^2*d*h (causal half)."""
    import torch.nn.functional as F
    out = {}
    for s in [2048, 8192] + ([] if quick else [32768]):
        q = torch.randn(1, heads, s, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, 8, s, 128, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, 8, s, 128, device="cuda", dtype=torch.bfloat16)
        t = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), 3, 10)
        out[f"1x{s}"] = {"ms": t * 1e3, "tflops": 2 * s * s * 128 * heads / t / 1e12}
    return out


def make_model(preset):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**SHAPES[preset], num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
                      rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    # Made in bf16 directly: 70B in fp32 first would need 282 GB.
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    return model.eval()


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pause-ms", type=int, default=0)
    ap.add_argument("--prefill-only", action="store_true")
    ap.add_argument("--preset", choices=sorted(SHAPES), default="8b")
    a = ap.parse_args()
    big = a.preset == "70b"
    res = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "preset": a.preset}
    import transformers
    res["transformers"] = transformers.__version__
    def save():
        # Written after every section, so a later failure (e.g. out of memory) keeps what was measured.
        json.dump(res, open(a.out, "w"), indent=1)

    res["roofline"] = roofline()
    print("roofline", res["roofline"], flush=True)
    if not a.prefill_only:
        res["sdpa_attention_causal"] = sdpa_attention(a.quick or big, SHAPES[a.preset]["num_attention_heads"])
        save()
        print("sdpa", res["sdpa_attention_causal"], flush=True)
    model = make_model(a.preset)
    print(f"model {a.preset}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters", flush=True)
    prefill = {}
    shapes = [(1, 2048), (1, 8192)] if big else [(1, 2048), (8, 2048), (1, 8192)] + ([] if a.quick else [(1, 32768)])
    for b, s in shapes:
        ids = torch.randint(0, 128000, (b, s), device="cuda")
        # logits_to_keep=1: only the last position's logits, as a serving engine computes them.
        t = timed(lambda: model(ids, use_cache=False, logits_to_keep=1), 1, 3, a.pause_ms / 1e3)
        prefill[f"{b}x{s}"] = {"ms": t * 1e3, "tokens_per_s": b * s / t, "pause_ms": a.pause_ms}
        print(f"prefill {b}x{s}: {t*1e3:.1f} ms, {b*s/t:,.0f} tokens/s", flush=True)
    res["prefill"] = prefill
    save()
    if a.prefill_only:
        return
    decode = {}
    from transformers import DynamicCache
    for b in [1] if big else [1, 32] + ([] if a.quick else [128]):
        ctx = 2048
        ids = torch.randint(0, 128000, (b, ctx), device="cuda")
        cache = DynamicCache()
        try:
            # The whole batch's 2K context is prefilled in one forward, as a plain transformers user would;
            # a batch that does not fit is recorded as such.
            out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        except torch.OutOfMemoryError:
            decode[f"batch{b}"] = {"error": "out of memory prefilling the 2K context in one forward"}
            print(f"decode batch {b}: out of memory", flush=True)
            del cache
            torch.cuda.empty_cache()
            continue
        nxt = out.logits[:, -1:].argmax(-1)
        steps = 16

        def run():
            c = cache
            tok = nxt
            for _ in range(steps):
                o = model(tok, past_key_values=c, use_cache=True)
                tok = o.logits[:, -1:].argmax(-1)
            c.crop(-steps)

        t = timed(run, 1, 3) / steps
        decode[f"batch{b}"] = {"ms_per_step": t * 1e3, "tokens_per_s": b / t}
        print(f"decode batch {b}: {t*1e3:.1f} ms/step", flush=True)
        del cache
        torch.cuda.empty_cache()
        res["decode_ctx2048"] = decode
        save()
    res["decode_ctx2048"] = decode
    save()


if __name__ == "__main__":
    main()
