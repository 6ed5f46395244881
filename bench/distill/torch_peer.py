"""The PyTorch peer of a SwiftKV distillation step at a real model's shape (bench/distill/distill_gpu.cs measures ours).

Same work as CudaDistillationTrainer: random fp32 weights on the GPU; the frozen first half and the teacher's later half
under no_grad; the student's later half (SwiftKV 50%, g = 1) with autograd on norm_swiftkv and the *_swiftkv
projections only; T^2 KL at T = 2 over every position but the last; backward; torch.optim.Adam (fused). Attention is
PyTorch's SDPA (causal; fp32 runs its memory-efficient kernel), where ours materialises each group's scores.
Usage: python torch_peer.py --preset 1b|8b --sequences 4 --tokens 2048 --gemm tf32|fp32
"""
import argparse, math, time, json
import torch
import torch.nn.functional as F

PRESETS = {
    "1b": dict(hidden=2048, ffn=8192, layers=16, heads=32, kv=8, head_dim=64, factor=32.0),
    "8b": dict(hidden=4096, ffn=14336, layers=32, heads=32, kv=8, head_dim=128, factor=8.0),
}
VOCAB, THETA, EPS, TEMP = 128256, 500000.0, 1e-5, 2.0


def inv_freq(c):
    d = c["head_dim"]
    inv = 1.0 / (THETA ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    old, low, high = 8192, 1.0, 4.0
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / low, inv / c["factor"], inv)
    smooth = (old / wavelen - low) / (high - low)
    mid = ~(wavelen < old / high) & ~(wavelen > old / low)
    return torch.where(mid, (1 - smooth) * scaled / c["factor"] + smooth * scaled, scaled).float()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="1b")
    ap.add_argument("--sequences", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--gemm", default="tf32")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = a.gemm == "tf32"
    c = PRESETS[a.preset]
    dev = "cuda"
    H, FF, L, NH, KV, D = c["hidden"], c["ffn"], c["layers"], c["heads"], c["kv"], c["head_dim"]
    l = L // 2
    g = torch.Generator(device=dev).manual_seed(1)

    def w(*shape, trainable=False):
        t = torch.randn(*shape, device=dev, generator=g) * 0.02
        return t.requires_grad_(trainable)

    def norm_w(trainable=False):
        return (1 + 0.03 * torch.randn(H, device=dev, generator=g)).requires_grad_(trainable)

    layers = [dict(ln1=norm_w(), ln2=norm_w(), q=w(NH * D, H), k=w(KV * D, H), v=w(KV * D, H), o=w(H, NH * D),
                   gate=w(FF, H), up=w(FF, H), down=w(H, FF)) for _ in range(L)]
    for j in range(l, L):
        layers[j].update(q_skv=w(NH * D, H, trainable=True), k_skv=w(KV * D, H, trainable=True), v_skv=w(KV * D, H, trainable=True))
    embed, final_norm, head = w(VOCAB, H), norm_w(), w(VOCAB, H)
    norm_skv = norm_w(trainable=True)
    params = [norm_skv] + [layers[j][k] for j in range(l, L) for k in ("q_skv", "k_skv", "v_skv")]
    opt = torch.optim.Adam(params, lr=1e-6, fused=True)

    T = a.tokens
    freqs = torch.arange(T, device=dev, dtype=torch.float32)[:, None] * inv_freq(c).to(dev)[None, :]
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]   # (1, 1, T, D)

    def rope(x):   # (1, heads, T, D)
        half = D // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

    def rms(x, wt):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * wt

    def heads(x, n):
        return x.view(T, n, D).transpose(0, 1)[None]

    def attend(q, k, v):
        # K/V repeated per query head rather than enable_gqa: with fp32 inputs, SDPA's GQA path falls back to the math
        # kernel (a (heads, T, T) score tensor per layer kept for backward: out of memory at 8B x 8192 on 141 GB).
        rep = NH // KV
        o = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), is_causal=True)
        return o[0].transpose(0, 1).reshape(T, NH * D)

    def mlp_and_o(x, p, attn):
        x = x + attn @ p["o"].T
        hh = rms(x, p["ln2"])
        return x + (F.silu(hh @ p["gate"].T) * (hh @ p["up"].T)) @ p["down"].T

    def full(x, p):
        hh = rms(x, p["ln1"])
        q, k, v = rope(heads(hh @ p["q"].T, NH)), rope(heads(hh @ p["k"].T, KV)), heads(hh @ p["v"].T, KV)
        return mlp_and_o(x, p, attend(q, k, v))

    def step(ids, train):
        with torch.no_grad():
            x = embed[ids]
            for j in range(l):
                x = full(x, layers[j])
            xl = x
            for j in range(l, L):
                x = full(x, layers[j])
            ht = rms(x[:-1], final_norm)
        with torch.set_grad_enabled(train):
            s = rms(xl, norm_skv)
            x = xl
            for j in range(l, L):
                p = layers[j]
                k, v = rope(heads(s @ p["k_skv"].T, KV)), heads(s @ p["v_skv"].T, KV)
                q = rope(heads(rms(x, p["ln1"]) @ p["q_skv"].T, NH))
                x = mlp_and_o(x, p, attend(q, k, v))
            hs = rms(x[:-1], final_norm)
            # The loss over chunks of 2048 rows: the teacher's logits of a chunk are dropped once used, so an 8K sequence
            # holds the student's log-probabilities and one chunk of the teacher's, not both models' (T, vocab) at once.
            loss = 0.0
            for c0 in range(0, T - 1, 2048):
                with torch.no_grad():
                    lpt = torch.log_softmax(ht[c0:c0 + 2048] @ head.T / TEMP, -1)
                    pt = lpt.exp()
                lps = torch.log_softmax(hs[c0:c0 + 2048] @ head.T / TEMP, -1)
                loss = loss + TEMP ** 2 * (pt * (lpt - lps)).sum()
        return loss

    gen = torch.Generator().manual_seed(2)
    batch = [torch.randint(0, VOCAB, (T,), generator=gen).to(dev) for _ in range(a.sequences)]
    positions = a.sequences * (T - 1)

    def train_step():
        opt.zero_grad(set_to_none=True)
        for ids in batch:
            (step(ids, True) / positions).backward()
        opt.step()

    def score():
        with torch.no_grad():
            for ids in batch:
                step(ids, False)

    def timed(fn):
        fn()
        torch.cuda.synchronize()
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            runs.append(time.perf_counter() - t0)
        return sorted(runs)[1]

    sc, st = timed(score), timed(train_step)
    print(json.dumps(dict(peer="pytorch " + torch.__version__, device=torch.cuda.get_device_name(), preset=a.preset,
                          sequences=a.sequences, tokens=T, gemm=a.gemm, score_s=round(sc, 4), step_s=round(st, 4),
                          tokens_per_s=round(a.sequences * T / st), max_memory_gb=round(torch.cuda.max_memory_allocated() / 1e9, 1))))


if __name__ == "__main__":
    main()
