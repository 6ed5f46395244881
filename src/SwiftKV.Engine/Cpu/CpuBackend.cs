// The reference-quality fp32 CPU backend. One Forward call runs a step of tokens for one sequence:
//   embed -> layers 0..l-1 (full Llama layers over every token)
//         -> SwiftKV: s = norm_swiftkv(x_l); K/V of every later cache from s for every token;
//            only the rows whose logits are wanted continue through layers l..L-1 (Q from q_proj_swiftkv)
//         -> model.norm -> lm_head for the selected rows only.
// With SwiftKV off every layer is a full layer and the "continuing rows" cut happens only before lm_head.
// Shapes: activations (num_tokens, hidden_size); q (num_tokens, num_heads * head_dim); caches see CpuSequenceCache.
using SwiftKV.Model;

namespace SwiftKV.Engine.Cpu;

/// <summary>Runs a <see cref="LlamaWeights"/> model (plain Llama or SwiftKV) on the CPU in fp32.</summary>
public sealed partial class CpuBackend : IModelBackend
{
    readonly LlamaWeights _w;
    readonly RotaryEmbedding _rope;
    readonly float _eps;
    bool _disposed;

    public CpuBackend(LlamaWeights weights)
    {
        ArgumentNullException.ThrowIfNull(weights);
        _w = weights;
        Config = weights.Config;
        if (weights.SwiftKvEnabled && !Config.SwiftKv)
            throw new InvalidModelException("LlamaWeights: SwiftKvEnabled is true but config.json has no SwiftKV fields (swiftkv, num_key_value_layers).");
        SwiftKvEnabled = weights.SwiftKvEnabled;
        WeightShapes.Check(weights);
        _rope = new RotaryEmbedding(Config);
        _eps = (float)Config.RmsNormEps;
    }

    /// <summary>
    /// W8A8, as FP8 checkpoints are published to run (Fp8Weights.KeepW8A8): the input rows of every Linear whose weight
    /// the checkpoint stores as fp8 (lm_head too, if it is) are rounded to bf16 and quantized to e4m3 per token
    /// (<see cref="CpuKernels.QuantizeRowsE4m3"/>) before the fp32 product with the dequantized weight, at every step.
    /// (The CUDA backend keeps bf16 activations for steps of at most 8 rows.) Off by default: weight-only numerics.
    /// Setting it needs fp8 matrices in the checkpoint. Set it before steps run (LocalModel does, before serving starts):
    /// a step reads it more than once.
    /// </summary>
    public bool UseW8A8
    {
        get => _w8a8;
        set
        {
            if (value && _w.Float8Weights.Count == 0)
                throw new InvalidOperationException("W8A8 quantizes the inputs of the matrices an FP8 checkpoint stores as fp8; this model holds none.");
            _w8a8 = value;
        }
    }
    bool _w8a8;

    /// <summary>Weight matrices the checkpoint stores as fp8 (those <see cref="UseW8A8"/> quantizes the inputs of).</summary>
    public int Float8Weights => _w.Float8Weights.Count;

    /// <summary>
    /// What a Linear over <paramref name="w"/> reads: x, or under <see cref="UseW8A8"/> x's rows quantized per token.
    /// The last input quantized is kept (q, k and v read the same normed rows; so do gate and up): those arrays are
    /// made fresh for each step and never written after, so the same array means the same values.
    /// </summary>
    float[] LinearInput(float[] x, int rows, int inDim, float[] w)
    {
        if (!_w8a8 || !_w.Float8Weights.Contains(w)) return x;
        var last = _lastQuantized;   // one reference read: steps on other threads replace it whole, never half
        if (last is not null && ReferenceEquals(last.Input, x)) return last.Rows;
        var q = CpuKernels.QuantizeRowsE4m3(x, rows, inDim);
        _lastQuantized = new QuantizedInput(x, q);
        return q;
    }
    QuantizedInput? _lastQuantized;
    sealed record QuantizedInput(float[] Input, float[] Rows);

    public string Name => "cpu";
    public LlamaConfig Config { get; }
    public bool SwiftKvEnabled { get; }
    internal RotaryEmbedding Rope => _rope;

    int FullLayers => SwiftKvEnabled ? Config.NumKeyValueLayers : Config.NumHiddenLayers;

    public ISequenceCache CreateCache(int capacity)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        StepValidation.Capacity(Config, capacity);
        CheckKvFits(capacity, $"a KV cache of {capacity} tokens", "ask for fewer tokens");
        return new CpuSequenceCache(this, Config.NumKvCaches(SwiftKvEnabled), capacity, Config.KeyValueDim);
    }

    /// <summary>
    /// Refuses KV memory for <paramref name="tokens"/> tokens that this process may not use. Linux overcommits: such an
    /// allocation is not an OutOfMemoryException but a process killed later, when the pages are touched; here the
    /// caller can still be told what to change.
    /// </summary>
    void CheckKvFits(long tokens, string what, string remedy)
    {
        long bytes = tokens * KvBytesPerToken, available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (bytes > available)
            throw new ArgumentOutOfRangeException(nameof(tokens), tokens,
                $"{what} is {bytes / 1e9:F1} GB, more than the {available / 1e9:F1} GB this process may use: {remedy}.");
    }

    public float[] Forward(ISequenceCache cache, ReadOnlySpan<int> tokens, LogitsSelection selection)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var c = ValidateStep(cache, tokens);
        StepValidation.Logits(Config, tokens.Length, selection);
        var cfg = Config;
        int rows = tokens.Length, hidden = cfg.HiddenSize, start = c.Length;

        var x = new float[rows * hidden];
        for (int t = 0; t < rows; t++)
            Array.Copy(_w.EmbedTokens, (long)tokens[t] * hidden, x, (long)t * hidden, hidden);
        var positions = new int[rows];
        for (int t = 0; t < rows; t++) positions[t] = start + t;

        for (int i = 0; i < FullLayers; i++)
        {
            var layer = _w.Layers[i];
            var h = Norm(x, rows, layer.InputLayernorm);
            AppendKv(h, rows, start, layer.KProj!, layer.KBias, layer.VProj!, layer.VBias, c, i);
            AttentionAndMlp(x, rows, positions, layer, h, layer.QProj!, layer.QBias, c, i);
        }

        if (SwiftKvEnabled)
        {
            // SingleInputKV: every later cache is filled from the one state x_l, for every token of the step.
            var s = Norm(x, rows, _w.NormSwiftKv!);
            for (int j = cfg.NumKeyValueLayers; j < cfg.NumHiddenLayers; j++)
            {
                if (!cfg.IsKvGroupLeader(j)) continue;
                var layer = _w.Layers[j];
                AppendKv(s, rows, start, layer.KProjSwiftKv!, layer.KBiasSwiftKv, layer.VProjSwiftKv!, layer.VBiasSwiftKv,
                    c, cfg.KvCacheIndex(j, true));
            }
            // The prefill saving: tokens whose logits nobody reads stop here.
            if (selection == LogitsSelection.LastToken && rows > 1)
            {
                x = x.AsSpan((rows - 1) * hidden, hidden).ToArray();
                positions = [positions[rows - 1]];
                rows = 1;
            }
            for (int j = cfg.NumKeyValueLayers; j < cfg.NumHiddenLayers; j++)
            {
                var layer = _w.Layers[j];
                var h = Norm(x, rows, layer.InputLayernorm);
                AttentionAndMlp(x, rows, positions, layer, h, layer.QProjSwiftKv!, layer.QBiasSwiftKv, c, cfg.KvCacheIndex(j, true));
            }
        }

        if (selection == LogitsSelection.LastToken && rows > 1)
        {
            x = x.AsSpan((rows - 1) * hidden, hidden).ToArray();
            rows = 1;
        }
        var final = Norm(x, rows, _w.Norm);
        var logits = new float[rows * cfg.VocabSize];
        CpuKernels.Linear(final, rows, hidden, _w.LmHead, null, cfg.VocabSize, logits);
        c.Length = start + tokens.Length;
        return logits;
    }

    CpuSequenceCache ValidateStep(ISequenceCache cache, ReadOnlySpan<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(cache);
        if (cache is not CpuSequenceCache c || !ReferenceEquals(c.Owner, this))
            throw new ArgumentException("the cache was not created by this backend (use CreateCache of the same CpuBackend).", nameof(cache));
        c.ThrowIfDisposed();
        StepValidation.Step(Config, tokens, c.Length, c.Capacity);
        return c;
    }

    float[] Norm(float[] x, int rows, float[] weight)
    {
        var y = new float[x.Length];
        CpuKernels.RmsNorm(x, rows, Config.HiddenSize, weight, _eps, y);
        return y;
    }

    /// <summary>K = RoPE(h·Wkᵀ + bk), V = h·Wvᵀ + bv for every row, written at cache slots start.. of one cache.</summary>
    void AppendKv(float[] h, int rows, int start, float[] kW, float[]? kB, float[] vW, float[]? vB, CpuSequenceCache c, int cacheIndex)
    {
        int kvDim = Config.KeyValueDim, hidden = Config.HiddenSize;
        var k = new float[rows * kvDim];
        var v = new float[rows * kvDim];
        CpuKernels.Linear(LinearInput(h, rows, hidden, kW), rows, hidden, kW, kB, kvDim, k);
        CpuKernels.Linear(LinearInput(h, rows, hidden, vW), rows, hidden, vW, vB, kvDim, v);
        var positions = new int[rows];
        for (int t = 0; t < rows; t++) positions[t] = start + t;
        _rope.RotateRows(k, Config.NumKeyValueHeads, positions);
        Array.Copy(k, 0, c.Keys(cacheIndex), (long)start * kvDim, k.Length);
        Array.Copy(v, 0, c.Values(cacheIndex), (long)start * kvDim, v.Length);
    }

    /// <summary>
    /// The rest of a decoder layer for rows whose K/V are already cached: Q = RoPE(h·Wqᵀ + bq), attention over
    /// cache <paramref name="cacheIndex"/>, o_proj, residual, post_attention_layernorm, SwiGLU MLP, residual.
    /// </summary>
    void AttentionAndMlp(float[] x, int rows, int[] positions, LlamaLayerWeights layer, float[] h,
        float[] qW, float[]? qB, CpuSequenceCache c, int cacheIndex)
    {
        var cfg = Config;
        int hidden = cfg.HiddenSize, qDim = cfg.QueryDim;
        var q = new float[rows * qDim];
        CpuKernels.Linear(LinearInput(h, rows, hidden, qW), rows, hidden, qW, qB, qDim, q);
        _rope.RotateRows(q, cfg.NumAttentionHeads, positions);
        var attn = new float[rows * qDim];
        CpuKernels.Attention(q, rows, positions, cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim,
            c.Keys(cacheIndex), c.Values(cacheIndex), attn);
        OutputAndMlp(x, rows, layer, attn);
    }

    void OutputAndMlp(float[] x, int rows, LlamaLayerWeights layer, float[] attn) =>
        PostAttention.Run(Config, _eps, x, rows, layer, attn, input: _w8a8 ? LinearInput : null);

    public void Dispose() => _disposed = true;
}
