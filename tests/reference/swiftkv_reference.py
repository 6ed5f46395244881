"""A PyTorch SwiftKV reference written from ../shared/docs/SWIFTKV.md, independent of the C# engine.

It computes logits for EVERY position of a sequence in one pass: layers 0..l-1 as in Llama; then
s = RMSNorm(x_l; norm_swiftkv); K/V of every later layer from s (group leaders only, AcrossKV); every token
continues through layers l..L-1 with q_proj_swiftkv on its own input_layernorm. Position i's logits equal
the logits a SwiftKV prefill of tokens[0..i] gives for its last token (the paper's exactness argument).

With swiftkv=False it is a plain Llama, and is checked against Hugging Face transformers' LlamaForCausalLM
so the reference itself has an independent anchor.
"""
import json
import math
import os

import torch
from safetensors.torch import load_file


def load_checkpoint(path):
    cfg = json.load(open(os.path.join(path, "config.json")))
    index = os.path.join(path, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(index):
        for shard in sorted(set(json.load(open(index))["weight_map"].values())):
            tensors.update(load_file(os.path.join(path, shard)))
    else:
        tensors.update(load_file(os.path.join(path, "model.safetensors")))
    return cfg, {k: v.to(torch.float32) for k, v in tensors.items()}


def inv_freq(cfg):
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    base = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim))
    rs = cfg.get("rope_scaling")
    if rs:
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        inv = torch.where(is_medium, smoothed, scaled)
    return inv


def rope(x, positions, inv):
    # x: (tokens, heads, head_dim), rotate-half layout
    freqs = positions[:, None].to(torch.float32) * inv[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def rms_norm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return x * torch.rsqrt(var + eps) * w


def linear(t, name, x):
    y = x @ t[name + ".weight"].T
    if name + ".bias" in t:
        y = y + t[name + ".bias"]
    return y


def attention(q, k, v, n_heads, n_kv):
    # q: (S, H, D), k/v: (S, KV, D); causal
    S, _, D = q.shape
    rep = n_heads // n_kv
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    scores = torch.einsum("shd,thd->hst", q, k) / math.sqrt(D)
    mask = torch.triu(torch.ones(S, S, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(mask, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return torch.einsum("hst,thd->shd", p, v).reshape(S, n_heads * D)


def forward(cfg, t, ids, swiftkv, keep=None):
    """Logits (S, vocab) for every position of `ids`. `keep` (a dict), when given, receives "before_last": the hidden
    states (S, hidden) that enter the last layer (distillation's optional hidden-state term)."""
    L = cfg["num_hidden_layers"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg.get("head_dim") or cfg["hidden_size"] // H
    eps = cfg["rms_norm_eps"]
    l = cfg["num_key_value_layers"] if swiftkv else L
    g = cfg.get("key_value_group_size", 1) if swiftkv else 1
    inv = inv_freq(cfg)
    pos = torch.arange(len(ids))
    x = t["model.embed_tokens.weight"][torch.tensor(ids)]
    kv = {}
    for j in range(L):
        p = f"model.layers.{j}."
        if keep is not None and j == L - 1:
            keep["before_last"] = x
        if j == l:
            s = rms_norm(x, t["model.norm_swiftkv.weight"], eps)
            for leader in range(l, L, g):
                a = f"model.layers.{leader}.self_attn."
                kv[leader] = (rope(linear(t, a + "k_proj_swiftkv", s).view(-1, KV, D), pos, inv),
                              linear(t, a + "v_proj_swiftkv", s).view(-1, KV, D))
        h = rms_norm(x, t[p + "input_layernorm.weight"], eps)
        if j < l:
            q = linear(t, p + "self_attn.q_proj", h).view(-1, H, D)
            k = rope(linear(t, p + "self_attn.k_proj", h).view(-1, KV, D), pos, inv)
            v = linear(t, p + "self_attn.v_proj", h).view(-1, KV, D)
        else:
            q = linear(t, p + "self_attn.q_proj_swiftkv", h).view(-1, H, D)
            k, v = kv[l + (j - l) // g * g]
        q = rope(q, pos, inv)
        x = x + linear(t, p + "self_attn.o_proj", attention(q, k, v, H, KV))
        h = rms_norm(x, t[p + "post_attention_layernorm.weight"], eps)
        gate = linear(t, p + "mlp.gate_proj", h)
        up = linear(t, p + "mlp.up_proj", h)
        x = x + linear(t, p + "mlp.down_proj", torch.nn.functional.silu(gate) * up)
    x = rms_norm(x, t["model.norm.weight"], eps)
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    return x @ head.T


def greedy(cfg, t, ids, swiftkv, steps):
    ids = list(ids)
    out = []
    for _ in range(steps):
        nxt = int(forward(cfg, t, ids, swiftkv)[-1].argmax())
        out.append(nxt)
        ids.append(nxt)
    return out
