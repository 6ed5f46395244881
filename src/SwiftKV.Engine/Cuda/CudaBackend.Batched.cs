// The batched, paged step of the CUDA backend (IBatchedBackend), CpuBackend.Batched's algorithm on the GPU.
// All sequences' new tokens are concatenated into one (num_tokens, hidden) activation, so every linear layer is one
// GEMM over every row of the step and reads its weights once:
//   embed -> layers 0..l-1 over every row: [q;k;v] GEMM -> paged KV write (bias + RoPE at each row's position, slot
//            from its block table) -> per-row RoPE on Q -> paged varlen attention -> o_proj / MLP GEMMs
//         -> SwiftKV: one GEMM gives every later cache's K/V from norm_swiftkv(x_l) for every row; then only the rows
//            whose logits are wanted (each NeedsLogits sequence's last row) are gathered and run layers l..L-1
//         -> model.norm -> lm_head for those rows -> logits to the host (ForwardBatch) or argmax on the GPU with only
//            the ids copied back (ForwardBatchGreedy).
// Everything per step that varies by row or sequence (ids, positions, slots, cu_seqlens, context lengths, block
// tables, kept rows) is packed on the host into one pinned buffer and uploaded with one copy.
// Rows are ordered single-token sequences (decodes) first, then longer chunks. In a step that mixes both, attention is
// launched twice: a varlen launch sized for one query row per sequence (its own split-K choice) and one for the
// prefill chunks. One launch over both would size the grid by the longest chunk for every sequence, i.e. ~60 empty
// CTAs per decode sequence and KV head at 2000-token chunks, ~100K per layer at 200 decodes (SplitMixedAttention).
// Decode-only steps (every sequence one token, each wanting logits: a serving engine's steady state) run padded to a
// bucket of sequences and a power-of-two block-table stride, so every step of that shape has the same ints layout and
// the same launches; the first is captured as a CUDA graph (per KV pool) and later ones replay it after the upload.
// Padding sequences have no rows in the attention and their rows a slot of -1 (no K/V write); the paged attention
// divides each sequence's own keys over splits chosen from the stride's bound, on the device.
// Rows are not bit-identical to Forward: cuBLAS may pick another GEMM algorithm for another row count, and the paged
// attention kernel splits keys differently from the contiguous one; both stay within bf16 rounding (tests).
using SwiftKV.Cuda;
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Sampling;
using SwiftKV.Engine.Serving;
using System.Runtime.CompilerServices;

namespace SwiftKV.Engine.Cuda;

public sealed partial class CudaBackend : IGreedyBatchedBackend
{
    BatchScratch? _batchScratch;
    RopeRowsKernel? _ropeRows;
    GatherRowsKernel? _gatherRows;
    AttentionKvWriteKernel? _pagedKvWrite;

    /// <summary>Launch attention separately for the single-token and the multi-token sequences of a mixed step (default on).</summary>
    public bool SplitMixedAttention { get; set; } = true;

    /// <summary>When set, every <see cref="CudaStepProfiler.Every"/>-th batched step records CUDA events around its phases.</summary>
    public CudaStepProfiler? StepProfiler { get; set; }

    /// <summary>Paged attention runs the flash kernels only: head_dim 64 or 128 on sm_80 or newer.</summary>
    public bool SupportsBatchedStep => Config.HeadDim is 64 or 128 && Device.ComputeMajor >= 8;

    /// <inheritdoc />
    /// <remarks>bf16 keys and values of every distinct cache: AcrossKV's fewer caches shrink it.</remarks>
    public long KvBytesPerToken => KvBytesPerTokenOf(KvCacheDtype.Bf16);

    /// <inheritdoc />
    public int MaxSequencesPerStep => AttentionKernel.MaxPagedSequences(Config.NumKeyValueHeads);

    /// <inheritdoc />
    /// <remarks>
    /// 128 (or the step's limit, if lower). H100, 8B, 256 requests of 2000 + 256 (serve-bench, auto KV budget): 64
    /// running 22.7K / 29.2K total tokens/s (SwiftKV off / 50%), 128 running 26.0K / 34.9K, 256 (186 fit) 25.8K / 34.3K
    /// with a slower pace per request (TPOT p50 off 24 / 42 / 49 ms).
    /// </remarks>
    public int PreferredMaxRunningSequences => Math.Min(128, MaxSequencesPerStep);

    /// <inheritdoc />
    /// <remarks>64 for bf16 pools on Hopper (head_dim 128), where the warp-specialised paged attention reads whole blocks through TMA; 16 otherwise.</remarks>
    public int PreferredBlockSize(KvCacheDtype dtype) => _attention.PreferredPagedBlockSize(Config.HeadDim, dtype == KvCacheDtype.Fp8E4M3);

    /// <inheritdoc />
    /// <remarks>
    /// 8192 tokens on GPUs with at least 64 GiB (vLLM's default for its API server on H100/H200) when at least 32 GiB
    /// remain beyond the weights, 2048 otherwise: an 8192-row step's activations come out of the memory the KV pool
    /// would get. H100, 8B, SwiftKV 50% (serving_step_shape.sh, blocks of 16): first token of a 32K-token prompt 651 ms
    /// at 8192 vs 1015 ms at 512 (569 ms at 8192 with blocks of 64); the throughput comparison in that file (34.4K vs
    /// 25.3K total tokens/s) also changed the block size (64 vs 16), and the 512-token run held at most 63 requests
    /// running against 128. H200, 70B, SwiftKV 50%, 8.4 GiB beyond the weights (docs/BENCHMARKS.md): 2048 gave a 4.6
    /// instead of 3.8 GiB pool, 2195 vs 1654 total tokens/s and TTFT p50 13.1 vs 18.2 s, for TPOT 48 vs 40 ms. The 32 GiB
    /// line lies between those two measured cases (64.7 and 8.4 GiB beyond the weights); nothing between them was measured.
    /// </remarks>
    public int PreferredMaxBatchTokens => PreferredMaxBatchTokensOn(Device.TotalMemoryBytes, WeightBytes);

    /// <summary><see cref="PreferredMaxBatchTokens"/> on a card of <paramref name="cardBytes"/> (serve-bench's emulation of a smaller card).</summary>
    public static int PreferredMaxBatchTokensOn(long cardBytes, long weightBytes) => PreferLargeSteps(cardBytes, weightBytes) ? 8192 : 2048;

    /// <summary>The rule of <see cref="PreferredMaxBatchTokens"/>: a card of >= 64 GiB with >= 32 GiB beyond the weights.</summary>
    internal static bool PreferLargeSteps(long cardBytes, long weightBytes) => cardBytes >= 64L << 30 && cardBytes - weightBytes >= 32L << 30;

    /// <inheritdoc />
    /// <remarks>
    /// Grows the activation workspace (and SingleInputKV's [k | v]) to <paramref name="maxBatchTokens"/> rows and
    /// <paramref name="maxSequences"/> logits rows, then warms the GEMM plans for those sizes (WarmGemmPlans).
    /// </remarks>
    /// <exception cref="InvalidOperationException">The workspace does not fit in the device's free memory; the message says what to lower.</exception>
    public void ReserveStepWorkspace(int maxBatchTokens, int maxSequences)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxBatchTokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxSequences);
        using var step = EnterStep(wait: true);
        // A decode step of maxSequences runs padded to its graph bucket (DecodeShapeOf): reserve that, so no decode
        // step grows the workspace (doubling it) after the KV pool has taken the free memory.
        int sequences = PaddedDecodeRows(maxSequences);
        int rows = Math.Max(maxBatchTokens, sequences);
        bool reserved = false;
        try
        {
            _ws.Reserve(rows, sequences);               // kept through the single-sequence path's trims
            reserved = true;
            if (SwiftKvEnabled) _ws.SwiftKvFor(Math.Min(rows, SwiftKvChunkRows), SwiftKvChunkRows);   // the batched step's SingleInputKV route (WriteSwiftKv)
            WarmGemmPlans(rows, sequences);
            _stream.Synchronize();
        }
        catch (CudaException e) when (e.IsOutOfMemory)
        {
            if (reserved) ReleaseReservation(rows);   // a retry with smaller options starts from what it asks for
            throw new InvalidOperationException($"the step workspace for {maxBatchTokens} tokens per step does not fit in the GPU's free memory " +
                $"({CudaRuntime.MemoryInfo().Free >> 20} MiB): lower MaxBatchTokens, or free GPU memory (another engine on this GPU without an explicit KvCacheBytes takes most of it).", e);
        }
        catch
        {
            if (reserved) ReleaseReservation(rows);   // the warm-up failed: the caller sees no reservation to end
            throw;
        }
    }

    /// <summary>cuBLASLt heuristic queries this backend has made (one per projection shape and row bucket).</summary>
    public int GemmHeuristicQueries => _blas.HeuristicQueries;

    /// <summary>How long the last warm-up of the GEMM plans took (<see cref="ReserveStepWorkspace"/> warms only sizes not warmed before).</summary>
    public TimeSpan LastGemmWarmUp { get; private set; }

    int _warmRows, _warmKept;

    /// <summary>
    /// Runs each cuBLAS projection of a batched step once per row bucket up to <paramref name="rows"/> (the kept-row
    /// ones, lm_head and SwiftKV's later layers, up to <paramref name="kept"/>), on the workspace's own buffers, so a
    /// step of a new length finds cuBLASLt's algorithm chosen and its kernel loaded (first use: 0.2-0.4 ms of heuristic
    /// per projection, 4-5 ms per kernel load; NOTES). The buffers hold nothing between steps; the results are dropped.
    /// Row counts the GEMVs take are left out, and so are the [gate; up] row counts the gated GEMM takes (256 and up on
    /// sm_90a): cuBLAS runs [gate; up] only between the two.
    /// </summary>
    void WarmGemmPlans(int rows, int kept)
    {
        if (rows <= _warmRows && kept <= _warmKept) return;
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        var cfg = Config;
        int hidden = cfg.HiddenSize, qDim = cfg.QueryDim, ldFull = qDim + 2 * cfg.KeyValueDim;
        var first = _w.Layers[0];
        bool gated = GatedMlpApplies(_ws.Normed, first), w8a8Mlp = W8A8Mlp(first);
        foreach (int n in Buckets(rows))
        {
            Linear(_ws.Normed, n, hidden, first.QkvOrQ, ldFull, _ws.Qkv);
            Linear(_ws.Attn, n, qDim, first.O, hidden, _ws.X, accumulate: true);
            // Under W8A8 the MLP runs in chunks of at most W8A8MlpChunk rows (MlpAdd): its plans above that are never
            // asked, and warming them would size its buffers for the whole step.
            bool mlpChunk = w8a8Mlp && n > GemvKernel.MaxRows, mlpNever = mlpChunk && n > W8A8MlpChunk;
            if (!mlpNever) Linear(_ws.Mlp, n, cfg.IntermediateSize, first.Down, hidden, _ws.X, accumulate: true);
            if (SwiftKvEnabled)   // WriteSwiftKv's GEMMs: at most SwiftKvChunkRows rows each
            {
                int m = Math.Min(n, SwiftKvChunkRows);
                Linear(_ws.Normed, m, hidden, _w.SwiftKvKv!, _w.SwiftKvLeaders.Length * 2 * cfg.KeyValueDim, _ws.SwiftKvFor(m, SwiftKvChunkRows));
            }
            // GateUpSilu's cuBLAS route: above the GEMV's rows, and below the gated GEMM's where that applies.
            if (mlpNever || (mlpChunk && GateUpW8A8(_ws.Normed, n, first.GateUp, W8A8MlpChunk)) || E4m3RowsGemm(n, _ws.Normed.Span.Address, first.GateUp, hidden)) { }
            else if ((!_useGemv || n > GemvGateUpRows) && (!gated || n < GatedMlpMinRows))
                _blas.Linear(_ws.Normed, n, hidden, Dense(first.GateUp), 2 * cfg.IntermediateSize, _ws.GateUpFor(n, GateUpRouteRows(gated)));
        }
        var later = _w.Layers[cfg.NumHiddenLayers - 1];
        foreach (int n in Buckets(kept))
        {
            Linear(_ws.Normed, n, hidden, _w.LmHead, cfg.VocabSize, _ws.Logits);
            if (SwiftKvEnabled) Linear(_ws.Normed, n, hidden, later.QkvOrQ, qDim, _ws.Qkv);
        }
        _warmRows = Math.Max(_warmRows, rows);
        _warmKept = Math.Max(_warmKept, kept);
        _stream.Synchronize();
        LastGemmWarmUp = System.Diagnostics.Stopwatch.GetElapsedTime(started);

        // Every bucket's top row count up to max (the last one clipped to max: a clipped count is in the same bucket).
        static IEnumerable<int> Buckets(int max)
        {
            for (int n = GemvLinearRows + 1; n <= max; n = Cublas.RowBucket(n) + 1)
                yield return Math.Min(Cublas.RowBucket(n), max);
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// Activations (and the unfused routes' buffers) above both the single-sequence path's kept rows and the largest
    /// reservation still alive are freed. Waits for a step in flight rather than failing.
    /// </remarks>
    public void ReleaseStepWorkspace(int maxBatchTokens, int maxSequences)
    {
        using var step = EnterStepUnlessDisposed(wait: true);
        if (step is null) return;   // the memory went with the backend
        ReleaseReservation(Math.Max(maxBatchTokens, PaddedDecodeRows(maxSequences)));
    }

    void ReleaseReservation(int rows)
    {
        _stepGraphs.DropDisposedPools();   // an engine disposes its pool, then releases its workspace
        _ws.Release(rows);
        _ws.TrimActivations(KeptActivationRows);
    }

    /// <inheritdoc />
    /// <remarks>
    /// 0.9 x (free device memory - a reserve of 2 GiB), never negative; the step's activations are already reserved
    /// (ReserveStepWorkspace), so the reserve is for what steps allocate later (attention partials, cuBLAS, decode graphs,
    /// sampling tables: tens of MB each). A fixed reserve, not a share of the card: a model that nearly fills the card
    /// (70B on an H200 leaves ~8 GiB) would otherwise lose most of its pool to it. A second model loaded afterwards finds
    /// only the rest: give engines that share a GPU an explicit KvCacheBytes.
    /// </remarks>
    public long PreferredKvCacheBytes()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Math.Max(0, (long)((CudaRuntime.MemoryInfo().Free - PreferredKvReserveBytes) * 0.9));
    }

    /// <summary>Device memory <see cref="PreferredKvCacheBytes"/> leaves free for what steps allocate after the pool.</summary>
    const long PreferredKvReserveBytes = 2L << 30;

    /// <inheritdoc />
    /// <remarks>fp8: one byte per element plus a 4-byte scale per KV head, for K and V of every distinct cache.</remarks>
    public long KvBytesPerTokenOf(KvCacheDtype dtype) => 2L * Config.NumKvCaches(SwiftKvEnabled) *
        (dtype == KvCacheDtype.Fp8E4M3 ? Config.KeyValueDim + 4L * Config.NumKeyValueHeads : Config.KeyValueDim * 2L);

    /// <inheritdoc />
    /// <exception cref="ArgumentException">The block size is not a power of two (the attention kernels shift by it).</exception>
    /// <exception cref="NotSupportedException">This model's head_dim has no paged attention kernel (<see cref="SupportsBatchedStep"/>).</exception>
    public IPagedKvCache CreatePagedKvCache(int numBlocks, int blockSize) => CreatePagedKvCache(numBlocks, blockSize, KvCacheDtype.Bf16);

    /// <inheritdoc cref="CreatePagedKvCache(int, int)" />
    public IPagedKvCache CreatePagedKvCache(int numBlocks, int blockSize, KvCacheDtype dtype)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numBlocks);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        if (!System.Numerics.BitOperations.IsPow2(blockSize))
            throw new ArgumentException($"the CUDA paged KV cache needs a power-of-two block size (got {blockSize}).", nameof(blockSize));
        if (!SupportsBatchedStep)
            throw new NotSupportedException($"the CUDA batched step needs head_dim 64 or 128 on sm_80+ (this model: head_dim {Config.HeadDim}, {Device.Arch}).");
        if (!Enum.IsDefined(dtype)) throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown KV cache dtype.");
        return new CudaPagedKvCache(this, Config.NumKvCaches(SwiftKvEnabled), numBlocks, blockSize, Config.NumKeyValueHeads, Config.HeadDim, dtype);
    }

    /// <inheritdoc />
    public float[] ForwardBatch(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        using var step = EnterStep(wait: true);
        int rows = EncodeBatch(kv, batch);
        var logits = new float[(long)rows * Config.VocabSize];
        if (rows > 0) _stream.Download(_ws.Logits.Span.Slice(0, logits.Length), logits);
        else _stream.Synchronize();
        StepProfiler?.Collect();
        return logits;
    }

    /// <inheritdoc />
    public int[] ForwardBatchGreedy(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return PickOnDevice(kv, batch, []);
    }

    /// <inheritdoc />
    /// <remarks>
    /// The rows' masks and biases (their own uploads and launches), the argmax of every row, then the sampling kernel
    /// over the rows with a temperature (one CTA each, the greedy ones return at once); the picks' parameters go up in
    /// one small copy once the step is queued.
    /// </remarks>
    public int[] ForwardBatchSample(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch, ReadOnlySpan<RowSampling> sampling)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        StepValidation.Sampling(Config, batch, sampling);
        return PickOnDevice(kv, batch, sampling);
    }

    /// <summary>
    /// One step, then each kept row's token picked on the GPU: the rows' masks and biases, the argmax, then
    /// <paramref name="sampling"/>'s draws (none: greedy).
    /// </summary>
    // Optimized from the first call (they run once per step, over its tokens, rows and layers): as tier-0 code, the
    // first request after start paid ~7 ms more TTFT on an H100 (2000 tokens: 49-51 ms against 43; NOTES, "The first
    // request after start").
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    unsafe int[] PickOnDevice(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch, ReadOnlySpan<RowSampling> sampling)
    {
        using var step = EnterStep(wait: true);
        int rows = EncodeBatch(kv, batch);
        var ids = new int[rows];
        var prof = StepProfiler;
        if (rows == 0)
        {
            _stream.Synchronize();
            prof?.Collect();
            return ids;
        }
        var s = _batchScratch!;
        int mMasks = prof?.Mark(_stream) ?? -1;
        AddMasks(s, sampling, rows);   // waits for masks still being computed: the step is already queued
        AddBiases(s, sampling, rows);
        int m0 = prof?.Mark(_stream) ?? -1;
        prof?.Span("masks+biases", mMasks, m0);
        _argmax.Launch(_stream, _ws.Logits.Span, rows, Config.VocabSize, s.Picked.Span);
        int m1 = prof?.Mark(_stream) ?? -1;
        prof?.Span("argmax", m0, m1);
        bool any = false;
        foreach (var p in sampling) any |= p.Temperature > 0;
        if (any)
        {
            var host = s.Sampling.Ensure(16L * rows);
            var parameters = host.AsSpan<float>(3 * rows);
            var topK = host.AsSpan<int>(4 * rows)[(3 * rows)..];
            for (int i = 0; i < rows; i++)
            {
                var p = sampling[i];
                parameters[3 * i] = p.Temperature > 0 ? 1f / p.Temperature : 0f;
                parameters[3 * i + 1] = p.TopP;
                parameters[3 * i + 2] = p.U;
                topK[i] = p.TopK;
            }
            ulong d = s.Sampling.Upload(_stream, 16L * rows);
            _sample.LaunchRows(_stream, _ws.Logits.Span, rows, Config.VocabSize, new DeviceSpan<float>(d, 3 * rows),
                new DeviceSpan<int>(d + 12UL * (ulong)rows, rows), s.Picked.Span);
            prof?.Span("sampling", m1, prof.Mark(_stream));
        }
        _stream.Download(s.Picked.Span.Slice(0, rows), ids);
        prof?.Collect();
        return ids;
    }

    /// <summary>
    /// Adds the rows' biases (penalties; checked by StepValidation.Sampling) to the step's logits before anything reads
    /// them: one upload of (row, token) pairs and deltas, one launch.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    unsafe void AddBiases(BatchScratch s, ReadOnlySpan<RowSampling> sampling, int rows)
    {
        int count = 0;
        foreach (var p in sampling) count += p.Bias?.Tokens.Length ?? 0;
        if (count == 0) return;
        var host = s.Biases.Ensure(12L * count);
        var entries = host.AsSpan<int>(3 * count);
        var deltas = host.AsSpan<float>(3 * count)[(2 * count)..];
        for (int r = 0, k = 0; r < sampling.Length; r++)
        {
            if (sampling[r].Bias is not { } bias) continue;
            for (int i = 0; i < bias.Tokens.Length; i++, k++)
            {
                entries[2 * k] = r;
                entries[2 * k + 1] = bias.Tokens[i];
                deltas[k] = bias.Deltas[i];
            }
        }
        ulong d = s.Biases.Upload(_stream, 12L * count);
        _sample.LaunchBias(_stream, _ws.Logits.Span, rows, Config.VocabSize, new DeviceSpan<int>(d, 2L * count),
            new DeviceSpan<float>(d + 8UL * (ulong)count, count), count);
    }

    /// <summary>
    /// Sets the logits a row's mask (a constraint's allowed tokens) leaves out to -inf: the masks are awaited here, after
    /// the step's kernels are queued, so their computation on the host overlaps the step; one upload, one launch.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    unsafe void AddMasks(BatchScratch s, ReadOnlySpan<RowSampling> sampling, int rows)
    {
        int vocab = Config.VocabSize, count = 0;
        var masks = new LogitMask.AllowedBits?[sampling.Length];
        for (int r = 0; r < sampling.Length; r++)
        {
            if (sampling[r].Mask is not { } mask || (masks[r] = mask.WaitBits()) is null) continue;
            if (masks[r]!.Length != vocab) throw new ArgumentException($"row sampling {r}: a mask of {masks[r]!.Length} tokens for a vocabulary of {vocab}.");
            count++;
        }
        if (count == 0) return;
        int words = SamplingKernel.MaskWords(vocab);
        long bytesNeeded = 4L * count + 4L * count * words;
        var host = s.Masks.Ensure(bytesNeeded);
        var rowIds = host.AsSpan<int>(count);
        var bits = host.AsSpan<uint>(count + count * words)[count..];
        for (int r = 0, j = 0; r < masks.Length; r++)
        {
            if (masks[r] is not { } allowed) continue;
            rowIds[j] = r;
            allowed.Words.AsSpan(0, words).CopyTo(bits.Slice(j++ * words, words));   // packed in the mask's own task
        }
        ulong d = s.Masks.Upload(_stream, bytesNeeded);
        _sample.LaunchMask(_stream, _ws.Logits.Span, rows, vocab, new DeviceSpan<int>(d, count),
            new DeviceSpan<uint>(d + 4UL * (ulong)count, (long)count * words), count);
    }

    /// <summary>Queues one batched step; leaves the kept rows' logits at the start of the Logits workspace and returns their count.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    unsafe int EncodeBatch(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var pool = ValidateBatch(kv, batch);
        _ropeRows ??= new RopeRowsKernel(_kernels);
        _gatherRows ??= new GatherRowsKernel(_kernels);
        _pagedKvWrite ??= new AttentionKvWriteKernel(_kernels);

        var prof = StepProfiler;
        var decode = prof is null ? DecodeShapeOf(batch, pool.BlockSize) : null;
        var plan = new BatchPlan(batch, pool.BlockSize, SplitMixedAttention, decode);
        prof?.Begin(plan.MaxQueryLength == 1 ? "decode-only" : "mixed");
        _stream.Synchronize();   // the pinned staging of the previous step may still be in flight after a failure
        _ws.Ensure(plan.Rows, Math.Max(plan.Kept, 1));
        var s = _batchScratch ??= new BatchScratch();
        s.Ensure(plan.IntCount, Math.Max(plan.Kept, 1), Config.HiddenSize);
        plan.Write(s.Host.AsSpan<int>(plan.IntCount));
        int mStart = prof?.Mark(_stream) ?? -1;
        _stream.CopyAsync(s.Ints.Span, (int*)s.Host.Pointer, plan.IntCount);
        if (decode is { } shape)
        {
            RunDecodeStep(pool, plan, s, shape);
            return batch.Length;
        }
        QueueStep(pool, plan, s, mStart);
        return plan.Kept;
    }

    /// <summary>
    /// The padded shape a decode-only step runs at (every sequence brings one token and wants its logits, as in
    /// every serving step once the prompts are in): <see cref="DecodeShape.Sequences"/> 1-4 as they are, then 8, then
    /// multiples of 16 up to <see cref="MaxGraphSequences"/>, and block tables of a power-of-two stride (at least 8).
    /// Null for other steps. Padding sequences have no rows in the attention and negative slots (nothing is written),
    /// so a step of 5 runs the step of 8 and drops its last three rows. 1-4 are not padded: there the projections take
    /// the GEMV, whose time grows with the rows (H100, 8B, 2K context: 3 sequences padded to 4 took 7.19-7.21 ms
    /// launched one by one against 6.90-6.98 unpadded).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    DecodeShape? DecodeShapeOf(ReadOnlySpan<BatchSequence> batch, int blockSize)
    {
        int n = batch.Length, maxBlocks = 0;
        if (n > MaxGraphSequences) return null;
        foreach (var seq in batch)
        {
            if (seq.Tokens.Length != 1 || !seq.NeedsLogits) return null;
            maxBlocks = Math.Max(maxBlocks, seq.StartPosition / blockSize + 1);
        }
        return new DecodeShape(PaddedDecodeRows(n), Math.Max(8, (int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)maxBlocks)));
    }

    /// <summary>The rows a decode-only step of <paramref name="sequences"/> runs as: its graph bucket, up to <see cref="MaxGraphSequences"/>.</summary>
    int PaddedDecodeRows(int sequences) => sequences > MaxGraphSequences ? sequences
        : Math.Min(sequences <= 4 ? sequences : sequences <= 8 ? 8 : (sequences + 15) / 16 * 16, MaxSequencesPerStep);

    /// <summary>
    /// Most sequences of a decode step that runs padded (and, with <see cref="UseGraphs"/>, as a captured graph): 240, so
    /// no padding lifts a step to the 256 rows where the [gate; up] projection changes route (GatedMlpMinRows).
    /// </summary>
    public const int MaxGraphSequences = 240;

    /// <summary>A decode-only step's padded size: sequences (= rows) and block-table stride.</summary>
    readonly record struct DecodeShape(int Sequences, int Blocks);

    readonly StepGraphs _stepGraphs = new();

    readonly GraphCaptureRetry _stepGraphRetry = new();

    /// <summary>
    /// Why captured decode steps are off for now (a capture failed: steps launch kernel by kernel, and a capture is tried
    /// again after <see cref="GraphCaptureRetry.RetryAfter"/> steps), or null.
    /// </summary>
    public string? StepGraphFailure => _stepGraphRetry.Failure;

    /// <summary>Captured decode-step graphs so far (tests and benchmarks check the path was taken).</summary>
    public long StepGraphCaptures => _stepGraphs.Captures;

    /// <summary>Decode steps replayed from a captured graph so far.</summary>
    public long StepGraphReplays => _stepGraphs.Replays;

    /// <summary>Captured decode-step graphs held now (tests: they go with their pool).</summary>
    internal int StepGraphsHeld => _stepGraphs.Count;

    /// <summary>
    /// A decode-only step, its ints already uploaded: the graph of its shape replayed when one is captured for this
    /// pool and these buffers; else the kernels launched one by one, then (with <see cref="UseGraphs"/>) the same
    /// launches captured for the next step of this shape. Launching first sets up lazily loaded kernels, cuBLAS and
    /// the attention's scratch outside the capture, as the solo decode graph does.
    /// </summary>
    void RunDecodeStep(CudaPagedKvCache pool, BatchPlan plan, BatchScratch s, DecodeShape shape)
    {
        bool graphs = UseGraphs && _stepGraphRetry.Allowed();
        var generation = (_ws.Generation, s.Generation);
        if (graphs && _stepGraphs.Find(pool, shape, generation) is { } g)
        {
            g.Launch(_stream);
            return;
        }
        QueueStep(pool, plan, s, -1);
        if (!graphs) return;
        CudaGraph graph;
        try
        {
            graph = CudaGraph.Capture(_stream, () => QueueStep(pool, plan, s, -1));
        }
        catch (Exception e)
        {
            // The step itself already ran: a capture that fails leaves this backend launching kernel by kernel for a while.
            _stepGraphRetry.Failed($"capturing a decode step of {shape.Sequences} sequences failed: {e.Message}");
            return;
        }
        _stepGraphRetry.Succeeded();
        if (generation == (_ws.Generation, s.Generation)) _stepGraphs.Add(pool, shape, generation, graph);
        else graph.Dispose();   // something grew during the capture: the graph may have baked a freed buffer
    }

    /// <summary>The kernels of one batched step, after its ints are uploaded (profiler marks only outside graph captures).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    void QueueStep(CudaPagedKvCache pool, BatchPlan plan, BatchScratch s, int mStart)
    {
        var cfg = Config;
        int hidden = cfg.HiddenSize, qDim = cfg.QueryDim, kvDim = cfg.KeyValueDim;
        int rows = plan.Rows, kept = plan.Kept, n = plan.Sequences;
        var prof = StepProfiler;
        var d = s.Ints.Span;
        DeviceSpan<int> At((int Offset, int Count) r) => d.Slice(r.Offset, Math.Max(r.Count, 1));
        var ids = At(plan.Ids);
        var positions = At(plan.Positions);
        var slots = At(plan.Slots);
        StepAttention att;
        if (plan.SplitAt > 0)
        {
            // Decodes: sequences 0..SplitAt-1, one row each at rows 0..SplitAt-1. Chunks: the rest, from row SplitAt.
            int a = plan.SplitAt, blocks = plan.MaxBlocks;
            var first = new AttentionPagedBatch(d.Slice(plan.QueryStarts.Offset, a + 1), d.Slice(plan.ContextLengths.Offset, a),
                d.Slice(plan.Tables.Offset, (long)a * blocks), blocks, a, a, 1, plan.MaxContextFirst);
            var rest = new AttentionPagedBatch(At(plan.RestQueryStarts), d.Slice(plan.ContextLengths.Offset + a, n - a),
                d.Slice(plan.Tables.Offset + (long)a * blocks, (long)(n - a) * blocks), blocks, n - a, rows - a, plan.MaxQueryLength, plan.MaxContextRest);
            att = new StepAttention(first, rest, a);
        }
        else
        {
            att = new StepAttention(new AttentionPagedBatch(At(plan.QueryStarts), At(plan.ContextLengths), At(plan.Tables), plan.MaxBlocks,
                n, rows, plan.MaxQueryLength, plan.MaxContext, SplitKeysOnDevice: plan.Padded), null, 0);
        }

        _embed.Launch(_stream, ids, _w.Embed, cfg.VocabSize, _ws.X, rows, hidden);
        int mEmbed = prof?.Mark(_stream) ?? -1;
        prof?.Span("upload+embed", mStart, mEmbed);
        var x = _ws.X.Span;
        int ldFull = qDim + 2 * kvDim;
        for (int i = 0; i < FullLayers; i++)
        {
            var layer = _w.Layers[i];
            NormLinear(x, rows, layer.InputLayernorm, layer.QkvOrQ, ldFull, _ws.Qkv);
            var qkv = _ws.Qkv.Span;
            // bf16 pools: q's RoPE and the K/V write in one launch; the fp8 write has its own kernel, q its RoPE pass.
            bool rotated = pool.Cache(i).Fp8 is null;
            if (rotated)
                _pagedKvWrite!.LaunchWithQueries(_stream, qkv, ldFull, cfg.NumAttentionHeads, layer.QBias?.Span, layer.KBias?.Span, layer.VBias?.Span,
                    _w.InvFreq, positions, slots, rows, pool.Cache(i));
            else
                _pagedKvWrite!.Launch(_stream, qkv.Slice(qDim), qkv.Slice(qDim + kvDim), ldFull, layer.KBias?.Span, layer.VBias?.Span,
                    _w.InvFreq, positions, slots, rows, pool.Cache(i));
            PagedAttentionAndMlp(x, rows, layer, ldFull, positions, att, pool.Cache(i), "attention, layers 0..l-1", queryRotated: rotated);
        }
        int mEarly = prof?.Mark(_stream) ?? -1;
        prof?.Span("layers 0..l-1 (all rows)", mEmbed, mEarly);

        if (kept == 0)
        {
            // Every chunk stops short of its known end: later-layer K/V still has to be written.
            if (SwiftKvEnabled) WriteSwiftKv(x, rows, positions, slots, pool);
            prof?.Span("SwiftKV K/V of layers l..L-1", mEarly, prof.Mark(_stream));
            return;
        }
        // A decode-only step keeps every row in step order: the later layers run on x itself, with the step's own
        // attention batch, and nothing is gathered.
        var x2 = plan.KeptAreRows ? x : s.X2.Span.Slice(0, (long)kept * hidden);
        int mLater;
        if (SwiftKvEnabled)
        {
            WriteSwiftKv(x, rows, positions, slots, pool);
            int mKv = prof?.Mark(_stream) ?? -1;
            prof?.Span("SwiftKV K/V of layers l..L-1", mEarly, mKv);
            // The SwiftKV saving: only the rows someone samples from go on, one per sequence.
            var later = att.First;
            var keptPositions = positions;
            if (!plan.KeptAreRows)
            {
                _gatherRows!.Launch(_stream, x, rows, At(plan.Keep), kept, hidden, x2);
                later = new AttentionPagedBatch(At(plan.KeptQueryStarts), At(plan.KeptContextLengths), At(plan.KeptTables), plan.MaxBlocks,
                    kept, kept, 1, plan.MaxKeptContext);
                keptPositions = At(plan.KeptPositions);
            }
            for (int j = cfg.NumKeyValueLayers; j < cfg.NumHiddenLayers; j++)
            {
                var layer = _w.Layers[j];
                NormLinear(x2, kept, layer.InputLayernorm, layer.QkvOrQ, qDim, _ws.Qkv);
                PagedAttentionAndMlp(x2, kept, layer, qDim, keptPositions, new StepAttention(later, null, 0),
                    pool.Cache(cfg.KvCacheIndex(j, true)), "attention, layers l..L-1");
            }
            mLater = prof?.Mark(_stream) ?? -1;
            prof?.Span("layers l..L-1 (logits rows)", mKv, mLater);
        }
        else
        {
            if (!plan.KeptAreRows) _gatherRows!.Launch(_stream, x, rows, At(plan.Keep), kept, hidden, x2);
            mLater = mEarly;
        }
        NormLinear(x2, kept, _w.Norm, _w.LmHead, cfg.VocabSize, _ws.Logits);
        prof?.Span("norm+lm_head", mLater, prof.Mark(_stream));
    }

    /// <summary>
    /// The attention launches of one layer's step: <paramref name="First"/> over rows 0.., and, in a mixed step,
    /// <paramref name="Rest"/> over rows <paramref name="RestRow"/>.. (its query starts relative to that row).
    /// </summary>
    readonly record struct StepAttention(AttentionPagedBatch First, AttentionPagedBatch? Rest, int RestRow);

    /// <summary>
    /// SingleInputKV: K/V of every AcrossKV leader from norm_swiftkv(x_l), one GEMM per chunk of at most
    /// <see cref="SwiftKvChunkRows"/> rows (one GEMM for every step but the longest), written for every row.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    void WriteSwiftKv(DeviceSpan<float> x, int rows, DeviceSpan<int> positions, DeviceSpan<int> slots, CudaPagedKvCache pool)
    {
        var cfg = Config;
        int leaders = _w.SwiftKvLeaders.Length, kv = cfg.KeyValueDim, ld = leaders * 2 * kv, hidden = cfg.HiddenSize;
        _norm.Launch(_stream, x, null, _w.NormSwiftKv!, _ws.Normed, rows, hidden, _eps);
        int chunk = SwiftKvChunkRows;
        var all = _ws.SwiftKvFor(Math.Min(rows, chunk), chunk);
        // Chunks share one dequantized copy of e4m3 weights.
        var weights = rows > chunk ? ChunkWeights(_w.SwiftKvKv!) : default;
        for (int r0 = 0; r0 < rows; r0 += chunk)
        {
            int n = Math.Min(chunk, rows - r0);
            if (rows > chunk) LinearChunk(_ws.Normed.Span.Slice((long)r0 * hidden), n, hidden, _w.SwiftKvKv!, weights, ld, all);
            else Linear(_ws.Normed.Span.Slice((long)r0 * hidden), n, hidden, _w.SwiftKvKv!, ld, all);
            for (int g = 0; g < leaders; g++)
            {
                var (kb, vb) = _w.SwiftKvBiases[g];
                _pagedKvWrite!.Launch(_stream, all.Slice(g * 2 * kv), all.Slice(g * 2 * kv + kv), ld, kb?.Span, vb?.Span,
                    _w.InvFreq, positions.Slice(r0), slots.Slice(r0), n, pool.Cache(cfg.KvCacheIndex(_w.SwiftKvLeaders[g], true)));
            }
        }
    }

    /// <summary>
    /// The rest of a layer once Q sits in columns 0..q-1 of the Qkv workspace (row stride <paramref name="ld"/>) and
    /// the layer's K/V are cached: bias + RoPE on Q at each row's position (unless <paramref name="queryRotated"/>: the
    /// K/V write already did it), paged attention, o_proj added into x,
    /// o bias + post_attention_layernorm, SwiGLU MLP added into x. The solo path's projection dispatch (Linear,
    /// GateUpSilu: GEMV for decode-sized steps, cuBLAS above, the gated GEMM for [gate; up] of >= 256 rows on Hopper), so a
    /// batched row takes the same GEMM route as a solo one of the same row count.
    /// </summary>
    void PagedAttentionAndMlp(DeviceSpan<float> x, int rows, CudaLayerWeights layer, int ld, DeviceSpan<int> positions,
        StepAttention att, AttentionPagedCache cache, string phase, bool queryRotated = false)
    {
        var cfg = Config;
        int hidden = cfg.HiddenSize, qDim = cfg.QueryDim;
        var prof = StepProfiler;
        int m0 = prof?.Mark(_stream) ?? -1;
        if (!queryRotated) _ropeRows!.Launch(_stream, _ws.Qkv, ld, layer.QBias?.Span, _w.InvFreq, positions, rows, cfg.NumAttentionHeads, cfg.HeadDim);
        _attention.LaunchPaged(_stream, _ws.Qkv, ld, cache, att.First, _ws.Attn, qDim, cfg.NumAttentionHeads);
        if (att.Rest is { } rest)
            _attention.LaunchPaged(_stream, _ws.Qkv.Span.Slice((long)att.RestRow * ld), ld, cache, rest,
                _ws.Attn.Span.Slice((long)att.RestRow * qDim), qDim, cfg.NumAttentionHeads);
        prof?.Span(phase, m0, prof.Mark(_stream));
        Linear(_ws.Attn, rows, cfg.QueryDim, layer.O, hidden, x, accumulate: true);
        MlpAdd(x, rows, layer);
    }

    CudaPagedKvCache ValidateBatch(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch)
    {
        ArgumentNullException.ThrowIfNull(kv);
        if (kv is not CudaPagedKvCache pool || !ReferenceEquals(pool.Owner, this))
            throw new ArgumentException("the KV pool was not created by this backend (use CreatePagedKvCache of the same CudaBackend).", nameof(kv));
        pool.ThrowIfDisposed();
        StepValidation.Batch(Config, batch, pool);
        return pool;
    }

    void DisposeBatched()
    {
        _stepGraphs.Dispose();
        _batchScratch?.Dispose();
        _batchScratch = null;
    }

    /// <summary>
    /// Captured decode steps by (pool, padded shape), each valid for the workspace and scratch generation it baked.
    /// Graphs of a disposed pool or of older buffers go when the next one is stored (or the engine releases its
    /// workspace); past <see cref="MaxGraphs"/> the least recently replayed goes too (contexts that grew left their
    /// smaller table strides behind).
    /// </summary>
    sealed class StepGraphs : IDisposable
    {
        const int MaxGraphs = 64;
        readonly Dictionary<(CudaPagedKvCache Pool, DecodeShape Shape), Entry> _graphs = new();
        long _clock;

        sealed class Entry((int, int) generation, CudaGraph graph)
        {
            public (int, int) Generation { get; } = generation;
            public CudaGraph Graph { get; } = graph;
            public long LastUse { get; set; }
        }

        public long Captures { get; private set; }
        public long Replays { get; private set; }
        public int Count => _graphs.Count;

        public CudaGraph? Find(CudaPagedKvCache pool, DecodeShape shape, (int, int) generation)
        {
            if (!_graphs.TryGetValue((pool, shape), out var e) || e.Generation != generation) return null;
            e.LastUse = ++_clock;
            Replays++;
            return e.Graph;
        }

        public void Add(CudaPagedKvCache pool, DecodeShape shape, (int, int) generation, CudaGraph graph)
        {
            Drop(e => e.Key.Pool.IsDisposed || e.Value.Generation != generation || e.Key == (pool, shape));
            if (_graphs.Count >= MaxGraphs)
            {
                long oldest = _graphs.Values.Min(e => e.LastUse);
                Drop(e => e.Value.LastUse == oldest);
            }
            _graphs[(pool, shape)] = new Entry(generation, graph) { LastUse = ++_clock };
            Captures++;
        }

        /// <summary>Frees the graphs of pools that are gone.</summary>
        public void DropDisposedPools() => Drop(e => e.Key.Pool.IsDisposed);

        void Drop(Func<KeyValuePair<(CudaPagedKvCache Pool, DecodeShape Shape), Entry>, bool> which)
        {
            foreach (var e in _graphs.Where(which).ToArray())
            {
                e.Value.Graph.Dispose();
                _graphs.Remove(e.Key);
            }
        }

        public void Dispose()
        {
            foreach (var e in _graphs.Values) e.Graph.Dispose();
            _graphs.Clear();
        }
    }

    /// <summary>
    /// The host side of one step: every int array the kernels read, laid out back to back in one buffer.
    /// Sequences are taken in step order: batch order, or, when the step mixes single-token sequences with longer
    /// chunks and splitting is on, the single-token ones first (<see cref="SplitAt"/> of them, one row each), then
    /// the others, each group in batch order. Sequence s (step order) owns rows QueryStarts[s]..QueryStarts[s+1]-1.
    /// Kept rows (SwiftKV's later-layer batch and the lm_head rows) are the last row of each NeedsLogits sequence,
    /// in batch order, so logits and picked ids come back in batch order whatever the step order. In a decode-only
    /// step they are all the rows, in order (<see cref="KeptAreRows"/>), and get no arrays of their own.
    /// A padded plan (a <see cref="DecodeShape"/>) lays out that shape's sequences, rows and table stride whatever the
    /// batch's size, so every step of the shape has the same offsets; the sequences after the batch's have no rows,
    /// and their rows (token 0, position 0) a slot of -1.
    /// </summary>
    sealed class BatchPlan
    {
        readonly BatchSequence[] _batch;
        readonly int[] _order;
        readonly int _blockSize;

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public BatchPlan(ReadOnlySpan<BatchSequence> batch, int blockSize, bool split, DecodeShape? pad = null)
        {
            _batch = batch.ToArray();
            _blockSize = blockSize;
            int n = batch.Length, singles = 0;
            Sequences = n;
            foreach (var s in batch)
            {
                int len = s.Tokens.Length, ctx = s.StartPosition + len;
                Rows += len;
                if (len == 1) singles++;
                MaxQueryLength = Math.Max(MaxQueryLength, len);
                MaxContext = Math.Max(MaxContext, ctx);
                MaxBlocks = Math.Max(MaxBlocks, (ctx + blockSize - 1) / blockSize);
                if (s.NeedsLogits)
                {
                    Kept++;
                    MaxKeptContext = Math.Max(MaxKeptContext, ctx);
                }
            }
            _order = new int[n];
            if (pad is { } p)
            {
                Padded = true;
                Sequences = Rows = Kept = n = p.Sequences;
                MaxBlocks = p.Blocks;
                MaxContext = MaxKeptContext = p.Blocks * blockSize;
                split = false;
            }
            SplitAt = split && singles > 0 && singles < n ? singles : 0;
            if (SplitAt > 0)
            {
                int a = 0, b = singles;
                for (int i = 0; i < n; i++)
                {
                    int ctx = batch[i].StartPosition + batch[i].Tokens.Length;
                    if (batch[i].Tokens.Length == 1) { _order[a++] = i; MaxContextFirst = Math.Max(MaxContextFirst, ctx); }
                    else { _order[b++] = i; MaxContextRest = Math.Max(MaxContextRest, ctx); }
                }
            }
            else
            {
                for (int i = 0; i < _batch.Length; i++) _order[i] = i;
            }
            KeptAreRows = SplitAt == 0 && MaxQueryLength == 1 && Kept == Rows;
            int keptArrays = KeptAreRows ? 0 : Kept;
            int o = 0;
            (int, int) Next(int count) { var r = (o, count); o += Math.Max(count, 1); return r; }
            Ids = Next(Rows);
            Positions = Next(Rows);
            Slots = Next(Rows);
            QueryStarts = Next(n + 1);
            ContextLengths = Next(n);
            Tables = Next(n * MaxBlocks);
            RestQueryStarts = Next(SplitAt > 0 ? n - SplitAt + 1 : 0);
            Keep = Next(keptArrays);
            KeptPositions = Next(keptArrays);
            KeptQueryStarts = Next(KeptAreRows ? 0 : Kept + 1);
            KeptContextLengths = Next(keptArrays);
            KeptTables = Next(keptArrays * MaxBlocks);
            IntCount = o;
        }

        /// <summary>Sequences of the step's layout (the batch's, or the padded shape's).</summary>
        public int Sequences { get; }
        public bool Padded { get; }
        /// <summary>Every row is kept, in step order (a decode-only step): the later layers and lm_head take the rows as they are.</summary>
        public bool KeptAreRows { get; }
        public int Rows { get; }
        public int Kept { get; }
        public int MaxQueryLength { get; }
        public int MaxContext { get; }
        public int MaxKeptContext { get; }
        public int MaxBlocks { get; }
        /// <summary>Single-token sequences leading the step order when the step is split; 0 when it is not.</summary>
        public int SplitAt { get; }
        public int MaxContextFirst { get; }
        public int MaxContextRest { get; }
        public int IntCount { get; }
        public (int Offset, int Count) Ids { get; }
        public (int Offset, int Count) Positions { get; }
        public (int Offset, int Count) Slots { get; }
        public (int Offset, int Count) QueryStarts { get; }
        public (int Offset, int Count) ContextLengths { get; }
        public (int Offset, int Count) Tables { get; }
        /// <summary>Query starts of the sequences after <see cref="SplitAt"/>, relative to row SplitAt.</summary>
        public (int Offset, int Count) RestQueryStarts { get; }
        public (int Offset, int Count) Keep { get; }
        public (int Offset, int Count) KeptPositions { get; }
        public (int Offset, int Count) KeptQueryStarts { get; }
        public (int Offset, int Count) KeptContextLengths { get; }
        public (int Offset, int Count) KeptTables { get; }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Write(Span<int> a)
        {
            a.Clear();   // table padding: block 0 is a valid id the kernels never read past a sequence's context
            int r = 0, shift = System.Numerics.BitOperations.Log2((uint)_blockSize);
            Span<int> lastRow = _batch.Length <= 1024 ? stackalloc int[_batch.Length] : new int[_batch.Length];
            a[QueryStarts.Offset] = 0;
            for (int o = 0; o < _batch.Length; o++)
            {
                var seq = _batch[_order[o]];
                var tokens = seq.Tokens.Span;
                var table = seq.BlockTable.Span;
                int ctx = seq.StartPosition + tokens.Length, used = (ctx + _blockSize - 1) / _blockSize;
                for (int t = 0; t < tokens.Length; t++, r++)
                {
                    int p = seq.StartPosition + t;
                    a[Ids.Offset + r] = tokens[t];
                    a[Positions.Offset + r] = p;
                    a[Slots.Offset + r] = (table[p >> shift] << shift) + (p & (_blockSize - 1));
                }
                lastRow[_order[o]] = r - 1;
                a[QueryStarts.Offset + o + 1] = r;
                if (SplitAt > 0 && o >= SplitAt) a[RestQueryStarts.Offset + o - SplitAt + 1] = r - SplitAt;
                a[ContextLengths.Offset + o] = ctx;
                table[..used].CopyTo(a.Slice(Tables.Offset + o * MaxBlocks, used));
            }
            for (int o = _batch.Length; o < Sequences; o++, r++)
            {
                a[QueryStarts.Offset + o + 1] = _batch.Length;   // no rows: the attention skips the sequence
                a[Slots.Offset + r] = -1;                          // the K/V writes skip the row
            }
            if (KeptAreRows) return;
            a[KeptQueryStarts.Offset] = 0;
            for (int i = 0, k = 0; i < _batch.Length; i++)
            {
                var seq = _batch[i];
                if (!seq.NeedsLogits) continue;
                int ctx = seq.StartPosition + seq.Tokens.Length, used = (ctx + _blockSize - 1) / _blockSize;
                a[Keep.Offset + k] = lastRow[i];
                a[KeptPositions.Offset + k] = ctx - 1;
                a[KeptQueryStarts.Offset + k + 1] = k + 1;
                a[KeptContextLengths.Offset + k] = ctx;
                seq.BlockTable.Span[..used].CopyTo(a.Slice(KeptTables.Offset + k * MaxBlocks, used));
                k++;
            }
        }
    }

    /// <summary>Per-step buffers of the batched path, grown by doubling: the packed ints (device + pinned host), kept rows, picked ids.</summary>
    sealed class BatchScratch : IDisposable
    {
        int _ints, _kept, _hidden;
        /// <summary>Moves whenever the ints buffer is replaced (captured decode steps read it).</summary>
        public int Generation { get; private set; }
        public DeviceBuffer<int> Ints { get; private set; } = null!;
        public PinnedHostBuffer Host { get; private set; } = null!;
        public DeviceBuffer<float> X2 { get; private set; } = null!;
        public DeviceBuffer<int> Picked { get; private set; } = null!;
        /// <summary>ForwardBatchSample's picks, 4 words a row: (1 / temperature, top_p, u) floats for every row, then top_k ints.</summary>
        public PickStaging Sampling { get; } = new();
        /// <summary>The step's logit biases, 3 words an entry: (row, token) ints for every entry, then the float deltas.</summary>
        public PickStaging Biases { get; } = new();
        /// <summary>The step's masks: (count) row ints, then (count, vocab) allowed bytes.</summary>
        public PickStaging Masks { get; } = new();

        public void Ensure(int ints, int kept, int hidden)
        {
            // The sizes are recorded only once the buffers exist: an allocation that fails (out of memory) leaves sizes
            // of 0, so the next step allocates again instead of using the buffers disposed here.
            if (ints > _ints)
            {
                int n = Math.Max(ints, 2 * _ints);
                Generation++;
                Ints?.Dispose();
                Host?.Dispose();
                _ints = 0;
                Ints = new DeviceBuffer<int>(n);
                Host = new PinnedHostBuffer((long)n * sizeof(int));
                _ints = n;
            }
            if (kept > _kept || hidden != _hidden)
            {
                int n = Math.Max(kept, 2 * _kept);
                X2?.Dispose();   // decode graphs read neither X2 (their kept rows are the rows) nor Picked (argmax runs after)
                Picked?.Dispose();
                _kept = 0;
                X2 = new DeviceBuffer<float>((long)n * hidden);
                Picked = new DeviceBuffer<int>(n);
                _kept = n;
                _hidden = hidden;
            }
        }

        public void Dispose()
        {
            Ints?.Dispose();
            Host?.Dispose();
            X2?.Dispose();
            Picked?.Dispose();
            Sampling.Dispose();
            Biases.Dispose();
            Masks.Dispose();
        }
    }

    /// <summary>
    /// A pinned host buffer and the device buffer it is copied to, for what a step's picks upload (parameters, biases,
    /// masks): filled on the host after the step's previous use has synchronised, grown by doubling, never shrunk.
    /// </summary>
    sealed class PickStaging : IDisposable
    {
        PinnedHostBuffer? _host;
        DeviceBuffer<byte>? _device;
        long _bytes;

        /// <summary>The host side, at least <paramref name="bytes"/> long.</summary>
        public PinnedHostBuffer Ensure(long bytes)
        {
            if (bytes > _bytes)
            {
                long n = Math.Max(bytes, 2 * _bytes);
                _device?.Dispose();
                _host?.Dispose();
                _bytes = 0;   // recorded only once both exist (an allocation that fails leaves 0: the next call retries)
                _device = new DeviceBuffer<byte>(n);
                _host = new PinnedHostBuffer(n);
                _bytes = n;
            }
            return _host!;
        }

        /// <summary>Queues the copy of the first <paramref name="bytes"/> to the device and returns the device address.</summary>
        public unsafe ulong Upload(CudaStream stream, long bytes)
        {
            ulong d = _device!.Span.Address;
            stream.CopyBytesAsync(d, (void*)_host!.Pointer, bytes);
            return d;
        }

        public void Dispose()
        {
            _device?.Dispose();
            _host?.Dispose();
        }
    }
}
