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
// Rows are not bit-identical to Forward: cuBLAS may pick another GEMM algorithm for another row count, and the paged
// attention kernel splits keys differently from the contiguous one; both stay within bf16 rounding (tests).
using SwiftKV.Cuda;
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Serving;

namespace SwiftKV.Engine.Cuda;

public sealed partial class CudaBackend : IGreedyBatchedBackend
{
    BatchScratch? _batchScratch;
    RopeRowsKernel? _ropeRows;
    GatherRowsKernel? _gatherRows;
    AttentionKvWriteKernel? _pagedKvWrite;

    /// <summary>Paged attention runs the flash kernels only: head_dim 64 or 128 on sm_80 or newer.</summary>
    public bool SupportsBatchedStep => Config.HeadDim is 64 or 128 && Device.ComputeMajor >= 8;

    /// <inheritdoc />
    /// <remarks>bf16 keys and values of every distinct cache: AcrossKV's fewer caches shrink it.</remarks>
    public long KvBytesPerToken => 2L * Config.NumKvCaches(SwiftKvEnabled) * Config.KeyValueDim * 2;

    /// <inheritdoc />
    /// <exception cref="ArgumentException">The block size is not a power of two (the attention kernels shift by it).</exception>
    /// <exception cref="NotSupportedException">This model's head_dim has no paged attention kernel (<see cref="SupportsBatchedStep"/>).</exception>
    public IPagedKvCache CreatePagedKvCache(int numBlocks, int blockSize)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numBlocks);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        if (!System.Numerics.BitOperations.IsPow2(blockSize))
            throw new ArgumentException($"the CUDA paged KV cache needs a power-of-two block size (got {blockSize}).", nameof(blockSize));
        if (!SupportsBatchedStep)
            throw new NotSupportedException($"the CUDA batched step needs head_dim 64 or 128 on sm_80+ (this model: head_dim {Config.HeadDim}, {Device.Arch}).");
        return new CudaPagedKvCache(this, Config.NumKvCaches(SwiftKvEnabled), numBlocks, blockSize, Config.NumKeyValueHeads, Config.HeadDim);
    }

    /// <inheritdoc />
    public float[] ForwardBatch(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch)
    {
        int rows = EncodeBatch(kv, batch);
        var logits = new float[(long)rows * Config.VocabSize];
        if (rows > 0) _stream.Download(_ws.Logits.Span.Slice(0, logits.Length), logits);
        else _stream.Synchronize();
        return logits;
    }

    /// <inheritdoc />
    public unsafe int[] ForwardBatchGreedy(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch)
    {
        int rows = EncodeBatch(kv, batch);
        var ids = new int[rows];
        if (rows == 0)
        {
            _stream.Synchronize();
            return ids;
        }
        var s = _batchScratch!;
        _argmax.Launch(_stream, _ws.Logits.Span, rows, Config.VocabSize, s.Picked.Span);
        _stream.Download(s.Picked.Span.Slice(0, rows), ids);
        return ids;
    }

    /// <summary>Queues one batched step; leaves the kept rows' logits at the start of the Logits workspace and returns their count.</summary>
    unsafe int EncodeBatch(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var pool = ValidateBatch(kv, batch);
        var cfg = Config;
        int hidden = cfg.HiddenSize, qDim = cfg.QueryDim, kvDim = cfg.KeyValueDim;
        _ropeRows ??= new RopeRowsKernel(_kernels);
        _gatherRows ??= new GatherRowsKernel(_kernels);
        _pagedKvWrite ??= new AttentionKvWriteKernel(_kernels);

        var plan = new BatchPlan(batch, pool.BlockSize);
        int rows = plan.Rows, kept = plan.Kept;
        _stream.Synchronize();   // the pinned staging of the previous step may still be in flight after a failure
        _ws.Ensure(rows, Math.Max(kept, 1));
        var s = _batchScratch ??= new BatchScratch();
        s.Ensure(plan.IntCount, Math.Max(kept, 1), hidden);
        plan.Write(s.Host.AsSpan<int>(plan.IntCount));
        _stream.CopyAsync(s.Ints.Span, (int*)s.Host.Pointer, plan.IntCount);
        var d = s.Ints.Span;
        DeviceSpan<int> At((int Offset, int Count) r) => d.Slice(r.Offset, Math.Max(r.Count, 1));
        var ids = At(plan.Ids);
        var positions = At(plan.Positions);
        var slots = At(plan.Slots);
        var all = new AttentionPagedBatch(At(plan.QueryStarts), At(plan.ContextLengths), At(plan.Tables), plan.MaxBlocks,
            batch.Length, rows, plan.MaxQueryLength, plan.MaxContext);

        _embed.Launch(_stream, ids, _w.Embed, cfg.VocabSize, _ws.X, rows, hidden);
        var x = _ws.X.Span;
        int ldFull = qDim + 2 * kvDim;
        for (int i = 0; i < FullLayers; i++)
        {
            var layer = _w.Layers[i];
            _norm.Launch(_stream, x, null, layer.InputLayernorm, _ws.Normed, rows, hidden, _eps);
            Linear(_ws.Normed, rows, hidden, layer.QkvOrQ, ldFull, _ws.Qkv);
            var qkv = _ws.Qkv.Span;
            _pagedKvWrite.Launch(_stream, qkv.Slice(qDim), qkv.Slice(qDim + kvDim), ldFull, layer.KBias?.Span, layer.VBias?.Span,
                _w.InvFreq, positions, slots, rows, pool.Cache(i));
            PagedAttentionAndMlp(x, rows, layer, ldFull, positions, all, pool.Cache(i));
        }

        if (kept == 0)
        {
            // Every chunk stops short of its known end: later-layer K/V still has to be written.
            if (SwiftKvEnabled) WriteSwiftKv(x, rows, positions, slots, pool);
            return 0;
        }
        var keepIdx = At(plan.Keep);
        var x2 = s.X2.Span.Slice(0, (long)kept * hidden);
        if (SwiftKvEnabled)
        {
            WriteSwiftKv(x, rows, positions, slots, pool);
            // The SwiftKV saving: only the rows someone samples from go on, one per sequence.
            _gatherRows.Launch(_stream, x, rows, keepIdx, kept, hidden, x2);
            var later = new AttentionPagedBatch(At(plan.KeptQueryStarts), At(plan.KeptContextLengths), At(plan.KeptTables), plan.MaxBlocks,
                kept, kept, 1, plan.MaxKeptContext);
            var keptPositions = At(plan.KeptPositions);
            for (int j = cfg.NumKeyValueLayers; j < cfg.NumHiddenLayers; j++)
            {
                var layer = _w.Layers[j];
                _norm.Launch(_stream, x2, null, layer.InputLayernorm, _ws.Normed, kept, hidden, _eps);
                Linear(_ws.Normed, kept, hidden, layer.QkvOrQ, qDim, _ws.Qkv);
                PagedAttentionAndMlp(x2, kept, layer, qDim, keptPositions, later, pool.Cache(cfg.KvCacheIndex(j, true)));
            }
        }
        else
        {
            _gatherRows.Launch(_stream, x, rows, keepIdx, kept, hidden, x2);
        }
        _norm.Launch(_stream, x2, null, _w.Norm, _ws.Normed, kept, hidden, _eps);
        Linear(_ws.Normed, kept, hidden, _w.LmHead, cfg.VocabSize, _ws.Logits);
        return kept;
    }

    /// <summary>SingleInputKV: K/V of every AcrossKV leader from norm_swiftkv(x_l), one GEMM, written for every row.</summary>
    void WriteSwiftKv(DeviceSpan<float> x, int rows, DeviceSpan<int> positions, DeviceSpan<int> slots, CudaPagedKvCache pool)
    {
        var cfg = Config;
        int leaders = _w.SwiftKvLeaders.Length, kv = cfg.KeyValueDim, ld = leaders * 2 * kv;
        _norm.Launch(_stream, x, null, _w.NormSwiftKv!, _ws.Normed, rows, cfg.HiddenSize, _eps);
        Linear(_ws.Normed, rows, cfg.HiddenSize, _w.SwiftKvKv!, ld, _ws.SwiftKv);
        var all = _ws.SwiftKv.Span;
        for (int g = 0; g < leaders; g++)
        {
            var (kb, vb) = _w.SwiftKvBiases[g];
            _pagedKvWrite!.Launch(_stream, all.Slice(g * 2 * kv), all.Slice(g * 2 * kv + kv), ld, kb?.Span, vb?.Span,
                _w.InvFreq, positions, slots, rows, pool.Cache(cfg.KvCacheIndex(_w.SwiftKvLeaders[g], true)));
        }
    }

    /// <summary>
    /// The rest of a layer once Q sits in columns 0..q-1 of the Qkv workspace (row stride <paramref name="ld"/>) and
    /// the layer's K/V are cached: bias + RoPE on Q at each row's position, paged attention, o_proj added into x,
    /// o bias + post_attention_layernorm, SwiGLU MLP added into x. The solo path's projection dispatch (Linear,
    /// GateUpSilu: GEMV for decode-sized steps, cuBLAS above), so a batched row takes the same GEMM route as a solo one of the same row count.
    /// </summary>
    void PagedAttentionAndMlp(DeviceSpan<float> x, int rows, CudaLayerWeights layer, int ld, DeviceSpan<int> positions,
        AttentionPagedBatch batch, AttentionPagedCache cache)
    {
        var cfg = Config;
        int hidden = cfg.HiddenSize, inter = cfg.IntermediateSize;
        _ropeRows!.Launch(_stream, _ws.Qkv, ld, layer.QBias?.Span, _w.InvFreq, positions, rows, cfg.NumAttentionHeads, cfg.HeadDim);
        _attention.LaunchPaged(_stream, _ws.Qkv, ld, cache, batch, _ws.Attn, cfg.QueryDim, cfg.NumAttentionHeads);
        Linear(_ws.Attn, rows, cfg.QueryDim, layer.O, hidden, x, accumulate: true);
        _norm.Launch(_stream, x, layer.OBias?.Span, layer.PostAttentionLayernorm, _ws.Normed, rows, hidden, _eps);
        GateUpSilu(_ws.Normed, rows, layer);
        Linear(_ws.Mlp, rows, inter, layer.Down, hidden, x, accumulate: true);
    }

    CudaPagedKvCache ValidateBatch(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch)
    {
        ArgumentNullException.ThrowIfNull(kv);
        if (kv is not CudaPagedKvCache pool || !ReferenceEquals(pool.Owner, this))
            throw new ArgumentException("the KV pool was not created by this backend (use CreatePagedKvCache of the same CudaBackend).", nameof(kv));
        pool.ThrowIfDisposed();
        if (batch.IsEmpty) throw new ArgumentException("a batched step needs at least one sequence.", nameof(batch));
        for (int i = 0; i < batch.Length; i++)
        {
            var s = batch[i];
            if (s.Tokens.IsEmpty) throw new ArgumentException($"sequence {i} of the batch has no tokens.", nameof(batch));
            if (s.StartPosition < 0) throw new ArgumentException($"sequence {i}: StartPosition {s.StartPosition} is negative.", nameof(batch));
            var tokens = s.Tokens.Span;
            for (int t = 0; t < tokens.Length; t++)
                if ((uint)tokens[t] >= (uint)Config.VocabSize)
                    throw new ArgumentException($"sequence {i}: token id {tokens[t]} at index {t} is outside the vocabulary [0, {Config.VocabSize}).", nameof(batch));
            long end = (long)s.StartPosition + tokens.Length;
            if (end > Config.MaxPositionEmbeddings)
                throw new ArgumentException($"sequence {i}: positions up to {end - 1} exceed max_position_embeddings {Config.MaxPositionEmbeddings}.", nameof(batch));
            if (end > (long)s.BlockTable.Length * pool.BlockSize)
                throw new ArgumentException(
                    $"sequence {i}: its block table has {s.BlockTable.Length} blocks ({(long)s.BlockTable.Length * pool.BlockSize} positions) but the step reaches position {end - 1}.", nameof(batch));
            var table = s.BlockTable.Span;
            for (int b = 0; b < table.Length; b++)
                if ((uint)table[b] >= (uint)pool.NumBlocks)
                    throw new ArgumentException($"sequence {i}: block id {table[b]} at table index {b} is outside the pool [0, {pool.NumBlocks}).", nameof(batch));
        }
        return pool;
    }

    void DisposeBatched()
    {
        _batchScratch?.Dispose();
        _batchScratch = null;
    }

    /// <summary>
    /// The host side of one step: every int array the kernels read, laid out back to back in one buffer.
    /// Rows are the sequences' tokens in batch order; sequence s's rows are QueryStarts[s]..QueryStarts[s+1]-1.
    /// Kept rows (SwiftKV's later-layer batch and the lm_head rows) are the last row of each NeedsLogits sequence.
    /// </summary>
    sealed class BatchPlan
    {
        readonly BatchSequence[] _batch;
        readonly int _blockSize;

        public BatchPlan(ReadOnlySpan<BatchSequence> batch, int blockSize)
        {
            _batch = batch.ToArray();
            _blockSize = blockSize;
            foreach (var s in batch)
            {
                int len = s.Tokens.Length, ctx = s.StartPosition + len;
                Rows += len;
                MaxQueryLength = Math.Max(MaxQueryLength, len);
                MaxContext = Math.Max(MaxContext, ctx);
                MaxBlocks = Math.Max(MaxBlocks, (ctx + blockSize - 1) / blockSize);
                if (s.NeedsLogits)
                {
                    Kept++;
                    MaxKeptContext = Math.Max(MaxKeptContext, ctx);
                }
            }
            int n = batch.Length, o = 0;
            (int, int) Next(int count) { var r = (o, count); o += Math.Max(count, 1); return r; }
            Ids = Next(Rows);
            Positions = Next(Rows);
            Slots = Next(Rows);
            QueryStarts = Next(n + 1);
            ContextLengths = Next(n);
            Tables = Next(n * MaxBlocks);
            Keep = Next(Kept);
            KeptPositions = Next(Kept);
            KeptQueryStarts = Next(Kept + 1);
            KeptContextLengths = Next(Kept);
            KeptTables = Next(Kept * MaxBlocks);
            IntCount = o;
        }

        public int Rows { get; }
        public int Kept { get; }
        public int MaxQueryLength { get; }
        public int MaxContext { get; }
        public int MaxKeptContext { get; }
        public int MaxBlocks { get; }
        public int IntCount { get; }
        public (int Offset, int Count) Ids { get; }
        public (int Offset, int Count) Positions { get; }
        public (int Offset, int Count) Slots { get; }
        public (int Offset, int Count) QueryStarts { get; }
        public (int Offset, int Count) ContextLengths { get; }
        public (int Offset, int Count) Tables { get; }
        public (int Offset, int Count) Keep { get; }
        public (int Offset, int Count) KeptPositions { get; }
        public (int Offset, int Count) KeptQueryStarts { get; }
        public (int Offset, int Count) KeptContextLengths { get; }
        public (int Offset, int Count) KeptTables { get; }

        public void Write(Span<int> a)
        {
            a.Clear();   // table padding: block 0 is a valid id the kernels never read past a sequence's context
            int r = 0, k = 0, shift = System.Numerics.BitOperations.Log2((uint)_blockSize);
            a[QueryStarts.Offset] = 0;
            a[KeptQueryStarts.Offset] = 0;
            for (int s = 0; s < _batch.Length; s++)
            {
                var seq = _batch[s];
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
                a[QueryStarts.Offset + s + 1] = r;
                a[ContextLengths.Offset + s] = ctx;
                table[..used].CopyTo(a.Slice(Tables.Offset + s * MaxBlocks, used));
                if (!seq.NeedsLogits) continue;
                a[Keep.Offset + k] = r - 1;
                a[KeptPositions.Offset + k] = ctx - 1;
                a[KeptQueryStarts.Offset + k + 1] = k + 1;
                a[KeptContextLengths.Offset + k] = ctx;
                table[..used].CopyTo(a.Slice(KeptTables.Offset + k * MaxBlocks, used));
                k++;
            }
        }
    }

    /// <summary>Per-step buffers of the batched path, grown by doubling: the packed ints (device + pinned host), kept rows, picked ids.</summary>
    sealed class BatchScratch : IDisposable
    {
        int _ints, _kept, _hidden;
        public DeviceBuffer<int> Ints { get; private set; } = null!;
        public PinnedHostBuffer Host { get; private set; } = null!;
        public DeviceBuffer<float> X2 { get; private set; } = null!;
        public DeviceBuffer<int> Picked { get; private set; } = null!;

        public void Ensure(int ints, int kept, int hidden)
        {
            if (ints > _ints)
            {
                Ints?.Dispose();
                Host?.Dispose();
                _ints = Math.Max(ints, 2 * _ints);
                Ints = new DeviceBuffer<int>(_ints);
                Host = new PinnedHostBuffer((long)_ints * sizeof(int));
            }
            if (kept > _kept || hidden != _hidden)
            {
                X2?.Dispose();
                Picked?.Dispose();
                _kept = Math.Max(kept, 2 * _kept);
                _hidden = hidden;
                X2 = new DeviceBuffer<float>((long)_kept * hidden);
                Picked = new DeviceBuffer<int>(_kept);
            }
        }

        public void Dispose()
        {
            Ints?.Dispose();
            Host?.Dispose();
            X2?.Dispose();
            Picked?.Dispose();
        }
    }
}
