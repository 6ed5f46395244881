// Paged, varlen launch of the flash kernels (native-kernels/attention_flash.cu, flash_attn_paged_*; on sm_90a the
// wgmma kernel of attention_hopper.cu for prefill-sized steps) for the serving
// engine's batched step: prefill chunks and decode tokens of many sequences in one launch, K/V read through each
// sequence's block table. Everything that varies per step lives in device arrays (AttentionPagedBatch), so a CUDA
// graph captured with fixed bounds replays it; split-K (for decode) is chosen from the bounds only.
namespace SwiftKV.Cuda.Kernels;

public sealed unsafe partial class AttentionKernel
{
    /// <summary>Most sequences one paged launch takes: its grid's y dimension is sequences x KV heads.</summary>
    public static int MaxPagedSequences(int kvHeads) => MaxGridY / Math.Max(1, kvHeads);

    /// <summary>
    /// Causal GQA attention of a varlen batch over a paged cache. q (total_tokens, ldq) fp32 rotated queries, row
    /// order as <see cref="AttentionPagedBatch.QueryStarts"/>; output (total_tokens, ldo) bf16, heads · head_dim
    /// columns written per row of a real sequence. Each row sees its sequence's positions 0..its own. An fp8 cache
    /// (<see cref="AttentionPagedCache.Fp8"/>) runs the flash_attn_paged_fp8_* entries: same shapes, e4m3 tiles
    /// converted to bf16 in shared memory, per-key scales applied to S and P. With split-K the last CTA of each
    /// (sequence, KV head, row tile) merges the splits (no combine launch). Decode-sized launches go programmatically,
    /// like the row kernels before them (the flash entries read nothing before their wait).
    /// </summary>
    public void LaunchPaged(CudaStream stream, DeviceSpan<float> q, int ldq, AttentionPagedCache cache, AttentionPagedBatch batch,
        DeviceSpan<Bf16> output, int ldo, int heads)
    {
        const string n = "paged attention";
        cache.Check(n);
        batch.Check(n, cache.BlockSize);
        int kvHeads = cache.KvHeads, headDim = cache.HeadDim;
        CheckHeads(n, heads, kvHeads, headDim);
        long row = (long)heads * headDim;
        if (ldq < row) throw new ArgumentOutOfRangeException(nameof(ldq), ldq, $"{n}: q row stride must be >= heads * head_dim ({row}).");
        if (ldo < row) throw new ArgumentOutOfRangeException(nameof(ldo), ldo, $"{n}: output row stride must be >= heads * head_dim ({row}).");
        KernelGuard.Fits(q, (long)(batch.TotalTokens - 1) * ldq + row, n, nameof(q), $"({batch.TotalTokens}, {ldq})");
        KernelGuard.Fits(output, (long)(batch.TotalTokens - 1) * ldo + row, n, nameof(output), $"({batch.TotalTokens}, {ldo})");
        if (!System.Numerics.BitOperations.IsPow2(cache.BlockSize))
            throw new ArgumentException($"{n}: block size must be a power of two (got {cache.BlockSize}).", nameof(cache));
        if (!FlashApplies(headDim))
            throw new ArgumentException($"{n}: needs head_dim 64 or 128 on sm_80+ (got head_dim {headDim}, {CudaRuntime.Device.Arch}).", nameof(cache));
        if (batch.Sequences > MaxPagedSequences(kvHeads))
            throw new ArgumentOutOfRangeException(nameof(batch), $"{n}: {batch.Sequences} sequences x {kvHeads} KV heads exceed the grid's {MaxGridY}.");

        int group = heads / kvHeads;
        bool fp8 = cache.Fp8 is not null;
        if (ldo % 2 != 0) throw new ArgumentException($"{n}: the output row stride must be even (bf16 pairs are stored as 4-byte words; got {ldo}).", nameof(ldo));
        if (cache.Fp8 is { } pool)
        {
            if (pool.Keys.Address % 16 != 0 || pool.Values.Address % 16 != 0 || pool.KeyScales.Address % 4 != 0 || pool.ValueScales.Address % 4 != 0)
                throw new ArgumentException($"{n}: the fp8 pool must start on 16-byte boundaries and its scales on 4-byte ones.", nameof(cache));
            if (output.Address % 4 != 0) throw new ArgumentException($"{n}: the output must start on a 4-byte boundary.", nameof(output));
        }
        else CheckTensorCoreAlignment(n, cache.Keys.Address, cache.Values.Address, 0, output.Address, 0, 1);
        string? notHopper;
        bool hopperOk = HopperApplies(q, ldq, 0, 1, headDim, out notHopper);
        var path = Path != AttentionPath.Auto ? Path
            : hopperOk && HopperPays(batch.Sequences, batch.MaxQueryLength, heads, kvHeads) ? AttentionPath.Hopper
            : AutoFlash((long)batch.MaxQueryLength * group);
        if (path == AttentionPath.Hopper)
        {
            if (!hopperOk) throw new ArgumentException($"{n}: the wgmma kernel cannot run this launch: {notHopper}.", nameof(Path));
            LaunchHopperPaged(stream, q, ldq, cache, batch, output, ldo, heads);
            return;
        }
        if (path is AttentionPath.Simple or AttentionPath.Flash8Warps)
            throw new ArgumentException($"{n}: no paged instance of {path}; use Auto, Hopper, Flash4Warps, Flash4Warps32Rows or Flash4Warps32RowsKeys32.", nameof(Path));
        var shape = ShapeOf(path);
        string entry = (fp8 ? "flash_attn_paged_fp8_" : "flash_attn_paged_") + shape.Suffix(headDim);
        // fp8: two staging areas of [K bytes][V bytes][K scales][V scales] after the bf16 tiles, then the two converted
        // tiles' scales (FaShape::FP8_EXTRA_BYTES).
        int shared = shape.SharedBytes(headDim) + (fp8 ? 2 * (2 * shape.Keys * headDim + 8 * shape.Keys) + 16 * shape.Keys : 0);
        var k = Kernel(entry, shared);
        int mTiles = (int)(((long)batch.MaxQueryLength * group + shape.RowsPerCta - 1) / shape.RowsPerCta);
        // Decode-only launches split for one CTA per SM, as the single-sequence decode does (measured best there:
        // AttentionKernel.DecodeSplits); launches with longer rows keep two per SM.
        long ctas = (long)mTiles * kvHeads * batch.Sequences;
        int ctasPerSm = batch.MaxQueryLength == 1 ? 1 : 2;
        var (splits, keysPerSplit) = batch.SplitKeysOnDevice ? (SplitsByCtas(ctas, batch.MaxContextLength, shape.Keys, ctasPerSm), 0)
            : SplitKeys(ctas, batch.MaxContextLength, shape.Keys, ctasPerSm);
        if (splits == 1) keysPerSplit = int.MaxValue / 2;

        int total = batch.TotalTokens, seqs = batch.Sequences, maxBlocks = batch.MaxBlocksPerSequence, blockShift = System.Numerics.BitOperations.Log2((uint)cache.BlockSize);
        ulong pq = q.Address, pk = cache.Keys.Address, pv = cache.Values.Address, pt = batch.BlockTables.Address,
            pcu = batch.QueryStarts.Address, pctx = batch.ContextLengths.Address, po = output.Address, ppo = 0, plse = 0, pc = 0;
        if (splits > 1)
        {
            long partRows = (long)splits * total * heads;
            _partO = Grow(_partO, partRows * headDim);
            _partLse = Grow(_partLse, partRows);
            _counters = GrowCounters(stream, _counters, (long)mTiles * seqs * kvHeads);
            ppo = _partO.Address;
            plse = _partLse.Address;
            pc = _counters.Address;
        }
        float scaleLog2 = (float)(1.0 / Math.Sqrt(headDim)) * Log2E;
        var grid = ((uint)mTiles, (uint)(seqs * kvHeads), (uint)splits);
        bool pdl = RowGrid.ProgrammaticFor(batch.TotalTokens) && library.ProgrammaticLaunch;
        if (cache.Fp8 is { } f)
        {
            ulong p8k = f.Keys.Address, p8v = f.Values.Address, psk = f.KeyScales.Address, psv = f.ValueScales.Address;
            void** a8 = stackalloc void*[] { &pq, &ldq, &p8k, &p8v, &psk, &psv, &pt, &maxBlocks, &blockShift, &pcu, &pctx, &po, &ldo, &ppo, &plse, &total, &heads, &kvHeads, &keysPerSplit, &scaleLog2, &pc };
            k.Launch(stream, grid, (uint)(32 * shape.Warps), (uint)shared, a8, pdl);
        }
        else
        {
            void** args = stackalloc void*[] { &pq, &ldq, &pk, &pv, &pt, &maxBlocks, &blockShift, &pcu, &pctx, &po, &ldo, &ppo, &plse, &total, &heads, &kvHeads, &keysPerSplit, &scaleLog2, &pc };
            k.Launch(stream, grid, (uint)(32 * shape.Warps), (uint)shared, args, pdl);
        }
        LastLaunch = (entry, splits);
    }
}
