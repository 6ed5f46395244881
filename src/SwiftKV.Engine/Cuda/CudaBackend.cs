// The CUDA backend: the same forward pass as CpuBackend, on one GPU, bf16 weights and KV caches, fp32 residual
// stream and accumulation. One Forward call runs a step of tokens for one sequence:
//   embed -> layers 0..l-1 over every token
//         -> SwiftKV: s = norm_swiftkv(x_l); one GEMM gives K/V of every AcrossKV leader for every token,
//            written to the shared caches; only the selected rows (a device-pointer slice, no copy) continue
//            through layers l..L-1 with q_proj_swiftkv
//         -> model.norm -> lm_head for the selected rows -> logits copied to the host (Forward), or argmax /
//            top-k/top-p sampling on the GPU with only the token id copied back (NextToken).
// Decode (one token) replays a CUDA graph per sequence cache: token and position live in device memory that the
// captured kernels read (the attention kernel too), so one capture serves every later step and the whole step is
// ONE graph launch. Per decode layer (UseFusedDecode, the default): [q;k;v] GEMV with the input RMSNorm folded in
// -> one pass of bias+RoPE(q) and bias+RoPE(k)+cache write -> attention with the split combine fused (position
// read on the device) -> o_proj GEMV accumulated into x (the residual add) -> [gate;up] GEMV with the post-attention
// RMSNorm folded in and silu·up -> down GEMV accumulated into x: 6 launches, all programmatic on sm_90+.
// The previous path (UseFusedDecode off, kept for benchmarks): separate RMSNorm launches, attention + combine
// launched between graph segments (the attention took its position by value).
// Longer steps (prefill): norm -> [q;k;v] linear -> bias+RoPE(q) and bias+RoPE(k)+cache write (on the wgmma path q is
// left unrotated and the pass writes the step's angles; the attention kernel rotates q as it loads it) -> attention ->
// o_proj linear accumulated into x -> o bias + post norm -> [gate;up] linear with silu·up -> down linear into x.
// On Hopper (UseFusedQkv) the first part is one kernel: the [q;k;v] GEMM rotates q and k from the step's angle table
// in its epilogue, stores q as bf16 for the attention and k / v into the cache (gemm_qkv.cu); SingleInputKV's K/V of
// the later layers the same way, one launch per AcrossKV leader.
// Every projection goes through Linear / GateUpSilu: steps of a few rows (decode) take the
// bandwidth-bound GEMV (each weight byte read once; the SwiGLU fused into the [gate;up] GEMV), longer steps cuBLAS
// (the [gate;up] GEMM writing bf16 for the silu pass), except [gate;up] of prefill-sized steps on Hopper: our own
// GEMM with the SwiGLU in its epilogue (gemm_swiglu.cu). Weights kept as e4m3 codes take the e4m3 GEMV below
// E4m3RowsGemmFromRows (4), the e4m3 rows GEMM (tensor cores, each code read once) up to 64, and above that a dequantize
// pass into a bf16 scratch before cuBLAS (under W8A8: the GEMV up to 8 rows, cuBLASLt's fp8 GEMMs above).
// Shapes: x (rows, hidden) fp32; normed activations (rows, hidden) bf16; qkv (rows, q + 2 kv) fp32;
// gate_up (rows, 2 inter) bf16.
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
public sealed partial class CudaBackend : IModelBackend
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
    readonly GemmSwigluKernel _gemmSwiglu;
    readonly GemmQkvRopeKernel _gemmQkv;
    readonly GemvKernel _gemv;
    readonly E4m3RowsGemmKernel _e4m3Rows;
    readonly RopeKvKernel _ropeKv;
    readonly ArgmaxKernel _argmax;
    readonly SamplingKernel _sample;
    readonly DeviceBuffer<int> _stepInts;   // [token, position] read by the decode graph
    readonly DeviceBuffer<int> _picked;     // the chosen token id(s)
    readonly PinnedHostBuffer _pinned;      // host side of both: [0..1] step ints, [16..] picked ids
    readonly CudaEvent _stepUploaded;
    readonly float _eps;
    // Kept e4m3 weights only: the kernel that dequantizes one into the scratch before a bf16 GEMM reads it.
    readonly Fp8WeightKernel? _dequantRows;
    readonly DeviceBuffer<Bf16>? _denseScratch;
    // ... and the pass that quantizes a GEMM's input rows to e4m3 for the W8A8 route (UseW8A8).
    readonly ActivationFp8Kernel? _activationFp8;
    bool _w8a8;
    DecodeGraph? _recording;
    bool _disposed;

    /// <summary>Uploads <paramref name="weights"/> to the GPU; throws <see cref="CudaException"/> when CUDA is unusable.</summary>
    public CudaBackend(LlamaWeights weights) : this(Checked(weights).Config, weights.SwiftKvEnabled, (s, _) => new HostWeightSource(weights, s)) { }

    /// <summary>
    /// Loads a checkpoint directory straight to the GPU: config.json checked, every tensor checked (presence, shape,
    /// dtype) before any is read, then the memory-mapped bytes streamed through pinned staging with the uploads
    /// overlapping the reads. bf16 tensors are copied as they are; fp16/fp32 are rounded to bf16 on the host; fp8 weights go up as
    /// codes and scales, dequantized to bf16 on the GPU.
    /// </summary>
    public static CudaBackend Load(string checkpointDir, bool swiftKvEnabled) => Load(checkpointDir, swiftKvEnabled, Fp8Weights.Auto);

    /// <summary><see cref="Load(string, bool)"/> with a choice of how an FP8 checkpoint's e4m3 weights are held (<see cref="Fp8Weights"/>).</summary>
    public static CudaBackend Load(string checkpointDir, bool swiftKvEnabled, Fp8Weights fp8) =>
        Load(checkpointDir, swiftKvEnabled, CheckpointWeightSource.DefaultSlotBytes, CheckpointWeightSource.DefaultPieceBytes, fp8);

    /// <summary><see cref="Load(string, bool)"/> through staging slots and pieces of the given sizes (tests).</summary>
    internal static CudaBackend Load(string checkpointDir, bool swiftKvEnabled, int stagingSlotBytes, int stagingPieceBytes, Fp8Weights fp8 = Fp8Weights.Auto)
    {
        if (!Enum.IsDefined(fp8)) throw new ArgumentOutOfRangeException(nameof(fp8), fp8, "Fp8Weights is Auto, Dequantize, Keep or KeepW8A8.");
        var config = LlamaConfig.Load(checkpointDir);
        using var checkpoint = SafetensorsCheckpoint.Open(checkpointDir);
        LlamaCheckpointLoader.Check(config, checkpoint, LlamaTensorNames.ForModel(config, swiftKvEnabled), swiftKvEnabled);
        long read = 0;
        var backend = new CudaBackend(config, swiftKvEnabled, (s, k) => new CheckpointWeightSource(checkpoint, config.Quantization, k, s, stagingSlotBytes, stagingPieceBytes),
            src => read = ((CheckpointWeightSource)src).BytesRead, fp8);
        backend.LoadedBytes = read;
        return backend;
    }

    /// <summary>
    /// A model of <paramref name="config"/>'s shape with seeded random weights made on the GPU (benchmarks); with
    /// <paramref name="e4m3"/>, its layer matrices are random e4m3 codes with row scales, held as such (an FP8 checkpoint kept fp8).
    /// </summary>
    public static CudaBackend CreateRandom(LlamaConfig config, bool swiftKvEnabled, ulong seed = 1, bool e4m3 = false)
    {
        ArgumentNullException.ThrowIfNull(config);
        return new CudaBackend(config, swiftKvEnabled, (s, k) => new RandomWeightSource(new RandomFillKernel(k), s, seed, e4m3), null,
            e4m3 ? Fp8Weights.Keep : Fp8Weights.Dequantize);
    }

    static LlamaWeights Checked(LlamaWeights weights)
    {
        ArgumentNullException.ThrowIfNull(weights);
        WeightShapes.Check(weights);
        return weights;
    }

    CudaBackend(LlamaConfig config, bool swiftKvEnabled, Func<CudaStream, KernelLibrary, WeightSource> source, Action<WeightSource>? loaded = null,
        Fp8Weights fp8 = Fp8Weights.Dequantize)
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
            _stream = new CudaStream(nonBlocking: true); owned.Add(_stream);   // see CudaStream: graph captures here must not meet legacy-stream work
            _blas = new Cublas(_stream); owned.Add(_blas);
            _kernels = new KernelLibrary(); owned.Add(_kernels);
            _embed = new EmbeddingKernel(_kernels);
            _norm = new RmsNormKernel(_kernels);
            _rope = new RopeKernel(_kernels);
            _kvWrite = new KvCacheKernel(_kernels);
            _attention = new AttentionKernel(_kernels);
            _siluMul = new SiluMulKernel(_kernels);
            _gemmSwiglu = new GemmSwigluKernel(_kernels);
            _gemmQkv = new GemmQkvRopeKernel(_kernels);
            _gemv = new GemvKernel(_kernels);
            _e4m3Rows = new E4m3RowsGemmKernel(_kernels);
            _ropeKv = new RopeKvKernel(_kernels);
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
                long bf16Bytes = ShapeManifest.ParameterCount(Config, swiftKvEnabled) * 2;
                var (saved, largest) = fp8 == Fp8Weights.Dequantize ? (0L, 0L) : CudaWeights.E4m3Plan(Config, swiftKvEnabled, src);
                bool keep = Fp8WeightChoice.Keep(fp8, bf16Bytes, saved, CudaRuntime.MemoryInfo().Free);
                // Kept: the codes and scales, and the scratch the largest matrix is dequantized into before a GEMM.
                RefuseWeightsPastFreeMemory(keep ? bf16Bytes - saved + 2 * largest : bf16Bytes, keep, Device);
                PlannedE4m3SavedBytes = keep ? saved : 0;
                _w = new CudaWeights(Config, swiftKvEnabled, src, invFreq, _stream, keep); owned.Add(_w);
                loaded?.Invoke(src);
            }
            LoadSeconds = sw.Elapsed.TotalSeconds;
            if (_w.E4m3Matrices > 0)
            {
                _dequantRows = new Fp8WeightKernel(_kernels);
                _denseScratch = new DeviceBuffer<Bf16>(_w.LargestE4m3Elements); owned.Add(_denseScratch);
                _activationFp8 = new ActivationFp8Kernel(_kernels);
                if (fp8 == Fp8Weights.KeepW8A8)
                {
                    if (W8A8Unavailable() is { } why) throw new NotSupportedException($"Fp8Weights.KeepW8A8: {why} Use Fp8Weights.Keep (e4m3 weights, bf16 GEMMs) here.");
                    _w8a8 = true;
                }
            }
            _ws = new Workspace(Config, _w.SwiftKvLeaders.Length); owned.Add(_ws);
        }
        catch
        {
            for (int i = owned.Count - 1; i >= 0; i--) owned[i].Dispose();
            throw;
        }
    }

    /// <summary>
    /// The weights are nearly all a model holds on the GPU. Weights larger than the free memory would fail at whichever
    /// allocation ran out, with the driver's bare out-of-memory status, after seconds of reading the checkpoint: say it
    /// before reading a byte, in sizes. A CudaException marked out-of-memory, so Auto still falls back to the CPU.
    /// </summary>
    static void RefuseWeightsPastFreeMemory(long need, bool e4m3, CudaDeviceInfo device)
    {
        var (free, total) = CudaRuntime.MemoryInfo();
        if (need > free)
            throw new CudaException(
                $"The model's {(e4m3 ? "weights, with its e4m3 matrices kept as fp8 (and their dequantize scratch)," : "bf16 weights")} are {need / 1e9:F1} GB, more than the {free / 1e9:F1} GB free (of {total / 1e9:F1} GB) on {device}. " +
                "This backend runs a model on one GPU: use a GPU with more memory (Llama-3.1-70B's 141 GB fit one 141 GB H200, " +
                "not an 80 GB H100; its FP8 checkpoints' 70 GB, kept fp8, fit either), a smaller model, or stop what else holds this GPU's memory.")
            { IsOutOfMemory = true };
    }

    public string Name => $"cuda:{Device.Ordinal}";
    public LlamaConfig Config { get; }
    public bool SwiftKvEnabled { get; }
    /// <summary>The GPU this backend runs on.</summary>
    public CudaDeviceInfo Device { get; }
    /// <summary>Device bytes held by the weights.</summary>
    public long WeightBytes => _w.Bytes;
    /// <summary>Weight matrices held as e4m3 codes (<see cref="Fp8Weights"/>); 0 when every matrix is bf16.</summary>
    public int E4m3WeightMatrices => _w.E4m3Matrices;
    /// <summary>Tests: the bytes the memory check counted as saved by e4m3 weights, and those the load saved.</summary>
    internal long PlannedE4m3SavedBytes { get; }
    internal long E4m3SavedBytes => _w.E4m3SavedBytes;
    /// <summary>
    /// Steps of more than <see cref="GemvKernel.MaxRows"/> rows run their GEMMs over e4m3 weights as W8A8 on fp8 tensor
    /// cores: each GEMM's input rows are quantized to e4m3 with one scale per row (per-token dynamic scaling, the
    /// scheme published FP8 checkpoints are calibrated for) and cuBLASLt applies the token's and the weight row's scales
    /// to each fp32 sum. Those GEMMs skip the dequantize pass and run at about 1.7x bf16's rate; the activations lose
    /// bf16's precision (3 mantissa bits). Decode-sized steps keep the e4m3 GEMV over bf16 activations. The fused
    /// GEMMs' epilogues (RoPE and the cache write, SwiGLU) are bf16 kernels, so those projections run unfused here.
    /// On by <see cref="Fp8Weights.KeepW8A8"/>; setting it needs kept e4m3 weights, a Hopper GPU and cuBLAS 12.9+
    /// (<see cref="W8A8Available"/>). A problem cuBLASLt refuses runs the dequantize route instead.
    /// </summary>
    public bool UseW8A8
    {
        get => _w8a8;
        set
        {
            if (value == _w8a8) return;
            if (value && W8A8Unavailable() is { } why) throw new InvalidOperationException(why);
            _w8a8 = value;
            _ws.Invalidate();   // a captured step may have baked either route
        }
    }

    /// <summary>Whether <see cref="UseW8A8"/> can be on: e4m3 weight matrices, a Hopper GPU and cuBLAS 12.9+.</summary>
    public bool W8A8Available => W8A8Unavailable() is null;

    string? W8A8Unavailable() =>
        _w.E4m3Matrices == 0 ? "W8A8 needs weight matrices held as e4m3 (an FP8 checkpoint loaded with Fp8Weights.Keep or KeepW8A8); this model holds none."
        : !Cublas.E4m3RowScaledGpu(Device) ? $"W8A8 runs on cuBLASLt's fp8 GEMMs with a scale per row of each operand, which NVIDIA provides on Hopper (sm_90) only; {Device} is {Device.Arch}."
        : !_blas.TakesE4m3RowScaled ? $"W8A8 needs cuBLAS {Cublas.E4m3RowScaledVersion / 10000}.{Cublas.E4m3RowScaledVersion / 100 % 100} or later (per-row fp8 scales); this one is {_blas.Version}."
        : null;

    /// <summary>W8A8 GEMMs run so far (tests and benchmarks check the route was taken).</summary>
    public long W8A8Gemms => _blas.E4m3Gemms;

    /// <summary>
    /// Under <see cref="UseW8A8"/>, the RMSNorm before a W8A8 GEMM ([q; k; v], [gate; up], and SingleInputKV's [k; v]
    /// where a single-sequence step runs it unchunked) writes that GEMM's e4m3 input itself
    /// (<see cref="ActivationFp8Kernel.RmsNormQuantize"/>), default. Off: the norm kernel's bf16 rows, then the quantize
    /// pass. Both give the same codes; benchmarks compare the two.
    /// </summary>
    public bool UseFusedNormQuantize { get => _fusedNormQuantize; set => SetRoute(ref _fusedNormQuantize, value); }
    bool _fusedNormQuantize = true;

    /// <summary>
    /// Steps of <see cref="E4m3RowsGemmFromRows"/> to <see cref="E4m3RowsGemmKernel.MaxRows"/> rows (batched decode)
    /// multiply kept e4m3 weights on bf16 tensor cores, reading each code once (gemm_e4m3_rows.cu), default. Off: each
    /// matrix is dequantized into the bf16 scratch for cuBLAS first, as longer steps do (benchmarks compare). Not under
    /// <see cref="UseW8A8"/>, whose GEMMs take such steps.
    /// </summary>
    public bool UseE4m3RowsGemm { get => _e4m3RowsGemm; set => SetRoute(ref _e4m3RowsGemm, value); }
    bool _e4m3RowsGemm = true;

    /// <summary>
    /// The fewest rows of a step that take the e4m3 rows GEMM (<see cref="UseE4m3RowsGemm"/>); fewer take the e4m3
    /// GEMV, which converts each code once per row it multiplies on CUDA cores, so its time grows with the rows while
    /// the tensor-core kernel's stays that of one 16-row fragment (docs/BENCHMARKS.md). 1 to
    /// <see cref="GemvKernel.MaxRows"/> + 1.
    /// </summary>
    public int E4m3RowsGemmFromRows
    {
        get => _e4m3RowsFrom;
        set
        {
            if (value < 1 || value > GemvKernel.MaxRows + 1)
                throw new ArgumentOutOfRangeException(nameof(value), value, $"E4m3RowsGemmFromRows: 1 to {GemvKernel.MaxRows + 1} (steps of more rows than the e4m3 GEMV takes always go to the rows GEMM).");
            if (value == _e4m3RowsFrom) return;
            _e4m3RowsFrom = value;
            _ws.Invalidate();
        }
    }
    int _e4m3RowsFrom = DefaultE4m3RowsGemmFromRows;

    /// <summary>Default of <see cref="E4m3RowsGemmFromRows"/>.</summary>
    public const int DefaultE4m3RowsGemmFromRows = 4;

    /// <summary>Launches of the e4m3 rows GEMM so far (tests and benchmarks check the route was taken).</summary>
    public long E4m3RowsGemmLaunches { get; private set; }

    /// <summary>Sets a route switch; a change forces decode graphs to be recaptured (a captured step may have baked either route).</summary>
    void SetRoute(ref bool route, bool value)
    {
        if (value == route) return;
        route = value;
        _ws.Invalidate();
    }

    /// <summary>Fused norm + quantize passes run so far (tests and benchmarks check the route was taken).</summary>
    public long FusedNormQuantizeLaunches { get; private set; }

    /// <summary>Device bytes of the scratch an e4m3 matrix is dequantized into before a GEMM (0 without e4m3 weights).</summary>
    public long DequantizeScratchBytes => _denseScratch?.ByteLength ?? 0;
    /// <summary>Seconds spent filling the weights (reading + uploading, or generating) in the constructor.</summary>
    public double LoadSeconds { get; }
    /// <summary>Checkpoint bytes read by <see cref="Load(string, bool)"/> (0 for other constructors).</summary>
    public long LoadedBytes { get; private set; }
    /// <summary>
    /// Replay single-token steps, and the batched step's decode-only steps (one graph per padded shape and KV pool), as
    /// CUDA graphs (default). Off: every kernel is launched one by one (the batched steps still run padded).
    /// </summary>
    public bool UseGraphs { get; set; } = true;

    readonly GraphCaptureRetry _decodeGraphRetry = new();

    /// <summary>
    /// Why single-token steps are not captured for now (a capture failed; the step had already run directly, so the
    /// request got its token; later steps launch kernel by kernel, and a capture is tried again after
    /// <see cref="GraphCaptureRetry.RetryAfter"/> steps), or null.
    /// </summary>
    public string? DecodeGraphFailure => _decodeGraphRetry.Failure;

    /// <summary>Tests: steps launched directly after a failed single-token capture before it is tried again.</summary>
    internal int DecodeGraphRetryAfter { get => _decodeGraphRetry.RetryAfter; set => _decodeGraphRetry.RetryAfter = value; }

    /// <summary>Tests: the next single-token capture fails as a driver error would.</summary>
    internal bool FailNextDecodeCaptureForTests { get; set; }
    /// <summary>
    /// Decode-sized steps (1-2 rows; 1-4 for [gate; up]) run their projections through the GEMV kernel (default).
    /// Off: cuBLAS for every step (benchmarks compare the two); weights kept as e4m3 take the rows GEMM from
    /// <see cref="E4m3RowsGemmFromRows"/> rows either way. Changing it recaptures decode graphs.
    /// </summary>
    public bool UseGemv { get => _useGemv; set => SetRoute(ref _useGemv, value); }
    bool _useGemv = true;

    /// <summary>
    /// Decode-sized steps fold each RMSNorm into the GEMV that follows it, and single-token steps run attention with
    /// its split combine fused and its position read on the device, so a decode graph is one segment (default).
    /// Off: the previous path (separate norm launches; attention + combine launched between graph segments).
    /// Changing it recaptures decode graphs.
    /// </summary>
    public bool UseFusedDecode { get => _fusedDecode; set => SetRoute(ref _fusedDecode, value); }
    bool _fusedDecode = true;

    /// <summary>
    /// Prefill steps on the wgmma attention path rotate the queries as the attention kernel loads them (default): the
    /// RoPE pass then writes K/V and the angles only. Off: the RoPE pass rotates q in memory (benchmarks compare).
    /// </summary>
    public bool UseRopeOnLoad { get => _ropeOnLoad; set => _ropeOnLoad = value; }
    bool _ropeOnLoad = true;

    /// <summary>
    /// Prefill-sized steps on sm_90a run the MLP's [gate; up] GEMM with SwiGLU in its epilogue (our TMA + wgmma kernel,
    /// gemm_swiglu.cu), default. Off: cuBLAS writes [gate | up] in bf16 and the silu pass reads it back (benchmarks
    /// compare the two).
    /// </summary>
    public bool UseGatedMlp { get => _gatedMlp; set => SetRoute(ref _gatedMlp, value); }
    bool _gatedMlp = true;

    /// <summary>[gate; up] GEMMs run with the SwiGLU epilogue so far (tests and benchmarks check the path was taken).</summary>
    public long GatedMlpLaunches => _gemmSwiglu.Launches;

    /// <summary>
    /// Prefill-sized steps on sm_90a run the attention's [q; k; v] GEMM with RoPE and the K/V cache write in its
    /// epilogue (gemm_qkv.cu), and the attention stages the rotated bf16 queries it writes, default. Off: cuBLAS writes
    /// [q | k | v] in fp32 and the RoPE pass writes the cache (benchmarks compare the two).
    /// </summary>
    public bool UseFusedQkv { get; set; } = true;

    /// <summary>[q; k; v] GEMMs run with the RoPE + cache-write epilogue so far (tests and benchmarks check the path).</summary>
    public long FusedQkvLaunches => _gemmQkv.Launches;

    /// <summary>
    /// Prefill attention over the contiguous caches on sm_90a takes the warp-specialised wgmma entry (TMA producer,
    /// softmax overlapped with the MMAs), default. Off: the entry with two CTAs per SM (benchmarks compare the two).
    /// </summary>
    public bool UseWarpSpecializedAttention { get => _attention.UseWarpSpecialized; set => _attention.UseWarpSpecialized = value; }

    /// <summary>
    /// Paged prefill attention (the batched serving step) on the warp-specialised entry as well, for pools of blocks of
    /// >= 64 positions (default on; smaller blocks keep the two-CTA entry, which is faster there). Off: always the
    /// two-CTA entry (benchmarks compare).
    /// </summary>
    public bool UseWarpSpecializedPagedAttention { get => _attention.UseWarpSpecializedPaged; set => _attention.UseWarpSpecializedPaged = value; }

    /// <summary>Launches of the warp-specialised attention entries so far (tests and benchmarks check the path was taken).</summary>
    public long WarpSpecializedAttentionLaunches => _attention.WarpSpecializedLaunches;

    /// <summary>
    /// Split-K count of single-token attention, 0 = automatic (one CTA per SM, at most one split per key tile of the
    /// cache). Benchmarks compare counts. Changing it recaptures decode graphs.
    /// </summary>
    public int DecodeAttentionSplits
    {
        get => _attention.DecodeSplitsOverride;
        set
        {
            if (value == _attention.DecodeSplitsOverride) return;
            _attention.DecodeSplitsOverride = value;
            _ws.Invalidate();
        }
    }

    /// <summary>GEMV kernels prefetch the start of their weight rows into L2 before waiting (benchmarks compare; off by default).</summary>
    public bool UseGemvPrefetch
    {
        get => _gemv.PrefetchWeights;
        set
        {
            if (value == _gemv.PrefetchWeights) return;
            _gemv.PrefetchWeights = value;
            _ws.Invalidate();
        }
    }

    /// <summary>
    /// Launch the kernels that wait for their predecessor on the device (GEMV, RMSNorm, RoPE + cache write)
    /// programmatically, so each starts, and prefetches its weights, while the previous one drains (sm_90+; default
    /// there). Changing it recaptures decode graphs.
    /// </summary>
    public bool UseProgrammaticLaunch
    {
        get => _kernels.ProgrammaticLaunch;
        set
        {
            if (value == _kernels.ProgrammaticLaunch) return;
            _kernels.ProgrammaticLaunch = value;
            _ws.Invalidate();
        }
    }

    /// <summary>The stream every step runs on (benchmarks record events on it).</summary>
    public CudaStream Stream => _stream;

    int FullLayers => SwiftKvEnabled ? Config.NumKeyValueLayers : Config.NumHiddenLayers;

    public ISequenceCache CreateCache(int capacity)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        StepValidation.Capacity(Config, capacity);
        return new CudaSequenceCache(this, Config.NumKvCaches(SwiftKvEnabled), capacity, Config.KeyValueDim);
    }

    public float[] Forward(ISequenceCache cache, ReadOnlySpan<int> tokens, LogitsSelection selection)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        using var step = EnterStep();
        var c = ValidateStep(cache, tokens);
        StepValidation.Logits(Config, tokens.Length, selection);
        bool done = false;
        try
        {
            int rows = RunStep(c, tokens, selection);
            var logits = new float[(long)rows * Config.VocabSize];
            _stream.Download(_ws.Logits.Span, logits);
            done = true;
            return logits;
        }
        finally
        {
            TrimAfterStep(tokens.Length, selection == LogitsSelection.AllTokens ? tokens.Length : 1, failed: !done);
        }
    }

    int _busy;        // 1 while a step runs on some thread (EnterStep)
    bool _disposing;  // Dispose has begun (it may be waiting for the step in flight)

    /// <summary>
    /// Every step runs on the one stream with the shared workspaces and pinned staging, so two steps of one backend
    /// must not overlap: a single-sequence call that would overlap another gets this error instead of overwriting the
    /// first one's activations (ObjectDisposedException once Dispose has begun). The serving engine's loop and
    /// LocalModel's gate serialise their callers; this catches code that goes around them.
    /// </summary>
    /// <param name="wait">Wait for the step in flight instead: the batched steps (a serving engine's: two engines on one
    /// backend, or one being made beside another, take turns instead of failing each other's requests), reserving or
    /// releasing a workspace, and Dispose.</param>
    StepScope EnterStep(bool wait = false) => EnterStepUnlessDisposed(wait) ?? throw new ObjectDisposedException(nameof(CudaBackend));

    /// <summary>EnterStep, or null (holding nothing) when the backend was disposed, possibly while this call waited.</summary>
    StepScope? EnterStepUnlessDisposed(bool wait)
    {
        if (wait)
        {
            var spin = new SpinWait();
            while (Interlocked.CompareExchange(ref _busy, 1, 0) != 0) spin.SpinOnce();
        }
        else if (Interlocked.CompareExchange(ref _busy, 1, 0) != 0)
        {
            if (Volatile.Read(ref _disposing)) throw new ObjectDisposedException(nameof(CudaBackend));   // Dispose holds it
            throw new InvalidOperationException("this CudaBackend is running a step for another caller: one backend runs one step at a time " +
                "(share it through a ServingEngine or the IChatClient, or give each thread its own backend).");
        }
        if (!_disposed) return new StepScope(this);
        Volatile.Write(ref _busy, 0);
        return null;
    }

    readonly struct StepScope(CudaBackend owner) : IDisposable
    {
        public void Dispose() => Volatile.Write(ref owner._busy, 0);
    }

    /// <summary>
    /// After a step, failed or not: a long step gives its activations back (<see cref="KeptActivationRows"/>), and an
    /// AllTokens step over a long prompt its rows x vocab logits (16 GB at 32K rows of Llama 3), so one request does not
    /// hold them for the next. After a failure, errors of the trim itself (a context the failure broke) are dropped:
    /// the step's own exception is the one to report.
    /// </summary>
    void TrimAfterStep(int stepRows, int logitsRows, bool failed)
    {
        try
        {
            if (logitsRows > KeptLogitsRows) _ws.TrimLogits(KeptLogitsRows);
            if (stepRows > KeptActivationRows) _ws.TrimActivations(KeptActivationRows);
        }
        catch (CudaException) when (failed)
        {
        }
    }

    /// <summary>Logits rows the workspace keeps between steps (a batched step needs one per sequence it samples).</summary>
    internal const int KeptLogitsRows = 256;

    /// <summary>
    /// Activation rows the single-sequence workspace keeps after a step (default 8192, the serving engine's step on
    /// large GPUs): a longer prompt's activations (2.8 GB at 32K rows of Llama 3 8B) are freed once its step is done,
    /// so one long request does not hold them for the life of the model; the next long step allocates them again
    /// (milliseconds beside its prefill). A serving engine's reservation (ReserveStepWorkspace) is always kept.
    /// </summary>
    internal int KeptActivationRows { get; set; } = 8192;

    /// <summary>Rows the activation workspace holds now (tests).</summary>
    internal int ActivationWorkspaceRows => _ws.Rows;

    /// <summary>Bytes the logits workspace holds now (tests check that a long AllTokens step gives them back).</summary>
    internal long LogitsWorkspaceBytes => _ws.LogitsBytes;
    /// <summary>Device bytes of the cuBLAS route's [gate | up] workspace (0 until a step takes that route).</summary>
    internal long GateUpWorkspaceBytes => _ws.GateUpBytes;

    /// <summary>Bytes of SingleInputKV's fp32 [k | v] workspace (0 until a step takes the unfused route; tests).</summary>
    internal long SwiftKvWorkspaceBytes => _ws.SwiftKvBytes;

    /// <summary>
    /// Runs <paramref name="tokens"/> (a prompt or one decode token) and returns the next token chosen on the GPU
    /// from the last row's logits: argmax when greedy, else temperature / top-k / top-p sampling with a uniform
    /// drawn from (Seed, <paramref name="step"/>), so the same seed and steps give the same tokens. Only the
    /// token id crosses to the host. <paramref name="step"/> defaults to the cache's length before this call, so
    /// successive calls draw different uniforms without the caller counting.
    /// </summary>
    public unsafe int NextToken(ISequenceCache cache, ReadOnlySpan<int> tokens, GpuSampling sampling, long? step = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        // Checked before the step runs: a refusal after it would leave the cache one token longer than the caller knows.
        if (float.IsNaN(sampling.Temperature) || sampling.Temperature < 0 || float.IsInfinity(sampling.Temperature)
            || (sampling.Temperature > 0 && float.IsInfinity(1f / sampling.Temperature)))
            throw new ArgumentOutOfRangeException(nameof(sampling), $"temperature {sampling.Temperature} must be a finite number >= 0 (0 = greedy) with a finite inverse.");
        if (!sampling.IsGreedy && !(sampling.TopP > 0 && sampling.TopP <= 1))
            throw new ArgumentOutOfRangeException(nameof(sampling), $"top_p {sampling.TopP} must be in (0, 1].");
        if (sampling.TopK < 0) throw new ArgumentOutOfRangeException(nameof(sampling), $"top_k {sampling.TopK} must be >= 0.");
        using var busy = EnterStep();
        var c = ValidateStep(cache, tokens);
        long drawStep = step ?? c.Length;
        int* host = (int*)(_pinned.Pointer + 64);
        bool done = false;
        try
        {
            bool argmaxDone = RunStep(c, tokens, LogitsSelection.LastToken, argmaxInGraph: true) < 0;
            int vocab = Config.VocabSize;
            if (!sampling.IsGreedy)
                _sample.Launch(_stream, _ws.Logits.Span, 1, vocab, sampling.Temperature, sampling.TopK, sampling.TopP, Uniform(sampling.Seed, drawStep), _picked.Span);
            else if (!argmaxDone)
                _argmax.Launch(_stream, _ws.Logits.Span, 1, vocab, _picked.Span);
            _stream.DownloadAsync(_picked.Span, host, 1);
            _stream.Synchronize();
            done = true;
        }
        finally
        {
            TrimAfterStep(tokens.Length, 1, failed: !done);
        }
        return host[0] >= 0 ? host[0] : throw new Sampling.NoFiniteLogitsException();   // -1: nothing above -inf
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
        if (rows == 1 && UseGraphs && _decodeGraphRetry.Allowed())
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
        bool fusedQkv = FusedQkv(rows, positionBase), fusedKv = SwiftKvEnabled && FusedKeysValues(rows, positionBase)
            && !W8A8Route(_w.SwiftKvKv!, _ws.Normed.Span.Address, hidden);
        if (fusedQkv || fusedKv) _rope.LaunchTable(_stream, _w.InvFreq, rows, cfg.HeadDim, start, _ws.Rope.Span);   // every layer's angles
        for (int i = 0; i < FullLayers; i++)
        {
            var layer = _w.Layers[i];
            if (fusedQkv && !W8A8Route(layer.QkvOrQ, _ws.Normed.Span.Address, hidden))   // the fused epilogue reads bf16 weights
            {
                _norm.Launch(_stream, x, null, layer.InputLayernorm, _ws.Normed, rows, hidden, _eps);
                _gemmQkv.Launch(_stream, _ws.Normed, rows, hidden, Dense(layer.QkvOrQ), cfg.NumAttentionHeads, cfg.NumKeyValueHeads, _ws.Rope.Span,
                    _ws.QueryBf16, c.Keys(i), c.Values(i), c.Capacity, start);
                AttentionAndMlp(x, rows, start, layer, cfg.QueryDim, c, i, null, queryRotated: true, queryBf16: true);
                continue;
            }
            int ld = cfg.QueryDim + 2 * cfg.KeyValueDim;
            NormLinear(x, rows, layer.InputLayernorm, layer.QkvOrQ, ld, _ws.Qkv);
            var ropeTable = RopeOnLoad(rows, ld, layer, positionBase) ? _ws.Rope.Span : (DeviceSpan<float>?)null;
            _ropeKv.Launch(_stream, _ws.Qkv, ld, layer.QBias?.Span, layer.KBias?.Span, layer.VBias?.Span, _w.InvFreq, rows,
                cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim, start, c.Keys(i), c.Values(i), c.Capacity, positionBase, ropeTable);
            AttentionAndMlp(x, rows, start, layer, ld, c, i, positionBase, queryRotated: true, ropeTable);
        }

        int pos0 = start;
        if (SwiftKvEnabled)
        {
            WriteSwiftKvCaches(x, rows, start, c, fusedKv, positionBase);
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
                NormLinear(x, rows, layer.InputLayernorm, layer.QkvOrQ, cfg.QueryDim, _ws.Qkv);
                AttentionAndMlp(x, rows, pos0, layer, cfg.QueryDim, c, cfg.KvCacheIndex(j, true), positionBase, queryRotated: false);
            }
        }

        if (selection == LogitsSelection.LastToken && rows > 1)
        {
            x = x.Slice((long)(rows - 1) * hidden, hidden);
            rows = 1;
        }
        NormLinear(x, rows, _w.Norm, _w.LmHead, cfg.VocabSize, _ws.Logits);
        return rows;
    }

    /// <summary>
    /// SingleInputKV: every later cache is filled from the one state x_l, for every token of the step. With
    /// <paramref name="fused"/> (<see cref="FusedKeysValues"/>: the step's angle table is in the Rope workspace), each
    /// group leader's [k; v] GEMM writes its cache from the epilogue; otherwise one GEMM over all leaders into the
    /// SwiftKv workspace (fp32), then the bias + RoPE + cache-write pass per leader.
    /// </summary>
    void WriteSwiftKvCaches(DeviceSpan<float> x, int rows, int start, CudaSequenceCache c, bool fused, DeviceSpan<int>? positionBase)
    {
        var cfg = Config;
        int hidden = cfg.HiddenSize, leaders = _w.SwiftKvLeaders.Length, kv = cfg.KeyValueDim, ld = leaders * 2 * kv;
        if (fused)
        {
            _norm.Launch(_stream, x, null, _w.NormSwiftKv!, _ws.Normed, rows, hidden, _eps);
            long perLeader = 2L * kv * hidden;
            var kvWeights = Dense(_w.SwiftKvKv!);
            for (int g = 0; g < leaders; g++)
            {
                int cacheIndex = cfg.KvCacheIndex(_w.SwiftKvLeaders[g], true);
                _gemmQkv.LaunchKeysValues(_stream, _ws.Normed, rows, hidden, kvWeights.Slice(g * perLeader, perLeader), cfg.NumKeyValueHeads,
                    _ws.Rope.Span, c.Keys(cacheIndex), c.Values(cacheIndex), c.Capacity, start);
            }
            return;
        }
        // A step read from positionBase (a captured decode step: a few rows) is never split.
        int chunk = positionBase is null ? SwiftKvChunkRows : rows;
        var all = _ws.SwiftKvFor(Math.Min(rows, chunk), SwiftKvChunkRows);
        if (rows <= chunk) NormLinear(x, rows, _w.NormSwiftKv!, _w.SwiftKvKv!, ld, all);
        else _norm.Launch(_stream, x, null, _w.NormSwiftKv!, _ws.Normed, rows, hidden, _eps);
        // Chunks share one dequantized copy of e4m3 weights (read by cuBLAS only: LinearChunk).
        var chunkWeights = rows > chunk ? ChunkWeights(_w.SwiftKvKv!) : default;
        for (int r0 = 0; r0 < rows; r0 += chunk)
        {
            int n = Math.Min(chunk, rows - r0);
            if (rows > chunk) LinearChunk(_ws.Normed.Span.Slice((long)r0 * hidden), n, hidden, _w.SwiftKvKv!, chunkWeights, ld, all);
            for (int g = 0; g < leaders; g++)
            {
                int cacheIndex = cfg.KvCacheIndex(_w.SwiftKvLeaders[g], true);
                var (kb, vb) = _w.SwiftKvBiases[g];
                _kvWrite.Launch(_stream, all.Slice(g * 2 * kv), all.Slice(g * 2 * kv + kv), ld, kb?.Span, vb?.Span,
                    _w.InvFreq, n, cfg.NumKeyValueHeads, cfg.HeadDim, start + r0, c.Keys(cacheIndex), c.Values(cacheIndex), c.Capacity, positionBase);
            }
        }
    }

    /// <summary>
    /// Most rows one unfused SingleInputKV GEMM writes: its fp32 [k | v] of every AcrossKV leader takes 128 KiB a row at
    /// 8B shape and 320 KiB at 70B, so a serving step of 8192 rows held 1.1 GB (8B) or 2.7 GB (70B) of workspace, memory
    /// the KV pool then lacked (70B on an H200: a 1.8 GiB pool with SwiftKV against 4.0 without). Longer steps go through
    /// in chunks of this many rows (a multiple of 128, at least 128), so the buffer stays near
    /// <see cref="SwiftKvChunkBytes"/>; each chunk is still a GEMM of >= 0.5 TFLOP at those shapes.
    /// </summary>
    internal int SwiftKvChunkRows
    {
        get
        {
            long perRow = 2L * Math.Max(1, _w.SwiftKvLeaders.Length) * Config.KeyValueDim * sizeof(float);
            return (int)Math.Clamp(SwiftKvChunkBytes / perRow / 128 * 128, 128, 1 << 20);
        }
    }

    /// <summary>Workspace bytes <see cref="SwiftKvChunkRows"/> aims at (256 MiB; tests lower it to split short steps).</summary>
    internal long SwiftKvChunkBytes { get; set; } = 256L << 20;

    // Most rows for which the GEMV beats cuBLAS (H100, 8B shapes, swiftkv bench 2026-11-26): it wins at 1-2 rows on
    // every projection; at 4 rows only the [gate; up] projection (which also saves the silu pass) still ties or wins.
    const int GemvLinearRows = 2, GemvGateUpRows = 4;

    /// <summary>
    /// The one dispatch of every projection: y (rows, outDim) fp32 = x (rows, inDim) · wᵀ, plus y when
    /// <paramref name="accumulate"/> (the residual add). Decode-sized steps stream the weight through the GEMV kernel;
    /// longer steps are compute-bound and go to cuBLAS.
    /// </summary>
    void Linear(DeviceSpan<Bf16> x, int rows, int inDim, DeviceSpan<Bf16> w, int outDim, DeviceSpan<float> y, bool accumulate = false)
    {
        if (_useGemv && rows <= GemvLinearRows) _gemv.Launch(_stream, x, rows, inDim, w, outDim, y, accumulate);
        else _blas.Linear(x, rows, inDim, w, outDim, y, accumulate);
    }

    /// <summary>
    /// <see cref="Linear(DeviceSpan{Bf16}, int, int, DeviceSpan{Bf16}, int, DeviceSpan{float}, bool)"/> over a held matrix. An
    /// e4m3 one streams its codes through the e4m3 GEMV below <see cref="E4m3RowsGemmFromRows"/> rows (it reads half the
    /// bytes a dequantized copy would, and a dequantize pass would cost more than the GEMV), through the e4m3 rows GEMM up
    /// to <see cref="E4m3RowsGemmKernel.MaxRows"/> (<see cref="UseE4m3RowsGemm"/>; with it off or under W8A8, the GEMV up to
    /// <see cref="GemvKernel.MaxRows"/>), else takes W8A8 or is dequantized into
    /// the scratch for cuBLAS. Never for the bf16 GEMV: launched programmatically, it loads its first weights before
    /// waiting for the kernel before it, which here would be the dequantize still writing them.
    /// </summary>
    void Linear(DeviceSpan<Bf16> x, int rows, int inDim, CudaMatrix w, int outDim, DeviceSpan<float> y, bool accumulate = false)
    {
        if (!w.IsE4m3) Linear(x, rows, inDim, w.Bf16.Span, outDim, y, accumulate);
        else if (E4m3Gemv(rows, GemvKernel.MaxRows, x.Address, w, inDim)) _gemv.Launch(_stream, x, rows, inDim, w.E4m3, outDim, y, accumulate);
        else if (E4m3RowsGemm(rows, x.Address, w, inDim))
        {
            _e4m3Rows.Launch(_stream, x, rows, inDim, w.E4m3, outDim, y, accumulate);
            E4m3RowsGemmLaunches++;
        }
        else if (!W8A8(x, rows, inDim, w) || !TryW8A8Gemm(_ws.Fp8For(rows, inDim), rows, inDim, w.E4m3, outDim, y, accumulate))
            _blas.Linear(x, rows, inDim, Dense(w), outDim, y, accumulate);
    }

    /// <summary>Whether a step of <paramref name="rows"/> over e4m3 <paramref name="w"/> takes the e4m3 rows GEMM (<see cref="UseE4m3RowsGemm"/>).</summary>
    bool E4m3RowsGemm(int rows, ulong xAddress, CudaMatrix w, int inDim) =>
        _e4m3RowsGemm && !_w8a8 && w.IsE4m3 && rows >= _e4m3RowsFrom && rows <= E4m3RowsGemmKernel.MaxRows
        && E4m3RowsGemmKernel.Takes(rows, xAddress, w.E4m3, inDim);

    /// <summary>
    /// Whether <paramref name="w"/> takes the W8A8 route (<see cref="UseW8A8"/>) at this step: then x's rows are
    /// quantized into the workspace's e4m3 rows (queued here) for <see cref="Cublas.TryLinearE4m3(E4m3Rows, int, int, E4m3Rows, int, DeviceSpan{float}, bool)"/>.
    /// </summary>
    bool W8A8(DeviceSpan<Bf16> x, int rows, int inDim, CudaMatrix w)
    {
        if (!W8A8Route(w, x.Address, inDim)) return false;
        _activationFp8!.QuantizeRows(_stream, x, rows, inDim, _ws.Fp8For(rows, inDim));
        return true;
    }

    /// <summary>
    /// <see cref="Cublas.TryLinearE4m3(E4m3Rows, int, int, E4m3Rows, int, DeviceSpan{float}, bool)"/>, or false as
    /// cuBLASLt answers a problem it has no algorithm for when <see cref="RefuseW8A8GemmsForTests"/> is set.
    /// </summary>
    bool TryW8A8Gemm(E4m3Rows x, int rows, int inDim, E4m3Rows w, int outDim, DeviceSpan<float> y, bool accumulate = false) =>
        !RefuseW8A8GemmsForTests && _blas.TryLinearE4m3(x, rows, inDim, w, outDim, y, accumulate);

    bool TryW8A8Gemm(E4m3Rows x, int rows, int inDim, E4m3Rows w, int outDim, DeviceSpan<Bf16> y) =>
        !RefuseW8A8GemmsForTests && _blas.TryLinearE4m3(x, rows, inDim, w, outDim, y);

    /// <summary>
    /// Tests: every W8A8 GEMM is refused, as cuBLASLt refuses problems it has no algorithm for (never these shapes on
    /// Hopper), so the routes' fallbacks run.
    /// </summary>
    internal bool RefuseW8A8GemmsForTests { get; set; }

    /// <summary>Whether a GEMM over <paramref name="w"/> with an input of <paramref name="inDim"/> columns at this address goes W8A8.</summary>
    bool W8A8Route(CudaMatrix w, ulong xAddress, int inDim) => _w8a8 && w.IsE4m3 && inDim % 16 == 0 && xAddress % 16 == 0;

    /// <summary>
    /// What row chunks of one projection share (<see cref="LinearChunk"/>): <paramref name="w"/>'s dequantized values
    /// made once, or nothing for bf16 weights and the W8A8 route, which read their own.
    /// </summary>
    DeviceSpan<Bf16> ChunkWeights(CudaMatrix w) => !w.IsE4m3 ? w.Bf16.Span : _w8a8 ? default : Dense(w);

    /// <summary>
    /// One row chunk's projection over <paramref name="dense"/>, <see cref="Dense"/>'s values of <paramref name="w"/> made
    /// once for all chunks: a last chunk of a few rows must not reach the bf16 GEMV over the scratch either.
    /// </summary>
    void LinearChunk(DeviceSpan<Bf16> x, int rows, int inDim, CudaMatrix w, DeviceSpan<Bf16> dense, int outDim, DeviceSpan<float> y)
    {
        if (!w.IsE4m3) Linear(x, rows, inDim, dense, outDim, y);
        else if (!W8A8(x, rows, inDim, w) || !TryW8A8Gemm(_ws.Fp8For(rows, inDim), rows, inDim, w.E4m3, outDim, y))
            _blas.Linear(x, rows, inDim, dense.Length > 0 ? dense : Dense(w), outDim, y);   // a refused W8A8 GEMM: its own copy
    }

    /// <summary>Whether a step of <paramref name="rows"/> over e4m3 <paramref name="w"/> takes the e4m3 GEMV: up to its rows, unless the rows GEMM takes it.</summary>
    bool E4m3Gemv(int rows, int maxRows, ulong xAddress, CudaMatrix w, int inDim) =>
        _useGemv && rows <= maxRows && GemvKernel.TakesE4m3(xAddress, w.E4m3, inDim) && !E4m3RowsGemm(rows, xAddress, w, inDim);

    /// <summary>
    /// The bf16 values of <paramref name="w"/>: its own buffer, or for an e4m3 matrix its values dequantized into the
    /// one shared scratch (queued on the stream, so each use is done before the next dequantize overwrites it; its
    /// readers are cuBLAS and the fused GEMMs, none launched programmatically). The values are those the loader writes
    /// when it dequantizes, so a prefill computes the same as with bf16 weights.
    /// </summary>
    DeviceSpan<Bf16> Dense(CudaMatrix w)
    {
        if (!w.IsE4m3) return w.Bf16.Span;
        var scratch = _denseScratch!.Span.Slice(0, w.ElementCount);
        _dequantRows!.DequantizeRows(_stream, w.E4m3, w.Rows, w.Columns, scratch);
        return scratch;
    }

    /// <summary>Where <see cref="Dense"/> would put <paramref name="w"/>'s values, without writing them (shape and alignment checks).</summary>
    DeviceSpan<Bf16> DenseSpan(CudaMatrix w) => w.IsE4m3 ? _denseScratch!.Span.Slice(0, w.ElementCount) : w.Bf16.Span;

    /// <summary>Decode-sized steps fold the RMSNorm into the GEMV (no bias to add into x first, UseFusedDecode on).</summary>
    bool FoldNorm(int rows, int maxRows, DeviceSpan<float>? bias) =>
        _fusedDecode && _useGemv && bias is null && rows <= Math.Min(maxRows, GemvKernel.MaxRmsRows);

    // Fewest rows for the fused [q; k; v] GEMM: one full cluster tile (2 x 128 rows), as for the gated MLP GEMM.
    const int FusedQkvMinRows = 256;

    /// <summary>
    /// Whether a step's full layers take the [q; k; v] GEMM with RoPE and the cache write in its epilogue
    /// (<see cref="UseFusedQkv"/>): a prefill-sized step at positions known on the host (not a graph capture), a model
    /// without q/k/v biases whose shape the kernel takes, and an attention launch that stages bf16 queries.
    /// </summary>
    bool FusedQkv(int rows, DeviceSpan<int>? positionBase)
    {
        var cfg = Config;
        return UseFusedQkv && rows >= FusedQkvMinRows && positionBase is null && !_w.HasQkvBias
            && GemmQkvRopeKernel.Applies(cfg.HiddenSize, cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim, out _)
            && _gemmQkv.IsAvailable(out _)
            && _attention.TakesRotatedBf16Queries(rows, cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim);
    }

    /// <summary>
    /// Whether a SwiftKV step's SingleInputKV [k; v] GEMMs (one per AcrossKV leader) write the later caches from their
    /// epilogue (<see cref="UseFusedQkv"/>): the rule of <see cref="FusedQkv"/> without the attention's, since no query
    /// comes out of them, and without K/V biases of the later layers.
    /// </summary>
    bool FusedKeysValues(int rows, DeviceSpan<int>? positionBase)
    {
        var cfg = Config;
        return UseFusedQkv && rows >= FusedQkvMinRows && positionBase is null && !_w.HasSwiftKvBias
            && GemmQkvRopeKernel.Applies(cfg.HiddenSize, 0, cfg.NumKeyValueHeads, cfg.HeadDim, out _)
            && _gemmQkv.IsAvailable(out _);
    }

    /// <summary>
    /// Whether this layer's queries are rotated by the attention kernel as it loads them (the wgmma path of a prefill
    /// step, no q bias) instead of by the RoPE pass, which then writes the step's angles to the Rope workspace.
    /// </summary>
    bool RopeOnLoad(int rows, int ld, CudaLayerWeights layer, DeviceSpan<int>? positionBase)
    {
        var cfg = Config;
        // rows > 1: a one-token step may take the decode attention, which reads q rotated.
        return _ropeOnLoad && rows > 1 && positionBase is null && layer.QBias is null
            && _attention.RotatesQueriesOnLoad(_ws.Qkv, ld, (long)rows * ld, 1, rows, cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim);
    }

    /// <summary>
    /// y (rows, outDim) fp32 = (RMSNorm(x) · normWeight) · wᵀ: the norm folded into the GEMV for decode-sized steps,
    /// else the norm kernel into the Normed workspace, then <see cref="Linear(DeviceSpan{Bf16}, int, int, CudaMatrix, int, DeviceSpan{float}, bool)"/>;
    /// under W8A8 the norm writes the GEMM's e4m3 input instead (<see cref="NormQuantize"/>).
    /// </summary>
    void NormLinear(DeviceSpan<float> x, int rows, DeviceSpan<float> normWeight, CudaMatrix w, int outDim, DeviceSpan<float> y)
    {
        int hidden = Config.HiddenSize;
        if (FoldNorm(rows, GemvLinearRows, null))
        {
            if (w.IsE4m3) NormThenLinear(x, rows, normWeight, w, outDim, y);
            else _gemv.LaunchRms(_stream, x, rows, hidden, normWeight, _eps, w.Bf16.Span, outDim, y);
            return;
        }
        NormThenLinear(x, rows, normWeight, w, outDim, y);
    }

    // e4m3 weights never fold the norm: a folding warp reads 8 bytes of fp32 x and norm weight per element of every
    // row, which for e4m3's 16 elements per 16-byte weight load outruns L1 (8B decode on an H200: 4.40 ms a token
    // folded, 3.06 with the norm kernel first; docs/BENCHMARKS.md).
    void NormThenLinear(DeviceSpan<float> x, int rows, DeviceSpan<float> normWeight, CudaMatrix w, int outDim, DeviceSpan<float> y)
    {
        int hidden = Config.HiddenSize;
        if (NormQuantize(x, rows, null, normWeight, w) is { } fp8)
        {
            if (TryW8A8Gemm(fp8, rows, hidden, w.E4m3, outDim, y)) return;
            _norm.Launch(_stream, x, null, normWeight, _ws.Normed, rows, hidden, _eps);   // refused by cuBLASLt: the dequantize route
            _blas.Linear(_ws.Normed.Span, rows, hidden, Dense(w), outDim, y);
            return;
        }
        _norm.Launch(_stream, x, null, normWeight, _ws.Normed, rows, hidden, _eps);
        Linear(_ws.Normed, rows, hidden, w, outDim, y);
    }

    /// <summary>
    /// Where a W8A8 GEMM over <paramref name="w"/> follows an RMSNorm of x (<see cref="UseFusedNormQuantize"/>): x +=
    /// bias (optional), then its normed rows as e4m3 codes and scales in the workspace (<c>Fp8For</c>), queued here, in
    /// one pass. Null, with nothing queued, where the step takes another route: the e4m3 GEMV (at most
    /// <see cref="GemvKernel.MaxRows"/> rows), no W8A8, or addresses the kernel does not take.
    /// </summary>
    E4m3Rows? NormQuantize(DeviceSpan<float> x, int rows, DeviceSpan<float>? bias, DeviceSpan<float> normWeight, CudaMatrix w)
    {
        int hidden = Config.HiddenSize;
        ulong normed = _ws.Normed.Span.Address;   // where the unfused route's bf16 rows would go: the routes' address checks read it
        // W8A8Route first: E4m3Gemv reads w.E4m3, which throws for a bf16 matrix (lm_head).
        if (!_fusedNormQuantize || !W8A8Route(w, normed, hidden) || E4m3Gemv(rows, GemvKernel.MaxRows, normed, w, hidden)) return null;
        var fp8 = _ws.Fp8For(rows, hidden);
        if (!ActivationFp8Kernel.TakesRmsNorm(x.Address, bias?.Address ?? 0, normWeight.Address, hidden, fp8)) return null;
        _activationFp8!.RmsNormQuantize(_stream, x, bias, normWeight, rows, hidden, _eps, fp8);
        FusedNormQuantizeLaunches++;
        return fp8;
    }

    // Fewest rows for the gated GEMM: one full cluster tile (2 x 128 rows). Below that a step streams more weight than
    // it computes, and the batched decode steps (32-128 rows) keep the cuBLAS route they were measured on.
    const int GatedMlpMinRows = 256;

    /// <summary>
    /// The MLP's [gate; up] projection with SwiGLU: Mlp (rows, inter) bf16 = silu(x · Wgᵀ) · (x · Wuᵀ). Decode-sized
    /// steps fuse it into the GEMV; prefill-sized steps on sm_90a into the GEMM's epilogue (<see cref="UseGatedMlp"/>);
    /// others run cuBLAS with a bf16 [gate | up] output, then the silu pass.
    /// </summary>
    void GateUpSilu(DeviceSpan<Bf16> x, int rows, CudaLayerWeights layer)
    {
        int hidden = Config.HiddenSize, inter = Config.IntermediateSize;
        if (layer.GateUp.IsE4m3 && E4m3Gemv(rows, GemvKernel.MaxRows, x.Address, layer.GateUp, hidden))
        {
            _gemv.LaunchSiluMul(_stream, x, rows, hidden, layer.GateUp.E4m3, inter, _ws.Mlp);
            return;
        }
        if (E4m3RowsGemm(rows, x.Address, layer.GateUp, hidden))
        {
            _e4m3Rows.LaunchSiluMul(_stream, x, rows, hidden, layer.GateUp.E4m3, inter, _ws.Mlp);
            E4m3RowsGemmLaunches++;
            return;
        }
        if (GateUpW8A8(x, rows, layer.GateUp))
        {
            _siluMul.Launch(_stream, _ws.GateUpFor(rows, int.MaxValue), rows, inter, _ws.Mlp);
            return;
        }
        var weights = Dense(layer.GateUp);
        // Not over the scratch (Linear over a CudaMatrix says why).
        if (_useGemv && rows <= GemvGateUpRows && !layer.GateUp.IsE4m3)
        {
            _gemv.LaunchSiluMul(_stream, x, rows, hidden, weights, inter, _ws.Mlp);
            return;
        }
        bool gated = GatedMlpApplies(x, layer);
        if (gated && rows >= GatedMlpMinRows)
        {
            _gemmSwiglu.Launch(_stream, x, rows, hidden, weights, inter, _ws.Mlp);
            return;
        }
        var gateUp = _ws.GateUpFor(rows, GateUpRouteRows(gated));
        _blas.Linear(x, rows, hidden, weights, 2 * inter, gateUp);
        _siluMul.Launch(_stream, gateUp, rows, inter, _ws.Mlp);
    }

    /// <summary>
    /// The W8A8 route of [gate; up] (<see cref="UseW8A8"/>): bf16 [gate | up] into the workspace (<c>GateUpFor(rows,
    /// growTo)</c>); false when not taken.
    /// </summary>
    bool GateUpW8A8(DeviceSpan<Bf16> x, int rows, CudaMatrix gateUp, int growTo = int.MaxValue)
    {
        int hidden = Config.HiddenSize;
        return W8A8(x, rows, hidden, gateUp)
            && TryW8A8Gemm(_ws.Fp8For(rows, hidden), rows, hidden, gateUp.E4m3, 2 * Config.IntermediateSize, _ws.GateUpFor(rows, growTo));
    }

    /// <summary>
    /// Most rows one W8A8 MLP pass takes (<see cref="MlpAdd"/>): a longer step runs its MLP in chunks of this many rows,
    /// so the bf16 [gate | up] and the e4m3 input of down_proj are sized for a chunk, not the step. Whole, a 32K-row
    /// step of Llama-3-70B held 3.8 GB of [gate | up] (the gated GEMM, bf16's route, holds none); in chunks of 4096,
    /// 0.47 GB, and each chunk's GEMMs are still >= 0.9 TFLOP. Tests lower it.
    /// </summary>
    internal int W8A8MlpChunkRows { get; set; } = 4096;

    /// <summary>The chunk <see cref="MlpAdd"/> uses: at least 18 rows, so even chunks of a longer step keep more than 8.</summary>
    int W8A8MlpChunk => Math.Max(W8A8MlpChunkRows, 2 * (GemvKernel.MaxRows + 1));

    /// <summary>Whether a step past the GEMV runs this layer's MLP as W8A8 in <see cref="MlpAdd"/>'s fused form.</summary>
    bool W8A8Mlp(CudaLayerWeights layer) =>
        _w8a8 && layer.GateUp.IsE4m3 && layer.Down.IsE4m3 && Config.HiddenSize % 16 == 0 && Config.IntermediateSize % 16 == 0;

    /// <summary>
    /// Rows [0, rows) as ceil(rows / most) consecutive chunks whose sizes differ by at most one row (none above
    /// <paramref name="most"/>), so a step just past a multiple of <paramref name="most"/> does not end in a chunk of a
    /// few rows.
    /// </summary>
    internal static IEnumerable<(int Start, int Count)> EvenChunks(int rows, int most)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(most);
        int chunks = (rows + most - 1) / most, size = rows / chunks, extra = rows % chunks;
        for (int c = 0, start = 0; c < chunks; c++)
        {
            int n = size + (c < extra ? 1 : 0);
            yield return (start, n);
            start += n;
        }
    }

    /// <summary>The most rows the cuBLAS [gate; up] route serves: below the gated GEMM's where that takes the rest.</summary>
    static int GateUpRouteRows(bool gated) => gated ? GatedMlpMinRows - 1 : int.MaxValue;

    /// <summary>Whether steps of <see cref="GatedMlpMinRows"/> or more rows take the gated GEMM for this layer's [gate; up].</summary>
    bool GatedMlpApplies(DeviceSpan<Bf16> x, CudaLayerWeights layer) =>
        UseGatedMlp && GemmSwigluKernel.Applies(x, Config.HiddenSize, DenseSpan(layer.GateUp), Config.IntermediateSize, _ws.Mlp, out _) && _gemmSwiglu.IsAvailable(out _);

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
            try
            {
                g = c.DecodeGraph = CaptureDecode(c, pos, ids, positionBase);
            }
            catch (CudaException e)
            {
                // The step already ran above (logits and argmax are in place): a capture that fails costs the request
                // nothing, and this backend's later single-token steps launch kernel by kernel, as the batched path does.
                _decodeGraphRetry.Failed($"capturing a single-sequence decode step failed: {e.Message}");
                return;
            }
            _decodeGraphRetry.Succeeded();
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
            if (FailNextDecodeCaptureForTests)
            {
                FailNextDecodeCaptureForTests = false;
                throw new CudaException("cuStreamEndCapture failed: CUDA_ERROR_STREAM_CAPTURE_INVALIDATED (901): injected by a test");
            }
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

    /// <summary>
    /// Attention of a layer. A single-token step on the fused path: the decode launch (split combine fused, position
    /// from <paramref name="positionBase"/> when given), captured like every other kernel. Otherwise launched now,
    /// or (while a decode graph of the previous path is captured) cut out of it and launched at replay.
    /// </summary>
    void Attend(int rows, int pos0, CudaSequenceCache c, int cacheIndex, int ld, DeviceSpan<int>? positionBase, DeviceSpan<float>? ropeTable = null,
        bool queryBf16 = false)
    {
        if (queryBf16)
        {
            // The fused [q; k; v] GEMM's rotated bf16 queries (prefill-sized steps only, never captured).
            var cfg = Config;
            _attention.LaunchRotatedBf16(_stream, _ws.QueryBf16, cfg.QueryDim, c.Keys(cacheIndex), c.Values(cacheIndex), c.Capacity, _ws.Attn,
                rows, cfg.NumAttentionHeads, cfg.NumKeyValueHeads, pos0);
            return;
        }
        if (_fusedDecode && rows == 1)
        {
            var cfg = Config;
            _attention.LaunchDecode(_stream, _ws.Qkv, ld, c.Keys(cacheIndex), c.Values(cacheIndex), c.Capacity, _ws.Attn, rows,
                cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim, pos0, positionBase, programmatic: true);
            return;
        }
        if (_recording is { } g)
        {
            g.Segments.Add(CudaGraph.EndCapture(_stream));
            g.Attention.Add((ld, cacheIndex, rows));
            CudaGraph.BeginCapture(_stream);
            return;
        }
        LaunchAttention(rows, pos0, c, cacheIndex, ld, ropeTable);
    }

    void LaunchAttention(int rows, int pos0, CudaSequenceCache c, int cacheIndex, int ld, DeviceSpan<float>? ropeTable = null)
    {
        var cfg = Config;
        _attention.Launch(_stream, _ws.Qkv, ld, c.Keys(cacheIndex), c.Values(cacheIndex), c.Capacity, _ws.Attn, rows,
            cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim, pos0, ropeTable);
    }

    /// <summary>
    /// The rest of a layer once Q (columns 0..q-1 of the Qkv workspace, row stride <paramref name="ld"/>; or, with
    /// <paramref name="queryBf16"/>, the fused GEMM's rotated bf16 queries) is projected and the layer's K/V are cached:
    /// bias + RoPE on Q (unless <paramref name="queryRotated"/>: the fused RoPE + cache write already did it), attention
    /// over cache <paramref name="cacheIndex"/>, o_proj added into x, o bias + post_attention_layernorm, SwiGLU MLP added into x.
    /// </summary>
    void AttentionAndMlp(DeviceSpan<float> x, int rows, int pos0, CudaLayerWeights layer, int ld, CudaSequenceCache c, int cacheIndex,
        DeviceSpan<int>? positionBase, bool queryRotated, DeviceSpan<float>? ropeTable = null, bool queryBf16 = false)
    {
        var cfg = Config;
        int hidden = cfg.HiddenSize;
        if (!queryRotated)
            _rope.Launch(_stream, _ws.Qkv, ld, layer.QBias?.Span, _w.InvFreq, rows, cfg.NumAttentionHeads, cfg.HeadDim, pos0, positionBase);
        Attend(rows, pos0, c, cacheIndex, ld, positionBase, ropeTable, queryBf16);
        Linear(_ws.Attn, rows, cfg.QueryDim, layer.O, hidden, x, accumulate: true);
        MlpAdd(x, rows, layer);
    }

    /// <summary>
    /// The MLP added into x (both step paths): <see cref="NormGateUpSilu"/>, then down_proj. Under W8A8 with both matrices
    /// e4m3 (<see cref="UseW8A8"/>, a step past the GEMV) it runs in row chunks (<see cref="W8A8MlpChunkRows"/>): each
    /// chunk's norm writes [gate; up]'s e4m3 input (<see cref="NormQuantize"/>, or the norm kernel and then the quantize
    /// pass with <see cref="UseFusedNormQuantize"/> off), and the SwiGLU pass writes down_proj's
    /// (<see cref="ActivationFp8Kernel.SiluMulQuantize"/>: the same codes as the silu pass and then the quantize pass,
    /// without writing and reading back the bf16 row).
    /// </summary>
    void MlpAdd(DeviceSpan<float> x, int rows, CudaLayerWeights layer)
    {
        int hidden = Config.HiddenSize, inter = Config.IntermediateSize;
        if (!(rows > GemvKernel.MaxRows && W8A8Mlp(layer)))
        {
            NormGateUpSilu(x, rows, layer);
            Linear(_ws.Mlp, rows, inter, layer.Down, hidden, x, accumulate: true);
            return;
        }
        int chunk = W8A8MlpChunk;
        var bias = layer.OBias?.Span;
        bool unfused = !_fusedNormQuantize;
        if (unfused) _norm.Launch(_stream, x, bias, layer.PostAttentionLayernorm, _ws.Normed, rows, hidden, _eps);
        foreach (var (r0, n) in EvenChunks(rows, chunk))
        {
            // Chunks of near-equal size: none of 8 rows or fewer, which would take the e4m3 GEMVs' bf16 activations.
            var normed = _ws.Normed.Span.Slice((long)r0 * hidden, (long)n * hidden);
            var xr = x.Slice((long)r0 * hidden, (long)n * hidden);
            // Fused: each chunk's norm writes [gate; up]'s e4m3 input (adding o_proj's bias into x). A chunk the fused
            // pass does not take, or whose GEMM cuBLASLt refuses, gets the norm kernel's bf16 rows after all.
            bool gateUpDone;
            if (unfused) gateUpDone = n > GemvKernel.MaxRows && GateUpW8A8(normed, n, layer.GateUp, chunk);
            else
            {
                var fp8 = NormQuantize(xr, n, bias, layer.PostAttentionLayernorm, layer.GateUp);
                gateUpDone = fp8 is { } a
                    && TryW8A8Gemm(a, n, hidden, layer.GateUp.E4m3, 2 * inter, _ws.GateUpFor(n, chunk));
                if (!gateUpDone) _norm.Launch(_stream, xr, fp8 is null ? bias : null, layer.PostAttentionLayernorm, normed, n, hidden, _eps);
            }
            if (gateUpDone)
            {
                var gateUp = _ws.GateUpFor(n, chunk);
                var fp8 = _ws.Fp8For(n, inter);
                _activationFp8!.SiluMulQuantize(_stream, gateUp, n, inter, fp8);
                if (TryW8A8Gemm(fp8, n, inter, layer.Down.E4m3, hidden, xr, accumulate: true)) continue;
                _siluMul.Launch(_stream, gateUp, n, inter, _ws.Mlp);   // down_proj refused by cuBLASLt: its bf16 input after all
            }
            else GateUpSilu(normed, n, layer);
            Linear(_ws.Mlp, n, inter, layer.Down, hidden, xr, accumulate: true);
        }
    }

    /// <summary>
    /// The MLP's input: o_proj's bias (if any) added into x, post_attention_layernorm, then [gate; up] with SwiGLU into
    /// the Mlp workspace; steps of 1-2 rows fold the norm into the GEMV (<see cref="FoldNorm"/>). Both step paths.
    /// At 3-4 rows the GEMV still runs, after the norm kernel: folded there, the serving engine's decode step of 4
    /// sequences measured slower (H100, 8B, 2K context: 7.49-7.52 ms against 7.15-7.20 unfolded; each warp then reads
    /// four fp32 rows of x per weight chunk instead of four bf16 rows, a guess at the cause).
    /// </summary>
    void NormGateUpSilu(DeviceSpan<float> x, int rows, CudaLayerWeights layer)
    {
        int hidden = Config.HiddenSize;
        // e4m3 weights never fold the norm (NormThenLinear says why).
        if (FoldNorm(rows, GemvLinearRows, layer.OBias?.Span) && !layer.GateUp.IsE4m3)
            _gemv.LaunchRmsSiluMul(_stream, x, rows, hidden, layer.PostAttentionLayernorm, _eps, layer.GateUp.Bf16.Span, Config.IntermediateSize, _ws.Mlp);
        else
        {
            _norm.Launch(_stream, x, layer.OBias?.Span, layer.PostAttentionLayernorm, _ws.Normed, rows, hidden, _eps);
            GateUpSilu(_ws.Normed, rows, layer);
        }
    }

    CudaSequenceCache ValidateStep(ISequenceCache cache, ReadOnlySpan<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(cache);
        if (cache is not CudaSequenceCache c || !ReferenceEquals(c.Owner, this))
            throw new ArgumentException("the cache was not created by this backend (use CreateCache of the same CudaBackend).", nameof(cache));
        c.ThrowIfDisposed();
        StepValidation.Step(Config, tokens, c.Length, c.Capacity);
        return c;
    }

    public void Dispose()
    {
        // A step still running on another thread (a caller that disposes the backend before its serving engine) ends
        // first, rather than finding its workspace and pool freed under it; a call waiting behind this one then finds
        // the backend disposed.
        Volatile.Write(ref _disposing, true);
        using var step = EnterStepUnlessDisposed(wait: true);
        if (step is null) return;
        _disposed = true;
        try
        {
            _stream.Synchronize();   // may rethrow an earlier asynchronous error: the memory must be freed anyway
        }
        finally
        {
            DisposeBatched();
            _ws.Dispose();
            _attention.Dispose();
            _denseScratch?.Dispose();
            _w.Dispose();
            _kernels.Dispose();
            _blas.Dispose();
            _stepUploaded.Dispose();
            _pinned.Dispose();
            _picked.Dispose();
            _stepInts.Dispose();
            _stream.Dispose();
        }
    }

    /// <summary>
    /// Scratch activations sized for the largest step seen so far (grown by doubling, never per call); logits are
    /// sized separately for the rows that need them (a LastToken prefill needs one). Generation changes whenever
    /// a buffer moves, so decode graphs that baked the old addresses are recaptured.
    /// A step longer than KeptActivationRows gives its activations back when it is done (TrimActivations), down to what
    /// a serving engine reserved (Reserve).
    /// </summary>
    sealed class Workspace(LlamaConfig cfg, int swiftKvLeaders) : IDisposable
    {
        int _rows, _logitsRows, _reservedRows;   // _reservedRows: the largest of _reservations (0: none)
        readonly List<int> _reservations = new();
        public int Rows => _rows;
        public int Generation { get; private set; }
        public DeviceBuffer<int> Ids { get; private set; } = null!;
        public DeviceBuffer<float> X { get; private set; } = null!;
        public DeviceBuffer<Bf16> Normed { get; private set; } = null!;
        public DeviceBuffer<float> Qkv { get; private set; } = null!;
        /// <summary>
        /// The fused [q; k; v] GEMM's rotated bf16 queries (rows, q_dim), in the Qkv buffer's memory (that step writes no
        /// fp32 [q | k | v]; (rows, q + 2 kv) floats hold (rows, q) bf16 twice over).
        /// </summary>
        public DeviceSpan<Bf16> QueryBf16 => new(Qkv.Address, Qkv.Length * 2);
        public DeviceBuffer<Bf16> Attn { get; private set; } = null!;
        /// <summary>
        /// The cuBLAS route's bf16 [gate | up] (rows, 2 inter): with the gated GEMM a prefill never needs it (1.9 GB at 32K
        /// rows of Llama 3 8B).
        /// </summary>
        readonly RouteBuffer<Bf16> _gateUp = new(2L * cfg.IntermediateSize);
        public DeviceBuffer<Bf16> Mlp { get; private set; } = null!;
        /// <summary>
        /// The unfused SingleInputKV route's fp32 [k | v] of every leader (rows, 2 leaders kv): with the fused K/V GEMM a
        /// prefill never needs it (4.3 GB at 32K rows of an 8B SwiftKV 50% model).
        /// </summary>
        readonly RouteBuffer<float> _swiftKv = new(2L * swiftKvLeaders * cfg.KeyValueDim);
        /// <summary>
        /// The W8A8 route's input rows as e4m3 codes and their scales (Fp8For): allocated by the first W8A8 step, for the
        /// activations' rows at the hidden / query width (the MLP's wider rows go in chunks: W8A8MlpChunkRows).
        /// </summary>
        DeviceBuffer<byte>? _fp8Codes;
        DeviceBuffer<float>? _fp8Scales;
        /// <summary>
        /// A step's RoPE angles (rows, head_dim): written by the RoPE pass when the attention kernel rotates the queries
        /// (RopeOnLoad), or once per step for the fused [q; k; v] GEMM's epilogue (UseFusedQkv).
        /// </summary>
        public DeviceBuffer<float> Rope { get; private set; } = null!;
        public DeviceBuffer<float> Logits { get; private set; } = null!;

        /// <summary>Forces decode graphs to be recaptured (a setting baked into them changed).</summary>
        public void Invalidate() => Generation++;

        /// <remarks>
        /// Generation moves before anything is freed, and sizes are recorded only once the new buffers exist: an
        /// allocation that fails (out of memory) leaves sizes of 0, so no captured decode graph replays into the freed
        /// buffers and the next step allocates again.
        /// </remarks>
        public void Ensure(int rows, int logitsRows)
        {
            if (logitsRows > _logitsRows)
            {
                int n = Math.Max(logitsRows, Math.Min(2 * _logitsRows, cfg.MaxPositionEmbeddings));
                Generation++;
                Logits?.Dispose();
                _logitsRows = 0;
                Logits = new DeviceBuffer<float>((long)n * cfg.VocabSize);
                _logitsRows = n;
            }
            if (rows <= _rows) return;
            int r = Math.Max(rows, Math.Min(2 * _rows, cfg.MaxPositionEmbeddings));
            r = Math.Max(r, Math.Min(16, cfg.MaxPositionEmbeddings));
            Generation++;
            DisposeActivations();
            try
            {
                AllocateActivations(r);
            }
            catch
            {
                DisposeActivations();
                throw;
            }
            _rows = r;
        }

        /// <summary>
        /// [gate | up] for a step of <paramref name="rows"/>; grown (never shrunk) to the activations' row count, or to
        /// <paramref name="routeRows"/> when no larger step takes this route (the gated GEMM serves those): 14 MB at 8B
        /// shape instead of 470.
        /// </summary>
        public DeviceSpan<Bf16> GateUpFor(int rows, int routeRows) => _gateUp.For(this, rows, Math.Max(rows, Math.Min(_rows, routeRows)));

        public long GateUpBytes => _gateUp.Bytes;

        /// <summary>
        /// SingleInputKV's fp32 [k | v] for a step of <paramref name="rows"/>, grown by doubling (never shrunk) from what
        /// the unfused steps asked, and never past <paramref name="maxRows"/> (the chunk the route splits longer steps
        /// into) unless a step asks for more: a decode step after a fused 32K prefill takes a few rows, not 4.3 GB.
        /// </summary>
        public DeviceSpan<float> SwiftKvFor(int rows, int maxRows) =>
            _swiftKv.For(this, rows, Math.Max(rows, Math.Min(Math.Min(Math.Max(2 * _swiftKv.Rows, 16), cfg.MaxPositionEmbeddings), maxRows)));

        public long SwiftKvBytes => _swiftKv.Bytes;

        /// <summary>
        /// e4m3 rows (rows, columns) for a W8A8 GEMM's input. Grown, never shrunk, to at least the activations' rows at the
        /// hidden / query width, so the steps after the first do not reallocate; Generation moves when it does (a
        /// captured batched step reads these buffers).
        /// </summary>
        public E4m3Rows Fp8For(int rows, int columns)
        {
            long bytes = (long)rows * columns;
            if ((_fp8Codes?.Length ?? 0) < bytes)
            {
                Generation++;
                _fp8Codes?.Dispose();
                _fp8Codes = null;
                _fp8Codes = new DeviceBuffer<byte>(Math.Max(bytes, (long)Math.Max(rows, _rows) * Math.Max(cfg.HiddenSize, cfg.QueryDim)));
            }
            if ((_fp8Scales?.Length ?? 0) < rows)
            {
                Generation++;
                _fp8Scales?.Dispose();
                _fp8Scales = null;
                _fp8Scales = new DeviceBuffer<float>(Math.Max(rows, _rows));
            }
            return new(_fp8Codes!.Span.Slice(0, bytes), _fp8Scales!.Span.Slice(0, rows));
        }

        void FreeFp8()
        {
            if (_fp8Codes is null && _fp8Scales is null) return;
            Generation++;
            _fp8Codes?.Dispose();
            _fp8Scales?.Dispose();
            _fp8Codes = null;
            _fp8Scales = null;
        }

        public long LogitsBytes => (long)_logitsRows * cfg.VocabSize * sizeof(float);

        /// <summary>
        /// Grows the activations (Ensure) and keeps at least these rows through later trims while the reservation lasts
        /// (a serving engine's step; each engine holds its own, ended by <see cref="Release"/>).
        /// </summary>
        public void Reserve(int rows, int logitsRows)
        {
            Ensure(rows, logitsRows);
            _reservations.Add(rows);
            _reservedRows = _reservations.Max();
        }

        /// <summary>Ends one reservation of <paramref name="rows"/>: later trims keep only what the others ask (the caller trims).</summary>
        public void Release(int rows)
        {
            _reservations.Remove(rows);
            _reservedRows = _reservations.Count == 0 ? 0 : _reservations.Max();
        }

        /// <summary>
        /// Frees the activations (and the unfused routes' [gate | up] and SingleInputKV buffers) when they hold more than
        /// <paramref name="keepRows"/> rows, keeping a reservation's rows allocated; the next step allocates what it needs.
        /// </summary>
        public void TrimActivations(int keepRows)
        {
            keepRows = Math.Max(keepRows, _reservedRows);
            if (_rows > keepRows)
            {
                Generation++;   // captured decode graphs read these buffers
                DisposeActivations();
                if (_reservedRows > 0)
                {
                    AllocateActivations(_reservedRows);
                    _rows = _reservedRows;
                }
            }
            _gateUp.FreeIfAbove(this, keepRows);
            _swiftKv.FreeIfAbove(this, keepRows);
            if ((_fp8Scales?.Length ?? 0) > keepRows) FreeFp8();
        }

        /// <summary>Frees the logits buffer when it holds more than <paramref name="keepRows"/> rows; the next step allocates what it needs.</summary>
        public void TrimLogits(int keepRows)
        {
            if (_logitsRows <= keepRows) return;
            Generation++;   // captured decode graphs write their logits here
            Logits.Dispose();
            _logitsRows = 0;
        }

        void AllocateActivations(int r)
        {
            Ids = new DeviceBuffer<int>(r);
            X = new DeviceBuffer<float>((long)r * cfg.HiddenSize);
            Normed = new DeviceBuffer<Bf16>((long)r * cfg.HiddenSize);
            Qkv = new DeviceBuffer<float>((long)r * (cfg.QueryDim + 2 * cfg.KeyValueDim));
            Attn = new DeviceBuffer<Bf16>((long)r * cfg.QueryDim);
            Mlp = new DeviceBuffer<Bf16>((long)r * cfg.IntermediateSize);
            Rope = new DeviceBuffer<float>((long)r * cfg.HeadDim);
        }

        void DisposeActivations()
        {
            foreach (var b in new IDisposable?[] { Ids, X, Normed, Qkv, Attn, Mlp, Rope }) b?.Dispose();
            _rows = 0;
        }

        /// <summary>
        /// A buffer only one route's steps use (perRow elements a row): allocated by the first such step, grown (never
        /// shrunk) after, freed by a trim. Generation moves whenever it does: a decode graph of that route reads it.
        /// </summary>
        sealed class RouteBuffer<T>(long perRow) : IDisposable where T : unmanaged
        {
            DeviceBuffer<T>? _buffer;
            public int Rows { get; private set; }
            public long Bytes => _buffer?.ByteLength ?? 0;

            /// <summary>The buffer for a step of <paramref name="rows"/>, reallocated to <paramref name="growTo"/> rows when smaller.</summary>
            public DeviceSpan<T> For(Workspace ws, int rows, int growTo)
            {
                if (rows > Rows)
                {
                    ws.Generation++;
                    Dispose();
                    _buffer = new DeviceBuffer<T>(Math.Max(1L, perRow * growTo));
                    Rows = growTo;
                }
                return _buffer!.Span;
            }

            public void FreeIfAbove(Workspace ws, int keepRows)
            {
                if (Rows <= keepRows) return;
                ws.Generation++;
                Dispose();
            }

            public void Dispose()
            {
                _buffer?.Dispose();
                _buffer = null;
                Rows = 0;
            }
        }

        public void Dispose()
        {
            DisposeActivations();
            _gateUp.Dispose();
            _swiftKv.Dispose();
            FreeFp8();
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
