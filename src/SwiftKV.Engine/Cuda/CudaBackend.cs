// The CUDA backend: the same forward pass as CpuBackend, on one GPU, bf16 weights and KV caches, fp32 residual
// stream and accumulation. One Forward call runs a step of tokens for one sequence:
//   embed -> layers 0..l-1 over every token
//         -> SwiftKV: s = norm_swiftkv(x_l); one GEMM gives K/V of every AcrossKV leader for every token,
//            written to the shared caches; only the selected rows (a device-pointer slice, no copy) continue
//            through layers l..L-1 with q_proj_swiftkv
//         -> model.norm -> lm_head for the selected rows -> logits copied to the host.
// Per layer: norm -> [q;k;v] GEMM -> bias+RoPE(q) -> bias+RoPE(k)+cache write -> attention -> o_proj GEMM
// accumulated into x (beta = 1: the residual add) -> o bias + post norm -> [gate;up] GEMM -> silu·up ->
// down GEMM accumulated into x.
// Shapes: x (rows, hidden) fp32; normed activations (rows, hidden) bf16; qkv (rows, q + 2 kv) fp32.
using SwiftKV.Cuda;
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Cpu;
using SwiftKV.Model;

namespace SwiftKV.Engine.Cuda;

/// <summary>Runs a <see cref="LlamaWeights"/> model (plain Llama or SwiftKV) on the first CUDA GPU.</summary>
public sealed class CudaBackend : IModelBackend
{
    readonly CudaStream _stream;
    readonly Cublas _blas;
    readonly KernelLibrary _kernels;
    readonly CudaWeights _w;
    readonly Workspace _ws;
    readonly EmbeddingKernel _embed;
    readonly RmsNormKernel _norm;
    readonly RopeKernel _rope;
    readonly KvCacheKernel _kvWrite;
    readonly AttentionKernel _attention;
    readonly SiluMulKernel _siluMul;
    readonly float _eps;
    bool _disposed;

    /// <summary>Uploads <paramref name="weights"/> to the GPU; throws <see cref="CudaException"/> when CUDA is unusable.</summary>
    public CudaBackend(LlamaWeights weights)
    {
        ArgumentNullException.ThrowIfNull(weights);
        Config = weights.Config;
        if (weights.SwiftKvEnabled && !Config.SwiftKv)
            throw new InvalidModelException("LlamaWeights: SwiftKvEnabled is true but config.json has no SwiftKV fields (swiftkv, num_key_value_layers).");
        if (Config.HeadDim > AttentionKernel.MaxHeadDim)
            throw new InvalidModelException($"head_dim {Config.HeadDim} exceeds the CUDA attention kernel's limit of {AttentionKernel.MaxHeadDim}.");
        SwiftKvEnabled = weights.SwiftKvEnabled;
        WeightShapes.Check(weights);
        Device = CudaRuntime.Device;
        _eps = (float)Config.RmsNormEps;
        var owned = new List<IDisposable>();
        try
        {
            _stream = new CudaStream(); owned.Add(_stream);
            _blas = new Cublas(_stream); owned.Add(_blas);
            _kernels = new KernelLibrary(); owned.Add(_kernels);
            _embed = new EmbeddingKernel(_kernels);
            _norm = new RmsNormKernel(_kernels);
            _rope = new RopeKernel(_kernels);
            _kvWrite = new KvCacheKernel(_kernels);
            _attention = new AttentionKernel(_kernels);
            _siluMul = new SiluMulKernel(_kernels);
            var invFreq = RotaryEmbedding.ComputeInvFreq(Config.HeadDim, Config.RopeTheta, Config.RopeScaling);
            _w = new CudaWeights(weights, invFreq); owned.Add(_w);
            _ws = new Workspace(Config, _w.SwiftKvLeaders.Length);
        }
        catch
        {
            for (int i = owned.Count - 1; i >= 0; i--) owned[i].Dispose();
            throw;
        }
    }

    public string Name => $"cuda:{Device.Ordinal}";
    public LlamaConfig Config { get; }
    public bool SwiftKvEnabled { get; }
    /// <summary>The GPU this backend runs on.</summary>
    public CudaDeviceInfo Device { get; }
    /// <summary>Device bytes held by the weights.</summary>
    public long WeightBytes => _w.Bytes;

    int FullLayers => SwiftKvEnabled ? Config.NumKeyValueLayers : Config.NumHiddenLayers;

    public ISequenceCache CreateCache(int capacity)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (capacity < 1 || capacity > Config.MaxPositionEmbeddings)
            throw new ArgumentOutOfRangeException(nameof(capacity), capacity,
                $"cache capacity must be in 1..{Config.MaxPositionEmbeddings} (max_position_embeddings).");
        return new CudaSequenceCache(this, Config.NumKvCaches(SwiftKvEnabled), capacity, Config.KeyValueDim);
    }

    public unsafe float[] Forward(ISequenceCache cache, ReadOnlySpan<int> tokens, LogitsSelection selection)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var c = ValidateStep(cache, tokens);
        var cfg = Config;
        int rows = tokens.Length, hidden = cfg.HiddenSize, start = c.Length;
        _ws.Ensure(rows);

        fixed (int* ids = tokens) _stream.CopyAsync(_ws.Ids.Span, ids, rows);
        _embed.Launch(_stream, _ws.Ids, _w.Embed, cfg.VocabSize, _ws.X, rows, hidden);

        var x = _ws.X.Span;
        for (int i = 0; i < FullLayers; i++)
        {
            var layer = _w.Layers[i];
            int ld = cfg.QueryDim + 2 * cfg.KeyValueDim;
            _norm.Launch(_stream, x, null, layer.InputLayernorm, _ws.Normed, rows, hidden, _eps);
            _blas.Linear(_ws.Normed, rows, hidden, layer.QkvOrQ, ld, _ws.Qkv);
            var qkv = _ws.Qkv.Span;
            _kvWrite.Launch(_stream, qkv.Slice(cfg.QueryDim), qkv.Slice(cfg.QueryDim + cfg.KeyValueDim), ld, layer.KBias?.Span, layer.VBias?.Span,
                _w.InvFreq, rows, cfg.NumKeyValueHeads, cfg.HeadDim, start, c.Keys(i), c.Values(i), c.Capacity);
            AttentionAndMlp(x, rows, start, layer, ld, c, i);
        }

        int pos0 = start;
        if (SwiftKvEnabled)
        {
            // SingleInputKV: every later cache is filled from the one state x_l, for every token of the step.
            int leaders = _w.SwiftKvLeaders.Length, kv = cfg.KeyValueDim, ld = leaders * 2 * kv;
            _norm.Launch(_stream, x, null, _w.NormSwiftKv!, _ws.Normed, rows, hidden, _eps);
            _blas.Linear(_ws.Normed, rows, hidden, _w.SwiftKvKv!, ld, _ws.SwiftKv);
            var all = _ws.SwiftKv.Span;
            for (int g = 0; g < leaders; g++)
            {
                int cacheIndex = cfg.KvCacheIndex(_w.SwiftKvLeaders[g], true);
                var (kb, vb) = _w.SwiftKvBiases[g];
                _kvWrite.Launch(_stream, all.Slice(g * 2 * kv), all.Slice(g * 2 * kv + kv), ld, kb?.Span, vb?.Span,
                    _w.InvFreq, rows, cfg.NumKeyValueHeads, cfg.HeadDim, start, c.Keys(cacheIndex), c.Values(cacheIndex), c.Capacity);
            }
            // The prefill saving: tokens whose logits nobody reads stop here.
            if (selection == LogitsSelection.LastToken && rows > 1)
            {
                x = x.Slice((long)(rows - 1) * hidden, hidden);
                pos0 = start + rows - 1;
                rows = 1;
            }
            for (int j = cfg.NumKeyValueLayers; j < cfg.NumHiddenLayers; j++)
            {
                var layer = _w.Layers[j];
                _norm.Launch(_stream, x, null, layer.InputLayernorm, _ws.Normed, rows, hidden, _eps);
                _blas.Linear(_ws.Normed, rows, hidden, layer.QkvOrQ, cfg.QueryDim, _ws.Qkv);
                AttentionAndMlp(x, rows, pos0, layer, cfg.QueryDim, c, cfg.KvCacheIndex(j, true));
            }
        }

        if (selection == LogitsSelection.LastToken && rows > 1)
        {
            x = x.Slice((long)(rows - 1) * hidden, hidden);
            rows = 1;
        }
        _norm.Launch(_stream, x, null, _w.Norm, _ws.Normed, rows, hidden, _eps);
        _blas.Linear(_ws.Normed, rows, hidden, _w.LmHead, cfg.VocabSize, _ws.Logits);
        var logits = new float[(long)rows * cfg.VocabSize];
        _stream.Download(_ws.Logits.Span, logits);
        c.Length = start + tokens.Length;
        return logits;
    }

    /// <summary>
    /// The rest of a layer once Q (columns 0..q-1 of the Qkv workspace, row stride <paramref name="ld"/>) is projected
    /// and the layer's K/V are cached: bias + RoPE on Q, attention over cache <paramref name="cacheIndex"/>, o_proj added
    /// into x, o bias + post_attention_layernorm, SwiGLU MLP added into x.
    /// </summary>
    void AttentionAndMlp(DeviceSpan<float> x, int rows, int pos0, CudaLayerWeights layer, int ld, CudaSequenceCache c, int cacheIndex)
    {
        var cfg = Config;
        int hidden = cfg.HiddenSize, inter = cfg.IntermediateSize;
        _rope.Launch(_stream, _ws.Qkv, ld, layer.QBias?.Span, _w.InvFreq, rows, cfg.NumAttentionHeads, cfg.HeadDim, pos0);
        _attention.Launch(_stream, _ws.Qkv, ld, c.Keys(cacheIndex), c.Values(cacheIndex), c.Capacity, _ws.Attn, rows,
            cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim, pos0);
        _blas.Linear(_ws.Attn, rows, cfg.QueryDim, layer.O, hidden, x, accumulate: true);
        _norm.Launch(_stream, x, layer.OBias?.Span, layer.PostAttentionLayernorm, _ws.Normed, rows, hidden, _eps);
        _blas.Linear(_ws.Normed, rows, hidden, layer.GateUp, 2 * inter, _ws.GateUp);
        _siluMul.Launch(_stream, _ws.GateUp, rows, inter, _ws.Mlp);
        _blas.Linear(_ws.Mlp, rows, inter, layer.Down, hidden, x, accumulate: true);
    }

    CudaSequenceCache ValidateStep(ISequenceCache cache, ReadOnlySpan<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(cache);
        if (cache is not CudaSequenceCache c || !ReferenceEquals(c.Owner, this))
            throw new ArgumentException("the cache was not created by this backend (use CreateCache of the same CudaBackend).", nameof(cache));
        c.ThrowIfDisposed();
        if (tokens.IsEmpty) throw new ArgumentException("a forward step needs at least one token.", nameof(tokens));
        for (int t = 0; t < tokens.Length; t++)
            if ((uint)tokens[t] >= (uint)Config.VocabSize)
                throw new ArgumentException($"token id {tokens[t]} at index {t} is outside the vocabulary [0, {Config.VocabSize}).", nameof(tokens));
        if ((long)c.Length + tokens.Length > c.Capacity)
            throw new ArgumentException(
                $"{tokens.Length} tokens do not fit the cache: it holds {c.Length} of {c.Capacity} tokens ({c.Capacity - c.Length} free).",
                nameof(tokens));
        return c;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _stream.Synchronize();
        _ws.Dispose();
        _attention.Dispose();
        _w.Dispose();
        _kernels.Dispose();
        _blas.Dispose();
        _stream.Dispose();
    }

    /// <summary>
    /// Scratch activations sized for the largest step seen so far (grown by doubling, never per call).
    /// NOTE: a long prefill holds (rows, 2·intermediate) fp32 here; chunked prefill will bound it.
    /// </summary>
    sealed class Workspace(LlamaConfig cfg, int swiftKvLeaders) : IDisposable
    {
        int _rows;
        public DeviceBuffer<int> Ids { get; private set; } = null!;
        public DeviceBuffer<float> X { get; private set; } = null!;
        public DeviceBuffer<Bf16> Normed { get; private set; } = null!;
        public DeviceBuffer<float> Qkv { get; private set; } = null!;
        public DeviceBuffer<Bf16> Attn { get; private set; } = null!;
        public DeviceBuffer<float> GateUp { get; private set; } = null!;
        public DeviceBuffer<Bf16> Mlp { get; private set; } = null!;
        public DeviceBuffer<float> SwiftKv { get; private set; } = null!;
        public DeviceBuffer<float> Logits { get; private set; } = null!;

        public void Ensure(int rows)
        {
            if (rows <= _rows) return;
            int n = Math.Max(rows, Math.Min(2 * _rows, cfg.MaxPositionEmbeddings));
            n = Math.Max(n, Math.Min(16, cfg.MaxPositionEmbeddings));
            Dispose();
            Ids = new DeviceBuffer<int>(n);
            X = new DeviceBuffer<float>((long)n * cfg.HiddenSize);
            Normed = new DeviceBuffer<Bf16>((long)n * cfg.HiddenSize);
            Qkv = new DeviceBuffer<float>((long)n * (cfg.QueryDim + 2 * cfg.KeyValueDim));
            Attn = new DeviceBuffer<Bf16>((long)n * cfg.QueryDim);
            GateUp = new DeviceBuffer<float>(2L * n * cfg.IntermediateSize);
            Mlp = new DeviceBuffer<Bf16>((long)n * cfg.IntermediateSize);
            SwiftKv = new DeviceBuffer<float>(Math.Max(1L, 2L * n * swiftKvLeaders * cfg.KeyValueDim));
            Logits = new DeviceBuffer<float>((long)n * cfg.VocabSize);
            _rows = n;
        }

        public void Dispose()
        {
            foreach (var b in new IDisposable?[] { Ids, X, Normed, Qkv, Attn, GateUp, Mlp, SwiftKv, Logits }) b?.Dispose();
            _rows = 0;
        }
    }
}
