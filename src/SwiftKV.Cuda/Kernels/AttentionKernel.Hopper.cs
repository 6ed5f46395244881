// Launcher for native-kernels/attention_hopper.cu: causal GQA prefill attention on Hopper's warpgroup MMAs (wgmma),
// head_dim 128, contiguous or paged (bf16 or fp8) caches, no split-K. Auto takes it for prefill-sized steps on sm_90a;
// decode, short chunks and other head dims stay on attention_flash.cu. Two bf16 structures: the warp-specialised,
// persistent entries (TMA producer, pipelined consumers; contiguous caches, and paged pools of blocks >= 64 positions)
// and the two-CTA-per-SM entries (paged pools of smaller blocks, fp8 pools, and either when switched off).
namespace SwiftKV.Cuda.Kernels;

public sealed unsafe partial class AttentionKernel
{
    internal const string HopperEntry = "flash_attn_wgmma_d128_n64_g2";
    const string HopperPagedEntry = "flash_attn_paged_wgmma_d128_n64_g2",
        HopperPagedFp8Entry = "flash_attn_paged_fp8_wgmma_d128_n64_g2";
    /// <summary>Packed query rows per CTA of the wgmma kernel (2 warpgroups × 64) and keys per tile (the entries' n64).</summary>
    const int HopperRows = 128, HopperKeys = 64;
    /// <summary>Bytes of one bf16 row of head_dim 128.</summary>
    const int HopperRowBytes = 128 * 2;
    /// <summary>Dynamic shared memory of the wgmma kernel (WgShape::SMEM in the kernel): Q + 2 stages × (K, V), + 1 KB for alignment.</summary>
    const int HopperSharedBytes = (HopperRows + 4 * HopperKeys) * HopperRowBytes + 1024;
    /// <summary>Over an fp8 pool: Q + one bf16 (K, V) stage + 2 staging areas of e4m3 K, V (128 B a key each) and fp32 scales + the converted tile's scales.</summary>
    const int HopperSharedBytesFp8 = (HopperRows + 2 * HopperKeys) * HopperRowBytes + 2 * (2 * HopperKeys * 128 + 8 * HopperKeys) + 8 * HopperKeys + 1024;

    // The warp-specialised entry (contiguous caches): 3 warpgroups (a TMA producer, two consumers of 64 rows each),
    // 128-key tiles, 2 stages of K and of V, persistent (one CTA per SM). Shared memory (WsShape::SMEM): Q, the stages, 4 mbarriers per stage,
    // 1 KB for the 1024-byte alignment of the swizzle.
    internal const string HopperWsEntry = "flash_attn_wgmma_ws_d128_n128", HopperWsPagedEntry = "flash_attn_paged_wgmma_ws_d128_n128";
    const int HopperWsKeys = 128, HopperWsStages = 2, HopperWsThreads = 384;
    const int HopperWsSharedBytes = HopperRows * HopperRowBytes + 2 * HopperWsStages * HopperWsKeys * HopperRowBytes + 4 * HopperWsStages * 8 + 1024;

    /// <summary>
    /// Prefill attention over contiguous caches on sm_90a takes the warp-specialised wgmma entry (TMA loads by a
    /// producer warpgroup, softmax overlapped with the MMAs inside each consumer warpgroup, persistent; H100: 586 vs 484
    /// TFLOP/s at 8K causal for the two-CTA entry, src/SwiftKV.Cuda/NOTES.md) when true, the two-CTA-per-SM entry when
    /// false (benchmarks compare them).
    /// </summary>
    public bool UseWarpSpecialized { get; set; } = true;

    /// <summary>
    /// Paged bf16 pools take the warp-specialised entry too (one TMA box per block of a 128-key tile) when their blocks
    /// hold at least <see cref="WarpSpecializedPagedMinBlock"/> positions (default). H100, 8K causal, one sequence
    /// scattered over the pool: blocks of 64 592 vs 452 TFLOP/s for the two-CTA paged entry, of 128 600 vs 447, but of 16
    /// (16 small boxes per tile) 417 vs 486, so smaller blocks keep the two-CTA entry (NOTES.md).
    /// </summary>
    public bool UseWarpSpecializedPaged { get; set; } = true;

    /// <summary>Smallest block size that takes the warp-specialised paged entry (tests lower it to 8, the kernel's limit).</summary>
    internal int WarpSpecializedPagedMinBlock { get; set; } = WarpSpecializedPagedBlock;

    const int WarpSpecializedPagedBlock = 64, TwoCtaPagedBlock = 16;

    /// <summary>
    /// The block size a paged pool should have for the fastest prefill entry here: 64 for bf16 pools on sm_90a with
    /// head_dim 128 (the warp-specialised paged entry, while <see cref="UseWarpSpecializedPaged"/>), else 16 (the two-CTA
    /// and flash paged entries, which ran faster over blocks of 16 than of 64: 486 vs 452 TFLOP/s at 8K).
    /// </summary>
    public int PreferredPagedBlockSize(int headDim, bool fp8) =>
        !fp8 && headDim == 128 && UseWarpSpecializedPaged && CudaRuntime.Device.Arch == "sm_90a" ? WarpSpecializedPagedBlock : TwoCtaPagedBlock;

    /// <summary>Launches of the warp-specialised entry so far (tests and benchmarks check which entry ran).</summary>
    public long WarpSpecializedLaunches { get; private set; }

    readonly Dictionary<string, CudaKernel> _wsKernels = new();
    string? _wsUnavailable;

    /// <summary>
    /// A warp-specialised entry, loaded on first use with its shared memory; null (with the reason remembered) when the
    /// entry is missing from the module or one CTA does not fit an SM here, so that the two-CTA entries run instead. It
    /// shares its module with the two-CTA entries, so a compile failure is not a fallback case: that error reaches the
    /// caller (either path would need the module), and so do transient ones such as running out of memory while the
    /// module loads, which are not remembered (the next launch tries again).
    /// </summary>
    CudaKernel? WarpSpecializedKernel(string entry)
    {
        if (_wsKernels.TryGetValue(entry, out var k)) return k;
        if (_wsUnavailable is not null) return null;
        try
        {
            k = library.Get("attention_hopper.cu", entry);
        }
        catch (EntryPointNotFoundException e)
        {
            _wsUnavailable = $"{e.GetType().Name}: {e.Message.Split('\n')[0]}";
            return null;
        }
        catch (CudaException e) when (e.Status == Native.CuDriver.ErrorNotFound)
        {
            _wsUnavailable = $"{e.GetType().Name}: {e.Message.Split('\n')[0]}";
            return null;
        }
        k.SetAttribute(CudaKernel.AttrMaxDynamicSharedBytes, HopperWsSharedBytes);
        if (k.MaxActiveBlocksPerMultiprocessor(HopperWsThreads, HopperWsSharedBytes) < 1)
        {
            _wsUnavailable = $"one CTA of {HopperWsThreads} threads with {HopperWsSharedBytes} bytes of shared memory does not fit an SM here";
            return null;
        }
        return _wsKernels[entry] = k;
    }

    /// <summary>
    /// CTAs of a warp-specialised launch: one per SM, at most one per work item; tests lower it (<see cref="MaxPersistentCtas"/>)
    /// so that each CTA walks many items and the barrier phases carry across them.
    /// </summary>
    uint PersistentCtas(long items) => (uint)Math.Min(items, Math.Min(CudaRuntime.Device.MultiprocessorCount, MaxPersistentCtas));

    /// <summary>Upper bound on <see cref="PersistentCtas"/> (tests only).</summary>
    internal int MaxPersistentCtas { get; set; } = int.MaxValue;

    /// <summary>Why the warp-specialised entry is not used here (null: it is, or it has not been asked for yet).</summary>
    public string? WarpSpecializedUnavailable => _wsUnavailable;

    /// <summary>
    /// Whether the wgmma kernel can run this launch: an sm_90a device, head_dim 128, and queries in 16-byte rows (the
    /// kernel reads them as float4). <paramref name="why"/> says what is missing.
    /// </summary>
    static bool HopperApplies(DeviceSpan<float> q, int ldq, long qBatchStride, int batch, int headDim, out string? why)
    {
        why = CudaRuntime.Device.Arch != "sm_90a" ? $"it needs sm_90a (this device is {CudaRuntime.Device.Arch})"
            : headDim != 128 ? $"it needs head_dim 128 (got {headDim})"
            : q.Address % 16 != 0 || ldq % 4 != 0 || (batch > 1 && qBatchStride % 4 != 0) ? "it needs 16-byte aligned query rows"
            : null;
        return why is null;
    }

    /// <summary>
    /// Auto takes the wgmma kernel for prefill-sized steps: at least one full row tile per (sequence, KV head), and
    /// enough tiles to put a CTA on every SM. It has no split-K, so decode and short steps over a long cache (few row
    /// tiles, many keys each) stay on the mma.sync kernel, which splits the keys.
    /// </summary>
    internal static bool HopperPays(int batch, int rows, int heads, int kvHeads)
    {
        long packed = (long)rows * (heads / kvHeads);
        return packed >= HopperRows && (packed + HopperRows - 1) / HopperRows * batch * kvHeads >= CudaRuntime.Device.MultiprocessorCount;
    }

    CudaKernel HopperKernel(string entry, int sharedBytes)
    {
        if (_kernels.TryGetValue(entry, out var k)) return k;
        k = library.Get("attention_hopper.cu", entry);
        k.SetAttribute(CudaKernel.AttrMaxDynamicSharedBytes, sharedBytes);
        k.SetAttribute(CudaKernel.AttrSharedCarveoutPercent, 100);
        return _kernels[entry] = k;
    }

    void LaunchHopperPaged(CudaStream stream, DeviceSpan<float> q, int ldq, AttentionPagedCache cache, AttentionPagedBatch batch,
        DeviceSpan<Bf16> output, int ldo, int heads)
    {
        bool fp8 = cache.Fp8 is not null;
        // bf16 pools with large enough blocks take the warp-specialised entry: the pool as 4-D tensor maps
        // (head_dim, kv_heads, block_size, num_blocks), one box per block of a 128-key tile (or a part of a larger block).
        if (!fp8 && cache.BlockSize >= Math.Max(8, WarpSpecializedPagedMinBlock) && UseWarpSpecializedPaged && WarpSpecializedKernel(HopperWsPagedEntry) is { } ws)
        {
            int kvh = cache.KvHeads, bs = cache.BlockSize, nb = cache.NumBlocks, maxB = batch.MaxBlocksPerSequence, seqs = batch.Sequences,
                maxQ = batch.MaxQueryLength, shift = System.Numerics.BitOperations.Log2((uint)bs);
            ulong rowBytes = (ulong)kvh * HopperRowBytes;
            ReadOnlySpan<ulong> dims = [128, (ulong)kvh, (ulong)bs, (ulong)nb];
            ReadOnlySpan<ulong> strides = [HopperRowBytes, rowBytes, (ulong)bs * rowBytes];
            ReadOnlySpan<uint> box = [64, 1, (uint)Math.Min(HopperWsKeys, bs), 1];
            var mapK = Native.CuDriver.EncodeBf16(cache.Keys.Address, dims, strides, box);
            var mapV = Native.CuDriver.EncodeBf16(cache.Values.Address, dims, strides, box);
            float sl2 = (float)(1.0 / Math.Sqrt(128)) * Log2E;
            ulong wq = q.Address, wt = batch.BlockTables.Address, wcu = batch.QueryStarts.Address, wctx = batch.ContextLengths.Address, wo = output.Address;
            void** wargs = stackalloc void*[] { &wq, &ldq, &mapK, &mapV, &wt, &maxB, &shift, &nb, &wcu, &wctx, &seqs, &maxQ, &wo, &ldo, &heads, &kvh, &sl2 };
            long items = ((long)maxQ * (heads / kvh) + HopperRows - 1) / HopperRows * seqs * kvh;
            ws.Launch(stream, (PersistentCtas(items), 1, 1), HopperWsThreads, HopperWsSharedBytes, wargs);
            WarpSpecializedLaunches++;
            LastLaunch = (HopperWsPagedEntry, 1);
            return;
        }
        string entry = fp8 ? HopperPagedFp8Entry : HopperPagedEntry;
        int shared = fp8 ? HopperSharedBytesFp8 : HopperSharedBytes;
        var k = HopperKernel(entry, shared);
        int kvHeads = cache.KvHeads, maxBlocks = batch.MaxBlocksPerSequence, blockShift = System.Numerics.BitOperations.Log2((uint)cache.BlockSize);
        int mTiles = (int)(((long)batch.MaxQueryLength * (heads / kvHeads) + HopperRows - 1) / HopperRows);
        float scaleLog2 = (float)(1.0 / Math.Sqrt(128)) * Log2E;
        ulong pq = q.Address, pk = cache.Keys.Address, pv = cache.Values.Address, pt = batch.BlockTables.Address,
            pcu = batch.QueryStarts.Address, pctx = batch.ContextLengths.Address, po = output.Address;
        var grid = ((uint)mTiles, (uint)(batch.Sequences * kvHeads), 1u);
        if (cache.Fp8 is { } f)
        {
            ulong p8k = f.Keys.Address, p8v = f.Values.Address, psk = f.KeyScales.Address, psv = f.ValueScales.Address;
            void** a8 = stackalloc void*[] { &pq, &ldq, &p8k, &p8v, &psk, &psv, &pt, &maxBlocks, &blockShift, &pcu, &pctx, &po, &ldo, &heads, &kvHeads, &scaleLog2 };
            k.Launch(stream, grid, 256, (uint)shared, a8);
        }
        else
        {
            void** args = stackalloc void*[] { &pq, &ldq, &pk, &pv, &pt, &maxBlocks, &blockShift, &pcu, &pctx, &po, &ldo, &heads, &kvHeads, &scaleLog2 };
            k.Launch(stream, grid, 256, (uint)shared, args);
        }
        LastLaunch = (entry, 1);
    }

    void LaunchHopper(CudaStream stream, DeviceSpan<float> q, int ldq, long qBatchStride, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache,
        long kvBatchStride, DeviceSpan<Bf16> output, long outBatchStride, int batch, int rows, int heads, int kvHeads, int pos0, DeviceSpan<float>? ropeTable)
        => LaunchHopper(stream, q.Address, 0, ldq, qBatchStride, kCache, vCache, kvBatchStride, output, outBatchStride, batch, rows, heads, kvHeads, pos0, ropeTable);

    /// <summary>
    /// Whether a one-sequence prefill launch of this shape would run the warp-specialised wgmma entry, the one entry
    /// that takes rotated bf16 queries (<see cref="LaunchRotatedBf16"/>, fed by the [q; k; v] GEMM with RoPE in its
    /// epilogue): the contiguous path's own rule (Auto choosing the wgmma kernel, or Path Hopper) with that entry on and
    /// loadable here.
    /// </summary>
    public bool TakesRotatedBf16Queries(int rows, int heads, int kvHeads, int headDim)
    {
        if (heads < 1 || kvHeads < 1 || heads % kvHeads != 0 || !UseWarpSpecialized) return false;
        if (CudaRuntime.Device.Arch != "sm_90a" || headDim != 128 || kvHeads > 65535) return false;
        if (Path is not (AttentionPath.Auto or AttentionPath.Hopper)) return false;
        if (Path == AttentionPath.Auto && !HopperPays(1, rows, heads, kvHeads)) return false;
        return WarpSpecializedKernel(HopperWsEntry) is not null;
    }

    /// <summary>
    /// One sequence's prefill attention from rotated bf16 queries q (rows, ldq) (heads x 128 from column 0, RoPE
    /// applied) over contiguous caches (capacity, kv_heads, 128): the warp-specialised wgmma entry only (ask
    /// <see cref="TakesRotatedBf16Queries"/> first); output (rows, heads x 128) bf16.
    /// </summary>
    public void LaunchRotatedBf16(CudaStream stream, DeviceSpan<Bf16> q, int ldq, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache, int capacity,
        DeviceSpan<Bf16> output, int rows, int heads, int kvHeads, int pos0)
    {
        const string n = "attention (bf16 queries)";
        const int headDim = 128;
        KernelGuard.Positive(rows, n, nameof(rows));
        CheckHeads(n, heads, kvHeads, headDim);
        if (ldq < heads * headDim || ldq % 8 != 0)
            throw new ArgumentOutOfRangeException(nameof(ldq), ldq, $"{n}: row stride must be >= heads * head_dim ({heads * headDim}) and a multiple of 8 (16-byte rows).");
        if (pos0 < 0 || (long)pos0 + rows > capacity)
            throw new ArgumentOutOfRangeException(nameof(pos0), $"{n}: positions {pos0}..{pos0 + rows - 1} are outside a cache of {capacity}.");
        long kvDim = (long)kvHeads * headDim, outRow = (long)heads * headDim;
        KernelGuard.Fits(q, (long)(rows - 1) * ldq + outRow, n, nameof(q), $"({rows}, {ldq})");
        KernelGuard.Fits(kCache, capacity * kvDim, n, nameof(kCache), $"({capacity}, {kvHeads}, {headDim})");
        KernelGuard.Fits(vCache, capacity * kvDim, n, nameof(vCache), $"({capacity}, {kvHeads}, {headDim})");
        KernelGuard.Fits(output, rows * outRow, n, nameof(output), $"({rows}, {outRow})");
        if (q.Address % 16 != 0) throw new ArgumentException($"{n}: the queries must start on a 16-byte boundary.", nameof(q));
        CheckTensorCoreAlignment(n, kCache.Address, vCache.Address, 0, output.Address, 0, 1);
        if (!TakesRotatedBf16Queries(rows, heads, kvHeads, headDim))
            throw new ArgumentException($"{n}: only the warp-specialised wgmma entry takes bf16 queries, and this launch does not run it ({WarpSpecializedUnavailable ?? $"Path {Path}, UseWarpSpecialized {UseWarpSpecialized}, {CudaRuntime.Device.Arch}, {rows} rows"}).", nameof(q));
        LaunchHopper(stream, 0, q.Address, ldq, (long)rows * ldq, kCache, vCache, capacity * kvDim, output, rows * outRow, 1, rows, heads, kvHeads, pos0, null);
    }

    void LaunchHopper(CudaStream stream, ulong qAddress, ulong qbAddress, int ldq, long qBatchStride, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache,
        long kvBatchStride, DeviceSpan<Bf16> output, long outBatchStride, int batch, int rows, int heads, int kvHeads, int pos0, DeviceSpan<float>? ropeTable)
    {
        int mTiles = (int)(((long)rows * (heads / kvHeads) + HopperRows - 1) / HopperRows);
        float scaleLog2 = (float)(1.0 / Math.Sqrt(128)) * Log2E;
        ulong pq = qAddress, pqb = qbAddress, pk = kCache.Address, pv = vCache.Address, po = output.Address, pr = KernelGuard.Address(ropeTable);
        long qbs = qBatchStride, kvbs = kvBatchStride, obs = outBatchStride;
        // TMA reads the caches through tensor maps: (head_dim, kv_heads, positions, batch) with byte strides in multiples
        // of 16 (CheckTensorCoreAlignment already asked 16-byte aligned caches and batch strides); the positions extent
        // is the step's cache length, so a tile's keys past it arrive as zeros.
        if (UseWarpSpecialized && WarpSpecializedKernel(HopperWsEntry) is { } ws)
        {
            ulong length = (ulong)(pos0 + rows), rowBytes = (ulong)kvHeads * HopperRowBytes;
            ulong batchBytes = batch > 1 ? (ulong)kvBatchStride * 2 : length * rowBytes;
            ReadOnlySpan<ulong> dims = [128, (ulong)kvHeads, length, (ulong)batch];
            ReadOnlySpan<ulong> strides = [HopperRowBytes, rowBytes, batchBytes];
            ReadOnlySpan<uint> box = [64, 1, HopperWsKeys, 1];
            var mapK = Native.CuDriver.EncodeBf16(pk, dims, strides, box);
            var mapV = Native.CuDriver.EncodeBf16(pv, dims, strides, box);
            void** wargs = stackalloc void*[] { &pq, &qbs, &ldq, &mapK, &mapV, &po, &obs, &batch, &rows, &heads, &kvHeads, &pos0, &scaleLog2, &pr, &pqb };
            // Persistent: one CTA per SM walks the (row tile, sequence x KV head) items (the kernel's ws_item order).
            long items = (long)mTiles * batch * kvHeads;
            ws.Launch(stream, (PersistentCtas(items), 1, 1), HopperWsThreads, HopperWsSharedBytes, wargs);
            WarpSpecializedLaunches++;
            LastLaunch = (HopperWsEntry, 1);
            return;
        }
        if (pqb != 0) throw new InvalidOperationException("attention: bf16 queries need the warp-specialised entry.");
        var k = HopperKernel(HopperEntry, HopperSharedBytes);
        void** args = stackalloc void*[] { &pq, &qbs, &ldq, &pk, &pv, &kvbs, &po, &obs, &rows, &heads, &kvHeads, &pos0, &scaleLog2, &pr };
        k.Launch(stream, ((uint)mTiles, (uint)(batch * kvHeads), 1), 256, HopperSharedBytes, args);
        LastLaunch = (HopperEntry, 1);
    }
}
