// The CUDA backend: the same forward pass as CpuBackend, on one GPU, bf16 weights and KV caches, fp32 residual
// stream and accumulation. One Forward call runs a step of tokens for one sequence:
//   embed -> layers 0..l-1 over every token
//         -> SwiftKV: s = norm_swiftkv(x_l); one GEMM gives K/V of every AcrossKV leader for every token,
//            written to the shared caches; only the selected rows (a device-pointer slice, no copy) continue
//            through layers l..L-1 with q_proj_swiftkv
//         -> model.norm -> lm_head for the selected rows -> logits copied to the host (Forward), or argmax /
//            top-k/top-p sampling on the GPU with only the token id copied back (NextToken).
// Decode (one token) replays a CUDA graph per sequence cache: token and position live in device memory that the
// captured kernels read, so one capture serves every later step. The attention kernel still takes its position
// by value, so the step is captured as segments cut at each attention launch, which is launched directly
// between them (33 graph launches + 32 attention launches per 8B step instead of ~330 launches).
// Per layer: norm -> [q;k;v] GEMM -> bias+RoPE(q) -> bias+RoPE(k)+cache write -> attention -> o_proj GEMM
// accumulated into x (beta = 1: the residual add) -> o bias + post norm -> [gate;up] GEMM -> silu·up ->
// down GEMM accumulated into x.
// Shapes: x (rows, hidden) fp32; normed activations (rows, hidden) bf16; qkv (rows, q + 2 kv) fp32.
using System.Diagnostics;
using SwiftKV.Cuda;
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Cpu;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;

namespace SwiftKV.Engine.Cuda;

/// <summary>
/// How <see cref="CudaBackend.NextToken"/> picks a token: greedy (argmax) when Temperature &lt;= 0; TopK 0 = no
/// top-k filter; TopP 1 = no nucleus filter.
/// </summary>
public readonly record struct GpuSampling(float Temperature = 0, int TopK = 0, float TopP = 1, ulong Seed = 0)
{
    public bool IsGreedy => !(Temperature > 0);
}

/// <summary>Runs a Llama or SwiftKV model on the first CUDA GPU.</summary>
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
    readonly ArgmaxKernel _argmax;
    readonly SamplingKernel _sample;
    readonly DeviceBuffer<int> _stepInts;   // [token, position] read by the decode graph
    readonly DeviceBuffer<int> _picked;     // the chosen token id(s)
    readonly PinnedHostBuffer _pinned;      // host side of both: [0..1] step ints, [16..] picked ids
    readonly CudaEvent _stepUploaded;
    readonly float _eps;
    DecodeGraph? _recording;
    bool _disposed;

    /// <summary>Uploads <paramref name="weights"/> to the GPU; throws <see cref="CudaException"/> when CUDA is unusable.</summary>
    public CudaBackend(LlamaWeights weights) : this(Checked(weights).Config, weights.SwiftKvEnabled, (s, _) => new HostWeightSource(weights, s)) { }

    /// <summary>
    /// Loads a checkpoint directory straight to the GPU: config.json checked, every tensor checked (presence, shape,
    /// dtype) before any is read, then the memory-mapped bytes streamed through pinned staging with the uploads
    /// overlapping the reads. bf16 tensors are copied as they are; fp16/fp32 are rounded to bf16 on the host.
    /// </summary>
    public static CudaBackend Load(string checkpointDir, bool swiftKvEnabled)
    {
        var config = LlamaConfig.Load(checkpointDir);
        using var checkpoint = SafetensorsCheckpoint.Open(checkpointDir);
        LlamaCheckpointLoader.Check(config, checkpoint, LlamaTensorNames.ForModel(config, swiftKvEnabled), swiftKvEnabled);
        long read = 0;
        var backend = new CudaBackend(config, swiftKvEnabled, (s, _) => new CheckpointWeightSource(checkpoint, s), src => read = ((CheckpointWeightSource)src).BytesRead);
        backend.LoadedBytes = read;
        return backend;
    }

    /// <summary>A model of <paramref name="config"/>'s shape with seeded random weights made on the GPU (benchmarks).</summary>
    public static CudaBackend CreateRandom(LlamaConfig config, bool swiftKvEnabled, ulong seed = 1)
    {
        ArgumentNullException.ThrowIfNull(config);
        return new CudaBackend(config, swiftKvEnabled, (s, k) => new RandomWeightSource(new RandomFillKernel(k), s, seed));
    }

    static LlamaWeights Checked(LlamaWeights weights)
    {
        ArgumentNullException.ThrowIfNull(weights);
        WeightShapes.Check(weights);
        return weights;
    }

    CudaBackend(LlamaConfig config, bool swiftKvEnabled, Func<CudaStream, KernelLibrary, WeightSource> source, Action<WeightSource>? loaded = null)
    {
        Config = config;
        if (swiftKvEnabled && !Config.SwiftKv)
            throw new InvalidModelException("SwiftKV was requested but config.json has no SwiftKV fields (swiftkv, num_key_value_layers).");
        if (Config.HeadDim > AttentionKernel.MaxHeadDim)
            throw new InvalidModelException($"head_dim {Config.HeadDim} exceeds the CUDA attention kernel's limit of {AttentionKernel.MaxHeadDim}.");
        SwiftKvEnabled = swiftKvEnabled;
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
            _argmax = new ArgmaxKernel(_kernels);
            _sample = new SamplingKernel(_kernels);
            _stepInts = new DeviceBuffer<int>(2); owned.Add(_stepInts);
            _picked = new DeviceBuffer<int>(16); owned.Add(_picked);
            _pinned = new PinnedHostBuffer(4096); owned.Add(_pinned);
            _stepUploaded = new CudaEvent(); owned.Add(_stepUploaded);
            var invFreq = RotaryEmbedding.ComputeInvFreq(Config.HeadDim, Config.RopeTheta, Config.RopeScaling);
            var sw = Stopwatch.StartNew();
            using (var src = source(_stream, _kernels))
            {
                _w = new CudaWeights(Config, swiftKvEnabled, src, invFreq); owned.Add(_w);
                loaded?.Invoke(src);
            }
            LoadSeconds = sw.Elapsed.TotalSeconds;
            _ws = new Workspace(Config, _w.SwiftKvLeaders.Length); owned.Add(_ws);
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
    /// <summary>Seconds spent filling the weights (reading + uploading, or generating) in the constructor.</summary>
    public double LoadSeconds { get; }
    /// <summary>Checkpoint bytes read by <see cref="Load"/> (0 for other constructors).</summary>
    public long LoadedBytes { get; private set; }
    /// <summary>Replay single-token steps as CUDA graphs (default). Off: every kernel is launched one by one.</summary>
    public bool UseGraphs { get; set; } = true;
    /// <summary>The stream every step runs on (benchmarks record events on it).</summary>
    public CudaStream Stream => _stream;

    int FullLayers => SwiftKvEnabled ? Config.NumKeyValueLayers : Config.NumHiddenLayers;

    public ISequenceCache CreateCache(int capacity)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (capacity < 1 || capacity > Config.MaxPositionEmbeddings)
            throw new ArgumentOutOfRangeException(nameof(capacity), capacity,
                $"cache capacity must be in 1..{Config.MaxPositionEmbeddings} (max_position_embeddings).");
        return new CudaSequenceCache(this, Config.NumKvCaches(SwiftKvEnabled), capacity, Config.KeyValueDim);
    }

    public float[] Forward(ISequenceCache cache, ReadOnlySpan<int> tokens, LogitsSelection selection)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var c = ValidateStep(cache, tokens);
        int rows = RunStep(c, tokens, selection);
        var logits = new float[(long)rows * Config.VocabSize];
        _stream.Download(_ws.Logits.Span, logits);
        return logits;
    }

    /// <summary>
    /// Runs <paramref name="tokens"/> (a prompt or one decode token) and returns the next token chosen on the GPU
    /// from the last row's logits: argmax when greedy, else temperature / top-k / top-p sampling with a uniform
    /// drawn from (Seed, <paramref name="step"/>), so the same seed and steps give the same tokens. Only the
    /// token id crosses to the host.
    /// </summary>
    public unsafe int NextToken(ISequenceCache cache, ReadOnlySpan<int> tokens, GpuSampling sampling, long step = 0)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!sampling.IsGreedy && !(sampling.TopP > 0 && sampling.TopP <= 1))
            throw new ArgumentOutOfRangeException(nameof(sampling), $"top_p {sampling.TopP} must be in (0, 1].");
        if (sampling.TopK < 0) throw new ArgumentOutOfRangeException(nameof(sampling), $"top_k {sampling.TopK} must be >= 0.");
        var c = ValidateStep(cache, tokens);
        bool argmaxDone = RunStep(c, tokens, LogitsSelection.LastToken, argmaxInGraph: true) < 0;
        int vocab = Config.VocabSize;
        if (!sampling.IsGreedy)
            _sample.Launch(_stream, _ws.Logits.Span, 1, vocab, sampling.Temperature, sampling.TopK, sampling.TopP, Uniform(sampling.Seed, step), _picked.Span);
        else if (!argmaxDone)
            _argmax.Launch(_stream, _ws.Logits.Span, 1, vocab, _picked.Span);
        int* host = (int*)(_pinned.Pointer + 64);
        _stream.DownloadAsync(_picked.Span, host, 1);
        _stream.Synchronize();
        return host[0];
    }

    /// <summary>A uniform in [0, 1) from (seed, step): SplitMix64, 24 bits.</summary>
    static float Uniform(ulong seed, long step)
    {
        ulong x = seed + 0x9E3779B97F4A7C15UL * (ulong)(step + 1);
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
        x ^= x >> 31;
        return (x >> 40) * (1f / 16777216f);
    }

    /// <summary>
    /// Queues one step; leaves the selected rows' logits at the start of the Logits workspace and returns their
    /// count, negated when the step was a graph replay that also left argmax of row 0 in the picked-token buffer.
    /// </summary>
    unsafe int RunStep(CudaSequenceCache c, ReadOnlySpan<int> tokens, LogitsSelection selection, bool argmaxInGraph = false)
    {
        int rows = tokens.Length, start = c.Length;
        if (rows == 1 && UseGraphs)
        {
            ReplayDecode(c, tokens[0], start);
            c.Length = start + 1;
            return argmaxInGraph ? -1 : 1;
        }
        _ws.Ensure(rows, selection == LogitsSelection.AllTokens ? rows : 1);
        fixed (int* ids = tokens) _stream.CopyAsync(_ws.Ids.Span, ids, rows);
        int outRows = Encode(c, rows, start, selection, _ws.Ids.Span, null);
        c.Length = start + rows;
        return outRows;
    }

    /// <summary>
    /// Queues the forward pass of <paramref name="rows"/> tokens at positions start.. (or at positionBase[0].. when
    /// given: graph capture) and returns how many rows of logits it leaves in the Logits workspace.
    /// </summary>
    int Encode(CudaSequenceCache c, int rows, int start, LogitsSelection selection, DeviceSpan<int> ids, DeviceSpan<int>? positionBase)
    {
        var cfg = Config;
        int hidden = cfg.HiddenSize;
        _embed.Launch(_stream, ids, _w.Embed, cfg.VocabSize, _ws.X, rows, hidden);

        var x = _ws.X.Span;
        for (int i = 0; i < FullLayers; i++)
        {
            var layer = _w.Layers[i];
            int ld = cfg.QueryDim + 2 * cfg.KeyValueDim;
            _norm.Launch(_stream, x, null, layer.InputLayernorm, _ws.Normed, rows, hidden, _eps);
            _blas.Linear(_ws.Normed, rows, hidden, layer.QkvOrQ, ld, _ws.Qkv);
            var qkv = _ws.Qkv.Span;
            _kvWrite.Launch(_stream, qkv.Slice(cfg.QueryDim), qkv.Slice(cfg.QueryDim + cfg.KeyValueDim), ld, layer.KBias?.Span, layer.VBias?.Span,
                _w.InvFreq, rows, cfg.NumKeyValueHeads, cfg.HeadDim, start, c.Keys(i), c.Values(i), c.Capacity, positionBase);
            AttentionAndMlp(x, rows, start, layer, ld, c, i, positionBase);
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
                    _w.InvFreq, rows, cfg.NumKeyValueHeads, cfg.HeadDim, start, c.Keys(cacheIndex), c.Values(cacheIndex), c.Capacity, positionBase);
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
                AttentionAndMlp(x, rows, pos0, layer, cfg.QueryDim, c, cfg.KvCacheIndex(j, true), positionBase);
            }
        }

        if (selection == LogitsSelection.LastToken && rows > 1)
        {
            x = x.Slice((long)(rows - 1) * hidden, hidden);
            rows = 1;
        }
        _norm.Launch(_stream, x, null, _w.Norm, _ws.Normed, rows, hidden, _eps);
        _blas.Linear(_ws.Normed, rows, hidden, _w.LmHead, cfg.VocabSize, _ws.Logits);
        return rows;
    }

    /// <summary>
    /// One decode step by graph replay. The first step of a cache (or the first after the workspace moved) runs
    /// directly once, so cuBLAS and lazily loaded kernels are set up outside capture, then is captured; rerunning
    /// the same step is idempotent (same K/V written to the same slot, same logits).
    /// </summary>
    unsafe void ReplayDecode(CudaSequenceCache c, int token, int pos)
    {
        _stepUploaded.Synchronize();   // the pinned step ints of the previous upload may be overwritten now
        int* host = (int*)_pinned.Pointer;
        host[0] = token;
        host[1] = pos;
        _stream.CopyBytesAsync(_stepInts.Address, host, 2 * sizeof(int));
        _stepUploaded.Record(_stream);
        var ids = _stepInts.Span.Slice(0, 1);
        var positionBase = _stepInts.Span.Slice(1, 1);
        var g = c.DecodeGraph;
        if (g is null || g.Generation != _ws.Generation)
        {
            c.DecodeGraph = null;
            g?.Dispose();
            _ws.Ensure(1, 1);
            Encode(c, 1, pos, LogitsSelection.LastToken, ids, positionBase);
            _argmax.Launch(_stream, _ws.Logits.Span, 1, Config.VocabSize, _picked.Span);
            _stream.Synchronize();
            g = c.DecodeGraph = CaptureDecode(c, pos, ids, positionBase);
        }
        for (int k = 0; k < g.Segments.Count; k++)
        {
            g.Segments[k].Launch(_stream);
            if (k < g.Attention.Count)
            {
                var (ld, cacheIndex, rows) = g.Attention[k];
                LaunchAttention(rows, pos, c, cacheIndex, ld);
            }
        }
    }

    DecodeGraph CaptureDecode(CudaSequenceCache c, int pos, DeviceSpan<int> ids, DeviceSpan<int> positionBase)
    {
        var g = new DecodeGraph(_ws.Generation);
        _recording = g;
        try
        {
            CudaGraph.BeginCapture(_stream);
            Encode(c, 1, pos, LogitsSelection.LastToken, ids, positionBase);
            _argmax.Launch(_stream, _ws.Logits.Span, 1, Config.VocabSize, _picked.Span);
            g.Segments.Add(CudaGraph.EndCapture(_stream));
            return g;
        }
        catch
        {
            CudaGraph.AbortCapture(_stream);
            g.Dispose();
            throw;
        }
        finally
        {
            _recording = null;
        }
    }

    /// <summary>Attention of a layer: launched now, or (while a decode graph is captured) cut out of it and launched at replay.</summary>
    void Attend(int rows, int pos0, CudaSequenceCache c, int cacheIndex, int ld)
    {
        if (_recording is { } g)
        {
            g.Segments.Add(CudaGraph.EndCapture(_stream));
            g.Attention.Add((ld, cacheIndex, rows));
            CudaGraph.BeginCapture(_stream);
            return;
        }
        LaunchAttention(rows, pos0, c, cacheIndex, ld);
    }

    void LaunchAttention(int rows, int pos0, CudaSequenceCache c, int cacheIndex, int ld)
    {
        var cfg = Config;
        _attention.Launch(_stream, _ws.Qkv, ld, c.Keys(cacheIndex), c.Values(cacheIndex), c.Capacity, _ws.Attn, rows,
            cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim, pos0);
    }

    /// <summary>
    /// The rest of a layer once Q (columns 0..q-1 of the Qkv workspace, row stride <paramref name="ld"/>) is projected
    /// and the layer's K/V are cached: bias + RoPE on Q, attention over cache <paramref name="cacheIndex"/>, o_proj added
    /// into x, o bias + post_attention_layernorm, SwiGLU MLP added into x.
    /// </summary>
    void AttentionAndMlp(DeviceSpan<float> x, int rows, int pos0, CudaLayerWeights layer, int ld, CudaSequenceCache c, int cacheIndex,
        DeviceSpan<int>? positionBase)
    {
        var cfg = Config;
        int hidden = cfg.HiddenSize, inter = cfg.IntermediateSize;
        _rope.Launch(_stream, _ws.Qkv, ld, layer.QBias?.Span, _w.InvFreq, rows, cfg.NumAttentionHeads, cfg.HeadDim, pos0, positionBase);
        Attend(rows, pos0, c, cacheIndex, ld);
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
        _stepUploaded.Dispose();
        _pinned.Dispose();
        _picked.Dispose();
        _stepInts.Dispose();
        _stream.Dispose();
    }

    /// <summary>
    /// Scratch activations sized for the largest step seen so far (grown by doubling, never per call); logits are
    /// sized separately for the rows that need them (a LastToken prefill needs one). Generation changes whenever
    /// a buffer moves, so decode graphs that baked the old addresses are recaptured.
    /// NOTE: a long prefill holds (rows, 2·intermediate) fp32 here; chunked prefill will bound it.
    /// </summary>
    sealed class Workspace(LlamaConfig cfg, int swiftKvLeaders) : IDisposable
    {
        int _rows, _logitsRows;
        public int Generation { get; private set; }
        public DeviceBuffer<int> Ids { get; private set; } = null!;
        public DeviceBuffer<float> X { get; private set; } = null!;
        public DeviceBuffer<Bf16> Normed { get; private set; } = null!;
        public DeviceBuffer<float> Qkv { get; private set; } = null!;
        public DeviceBuffer<Bf16> Attn { get; private set; } = null!;
        public DeviceBuffer<float> GateUp { get; private set; } = null!;
        public DeviceBuffer<Bf16> Mlp { get; private set; } = null!;
        public DeviceBuffer<float> SwiftKv { get; private set; } = null!;
        public DeviceBuffer<float> Logits { get; private set; } = null!;

        public void Ensure(int rows, int logitsRows)
        {
            if (logitsRows > _logitsRows)
            {
                Logits?.Dispose();
                int n = Math.Max(logitsRows, Math.Min(2 * _logitsRows, cfg.MaxPositionEmbeddings));
                Logits = new DeviceBuffer<float>((long)n * cfg.VocabSize);
                _logitsRows = n;
                Generation++;
            }
            if (rows <= _rows) return;
            int r = Math.Max(rows, Math.Min(2 * _rows, cfg.MaxPositionEmbeddings));
            r = Math.Max(r, Math.Min(16, cfg.MaxPositionEmbeddings));
            DisposeActivations();
            Ids = new DeviceBuffer<int>(r);
            X = new DeviceBuffer<float>((long)r * cfg.HiddenSize);
            Normed = new DeviceBuffer<Bf16>((long)r * cfg.HiddenSize);
            Qkv = new DeviceBuffer<float>((long)r * (cfg.QueryDim + 2 * cfg.KeyValueDim));
            Attn = new DeviceBuffer<Bf16>((long)r * cfg.QueryDim);
            GateUp = new DeviceBuffer<float>(2L * r * cfg.IntermediateSize);
            Mlp = new DeviceBuffer<Bf16>((long)r * cfg.IntermediateSize);
            SwiftKv = new DeviceBuffer<float>(Math.Max(1L, 2L * r * swiftKvLeaders * cfg.KeyValueDim));
            _rows = r;
            Generation++;
        }

        void DisposeActivations()
        {
            foreach (var b in new IDisposable?[] { Ids, X, Normed, Qkv, Attn, GateUp, Mlp, SwiftKv }) b?.Dispose();
            _rows = 0;
        }

        public void Dispose()
        {
            DisposeActivations();
            Logits?.Dispose();
            _logitsRows = 0;
        }
    }
}

/// <summary>A captured decode step: graph segments with the attention launches that go between them.</summary>
internal sealed class DecodeGraph(int generation) : IDisposable
{
    public int Generation { get; } = generation;
    public List<CudaGraph> Segments { get; } = [];
    /// <summary>(q row stride, cache index, rows) of the attention launch after segment k.</summary>
    public List<(int Ld, int CacheIndex, int Rows)> Attention { get; } = [];

    public void Dispose()
    {
        foreach (var s in Segments) s.Dispose();
        Segments.Clear();
    }
}
