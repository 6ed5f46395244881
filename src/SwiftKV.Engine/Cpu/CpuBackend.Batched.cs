// The batched, paged step of the CPU backend (IBatchedBackend). All sequences' new tokens are concatenated into
// one (num_tokens, hidden_size) activation, so every linear layer reads its weights once per step; attention runs
// per row over that row's own sequence's blocks.
//   embed -> layers 0..l-1 over every row
//         -> SwiftKV: K/V of every later cache from norm_swiftkv(x_l) for every row; then only the rows whose
//            logits are wanted (one per sequence with NeedsLogits: its chunk's last token) run layers l..L-1
//         -> model.norm -> lm_head for those rows.
// Every kernel is row-independent (CpuKernels' note), so a sequence's logits are bit-identical to running it alone
// through Forward, however it was chunked and whatever shared the batch.
using SwiftKV.Engine.Sampling;
using SwiftKV.Engine.Serving;
using SwiftKV.Model;

namespace SwiftKV.Engine.Cpu;

public sealed partial class CpuBackend : IGreedyBatchedBackend
{
    /// <inheritdoc />
    /// <remarks>On the CPU the logits are already on the host: this is ForwardBatch plus Sampler.Greedy per row.</remarks>
    public int[] ForwardBatchGreedy(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch)
    {
        var logits = ForwardBatch(kv, batch);
        int vocab = Config.VocabSize;
        var ids = new int[logits.Length / vocab];
        for (int i = 0; i < ids.Length; i++) ids[i] = Sampling.Sampler.GreedyOrNone(logits.AsSpan(i * vocab, vocab));
        return ids;
    }

    /// <inheritdoc />
    /// <remarks>The step's logits, then <see cref="RowSampling.Pick"/> per row (the GPU sampler's rule on the CPU, mask and bias included).</remarks>
    public int[] ForwardBatchSample(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch, ReadOnlySpan<RowSampling> sampling)
    {
        StepValidation.Sampling(Config, batch, sampling);
        var logits = ForwardBatch(kv, batch);
        int vocab = Config.VocabSize;
        var ids = new int[sampling.Length];
        for (int i = 0; i < ids.Length; i++) ids[i] = RowSampling.Pick(logits.AsSpan(i * vocab, vocab), sampling[i]);
        return ids;
    }

    /// <inheritdoc />
    public long KvBytesPerToken => 2L * Config.NumKvCaches(SwiftKvEnabled) * Config.KeyValueDim * sizeof(float);

    /// <inheritdoc />
    public IPagedKvCache CreatePagedKvCache(int numBlocks, int blockSize)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numBlocks);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        CheckKvFits((long)numBlocks * blockSize, $"a KV pool of {numBlocks} blocks x {blockSize} tokens", "lower KvCacheBytes");
        return new CpuPagedKvCache(this, Config.NumKvCaches(SwiftKvEnabled), numBlocks, blockSize, Config.KeyValueDim);
    }

    /// <inheritdoc />
    public float[] ForwardBatch(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var pool = ValidateBatch(kv, batch);
        var cfg = Config;
        int hidden = cfg.HiddenSize;

        int rows = 0;
        foreach (var s in batch) rows += s.Tokens.Length;
        var x = new float[(long)rows * hidden];
        var positions = new int[rows];
        var tables = new ReadOnlyMemory<int>[rows];
        var keep = new List<int>();
        int r = 0;
        foreach (var s in batch)
        {
            var tokens = s.Tokens.Span;
            for (int t = 0; t < tokens.Length; t++, r++)
            {
                Array.Copy(_w.EmbedTokens, (long)tokens[t] * hidden, x, (long)r * hidden, hidden);
                positions[r] = s.StartPosition + t;
                tables[r] = s.BlockTable;
            }
            if (s.NeedsLogits) keep.Add(r - 1);
        }

        for (int i = 0; i < FullLayers; i++)
        {
            var layer = _w.Layers[i];
            var h = Norm(x, rows, layer.InputLayernorm);
            WriteKvPaged(h, rows, positions, tables, layer.KProj!, layer.KBias, layer.VProj!, layer.VBias, pool, i);
            AttentionAndMlpPaged(x, rows, positions, tables, layer, h, layer.QProj!, layer.QBias, pool, i);
        }

        if (SwiftKvEnabled)
        {
            var s = Norm(x, rows, _w.NormSwiftKv!);
            for (int j = cfg.NumKeyValueLayers; j < cfg.NumHiddenLayers; j++)
            {
                if (!cfg.IsKvGroupLeader(j)) continue;
                var layer = _w.Layers[j];
                WriteKvPaged(s, rows, positions, tables, layer.KProjSwiftKv!, layer.KBiasSwiftKv, layer.VProjSwiftKv!,
                    layer.VBiasSwiftKv, pool, cfg.KvCacheIndex(j, true));
            }
            // The SwiftKV saving: the later-layer batch is only the rows someone samples from.
            (x, positions, tables) = SelectRows(x, positions, tables, keep);
            rows = keep.Count;
            for (int j = cfg.NumKeyValueLayers; j < cfg.NumHiddenLayers && rows > 0; j++)
            {
                var layer = _w.Layers[j];
                var h = Norm(x, rows, layer.InputLayernorm);
                AttentionAndMlpPaged(x, rows, positions, tables, layer, h, layer.QProjSwiftKv!, layer.QBiasSwiftKv, pool,
                    cfg.KvCacheIndex(j, true));
            }
        }
        else
        {
            (x, _, _) = SelectRows(x, positions, tables, keep);
            rows = keep.Count;
        }

        var logits = new float[(long)rows * cfg.VocabSize];
        if (rows == 0) return logits;
        var final = Norm(x, rows, _w.Norm);
        CpuKernels.Linear(final, rows, hidden, _w.LmHead, null, cfg.VocabSize, logits);
        return logits;
    }

    (float[] X, int[] Positions, ReadOnlyMemory<int>[] Tables) SelectRows(float[] x, int[] positions, ReadOnlyMemory<int>[] tables, List<int> keep)
    {
        int hidden = Config.HiddenSize;
        var x2 = new float[(long)keep.Count * hidden];
        var p2 = new int[keep.Count];
        var t2 = new ReadOnlyMemory<int>[keep.Count];
        for (int i = 0; i < keep.Count; i++)
        {
            Array.Copy(x, (long)keep[i] * hidden, x2, (long)i * hidden, hidden);
            p2[i] = positions[keep[i]];
            t2[i] = tables[keep[i]];
        }
        return (x2, p2, t2);
    }

    CpuPagedKvCache ValidateBatch(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch)
    {
        ArgumentNullException.ThrowIfNull(kv);
        if (kv is not CpuPagedKvCache pool || !ReferenceEquals(pool.Owner, this))
            throw new ArgumentException("the KV pool was not created by this backend (use CreatePagedKvCache of the same CpuBackend).", nameof(kv));
        pool.ThrowIfDisposed();
        StepValidation.Batch(Config, batch, pool);
        return pool;
    }

    /// <summary>K = RoPE(h·Wkᵀ + bk), V = h·Wvᵀ + bv for every row, written to each row's block slot of one cache.</summary>
    void WriteKvPaged(float[] h, int rows, int[] positions, ReadOnlyMemory<int>[] tables,
        float[] kW, float[]? kB, float[] vW, float[]? vB, CpuPagedKvCache pool, int cacheIndex)
    {
        int kvDim = Config.KeyValueDim, hidden = Config.HiddenSize, bs = pool.BlockSize;
        var k = new float[rows * kvDim];
        var v = new float[rows * kvDim];
        CpuKernels.Linear(LinearInput(h, rows, hidden, kW), rows, hidden, kW, kB, kvDim, k);
        CpuKernels.Linear(LinearInput(h, rows, hidden, vW), rows, hidden, vW, vB, kvDim, v);
        var keys = pool.Keys(cacheIndex);
        var values = pool.Values(cacheIndex);
        _rope.RotateRows(k, Config.NumKeyValueHeads, positions);
        for (int t = 0; t < rows; t++)
        {
            int p = positions[t];
            long slot = ((long)tables[t].Span[p / bs] * bs + p % bs) * kvDim;
            Array.Copy(k, (long)t * kvDim, keys, slot, kvDim);
            Array.Copy(v, (long)t * kvDim, values, slot, kvDim);
        }
    }

    /// <summary>Q = RoPE(h·Wqᵀ + bq), paged attention over one cache, then o_proj and the MLP with residuals.</summary>
    void AttentionAndMlpPaged(float[] x, int rows, int[] positions, ReadOnlyMemory<int>[] tables, LlamaLayerWeights layer,
        float[] h, float[] qW, float[]? qB, CpuPagedKvCache pool, int cacheIndex)
    {
        var cfg = Config;
        int qDim = cfg.QueryDim;
        var q = new float[rows * qDim];
        CpuKernels.Linear(LinearInput(h, rows, cfg.HiddenSize, qW), rows, cfg.HiddenSize, qW, qB, qDim, q);
        _rope.RotateRows(q, cfg.NumAttentionHeads, positions);
        var attn = new float[rows * qDim];
        PagedAttention.Run(q, rows, positions, tables, pool.BlockSize, cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim,
            pool.Keys(cacheIndex), pool.Values(cacheIndex), attn);
        OutputAndMlp(x, rows, layer, attn);
    }
}
