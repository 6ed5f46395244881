// Launcher for native-kernels/gemm_qkv.cu: the prefill attention's [q; k; v] GEMM with RoPE and the K/V cache write in
// its epilogue on Hopper. It replaces cuBLAS's fp32 [q | k | v] output and the RoPE / cache-write pass that read it
// back (rope_kv.cu) for prefill-sized steps on sm_90a; the attention then stages the bf16 queries it writes.
using SwiftKV.Cuda.Native;

namespace SwiftKV.Cuda.Kernels;

public sealed unsafe class GemmQkvRopeKernel(KernelLibrary library)
{
    const string Entry = "gemm_qkv_rope_bf16";
    // The kernel's constants: 384 threads (a producer and two consumer warpgroups), 128-row x 256-column output tiles
    // (two heads), 64-wide k steps, 4 stages of 48 KB, clusters of 2 along M.
    const int Threads = 384, TileRows = 128, TileCols = 256, TileK = 64, Stages = 4, Cluster = 2, HeadDim = 128;
    // Shared memory (gemm_qkv.cu: QG_STAGES x GM_STAGE_BYTES + QG_OUT_BYTES + barriers): the stages, the epilogue's staging panels (2 warpgroups x 2 panels of 64 x 64 bf16,
    // each warpgroup's 64 x 256 outputs stored by TMA in two rounds), the mbarriers, 1 KB for the 1024-byte alignment
    // of the swizzle: 230,464 bytes of the 232,448 an H100 CTA may have.
    const int OutBoxRows = 64, OutBoxCols = 64;
    const int SharedBytes = Stages * (TileRows * TileK * 2 + TileCols * TileK * 2) + 2 * 2 * OutBoxRows * OutBoxCols * 2 + 2 * Stages * 8 + 1024;

    const string LeadersEntry = "gemm_kv_rope_bf16";

    readonly ClusterGemmEntry _entry = new(library, "gemm_qkv.cu", Entry, Threads, SharedBytes, Cluster);
    readonly ClusterGemmEntry _leaders = new(library, "gemm_qkv.cu", LeadersEntry, Threads, SharedBytes, Cluster);

    /// <summary>Launches so far (tests check that a path really took this kernel).</summary>
    public long Launches { get; private set; }

    /// <summary>
    /// Whether the kernel fits the model: sm_90a (wgmma, TMA multicast), head_dim 128, query and K/V widths that are
    /// whole 256-column tiles (even head counts), hidden a multiple of 8 (TMA strides). <paramref name="why"/> says what
    /// is missing.
    /// </summary>
    public static bool Applies(int hidden, int heads, int kvHeads, int headDim, out string? why)
    {
        why = CudaRuntime.Device.Arch != "sm_90a" ? $"it needs sm_90a (this device is {CudaRuntime.Device.Arch})"
            : headDim != HeadDim ? $"it needs head_dim {HeadDim} (got {headDim})"
            : heads * headDim % TileCols != 0 || kvHeads * headDim % TileCols != 0 ? $"it needs even head and KV head counts (got {heads}, {kvHeads})"
            : hidden % 8 != 0 ? $"it needs a hidden size that is a multiple of 8 (got {hidden})"
            : null;
        return why is null;
    }

    /// <summary>Whether both entries can be launched here (<see cref="ClusterGemmEntry.IsAvailable"/>).</summary>
    public bool IsAvailable(out string? why) => _entry.IsAvailable(out why) && _leaders.IsAvailable(out why);

    /// <summary>
    /// [q | k | v] = x · wᵀ (x (rows, hidden) bf16, w (heads·128 + 2·kvHeads·128, hidden) bf16, fp32 accumulation); q
    /// and k rotated by the angles of <paramref name="ropeTable"/> ((rows, 128) fp32, cos of the 64 pairs then their
    /// sin: RopeKernel.LaunchTable); q to <paramref name="query"/> (rows, heads·128) bf16; k and v to rows
    /// pos0 .. pos0 + rows - 1 of the caches (capacity, kvHeads, 128) bf16, one rounding each.
    /// </summary>
    public void Launch(CudaStream stream, DeviceSpan<Bf16> x, int rows, int hidden, DeviceSpan<Bf16> w, int heads, int kvHeads,
        DeviceSpan<float> ropeTable, DeviceSpan<Bf16> query, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache, int capacity, int pos0)
    {
        KernelGuard.Positive(heads, Entry, nameof(heads));
        KernelGuard.Positive(rows, Entry, nameof(rows));
        KernelGuard.Positive(hidden, Entry, nameof(hidden));
        KernelGuard.Positive(kvHeads, Entry, nameof(kvHeads));
        if (!Applies(hidden, heads, kvHeads, HeadDim, out var why)) throw new NotSupportedException($"{Entry}: {why}.");
        if (pos0 < 0 || (long)pos0 + rows > capacity)
            throw new ArgumentOutOfRangeException(nameof(pos0), $"{Entry}: positions {pos0}..{pos0 + rows - 1} are outside a cache of {capacity}.");
        int qDim = heads * HeadDim, kvDim = kvHeads * HeadDim;
        KernelGuard.Fits(x, (long)rows * hidden, Entry, nameof(x), $"({rows}, {hidden})");
        KernelGuard.Fits(w, (long)(qDim + 2 * kvDim) * hidden, Entry, nameof(w), $"({qDim + 2 * kvDim}, {hidden})");
        KernelGuard.Fits(ropeTable, (long)rows * HeadDim, Entry, nameof(ropeTable), $"({rows}, {HeadDim})");
        KernelGuard.Fits(query, (long)rows * qDim, Entry, nameof(query), $"({rows}, {qDim})");
        KernelGuard.Fits(kCache, (long)capacity * kvDim, Entry, nameof(kCache), $"({capacity}, {kvHeads}, {HeadDim})");
        KernelGuard.Fits(vCache, (long)capacity * kvDim, Entry, nameof(vCache), $"({capacity}, {kvHeads}, {HeadDim})");
        if (x.Address % 16 != 0 || w.Address % 16 != 0 || query.Address % 16 != 0 || kCache.Address % 16 != 0 || vCache.Address % 16 != 0 || ropeTable.Address % 8 != 0)
            throw new NotSupportedException($"{Entry}: it needs 16-byte aligned tensors (8-byte for the rope table).");
        if (!IsAvailable(out why)) throw new NotSupportedException($"{Entry}: {why}.");
        var mapX = CuDriver.EncodeBf16Rows(x.Address, rows, hidden, TileRows, TileK);
        var mapW = CuDriver.EncodeBf16Rows(w.Address, qDim + 2 * kvDim, hidden, TileCols / 2, TileK);
        var mapQ = CuDriver.EncodeBf16Rows(query.Address, rows, qDim, OutBoxRows, OutBoxCols);
        // The caches' row extent ends at the step's last position: TMA clips the rows of a tile past the step there.
        var mapK = CuDriver.EncodeBf16Rows(kCache.Address, pos0 + rows, kvDim, OutBoxRows, OutBoxCols);
        var mapV = CuDriver.EncodeBf16Rows(vCache.Address, pos0 + rows, kvDim, OutBoxRows, OutBoxCols);
        long units = (long)((rows + TileRows * Cluster - 1) / (TileRows * Cluster)) * ((qDim + 2 * kvDim) / TileCols);
        ulong pr = ropeTable.Address;
        void** args = stackalloc void*[] { &mapX, &mapW, &mapQ, &mapK, &mapV, &pr, &rows, &qDim, &kvDim, &hidden, &pos0 };
        _entry.Launch(stream, units, args);
        Launches++;
    }

    /// <summary>
    /// SingleInputKV's K/V projection of every later cache in one launch: w = [Wk; Wv] of each AcrossKV group leader in
    /// turn ((leaders · 2·kvHeads·128, hidden)), x = norm_swiftkv(x_l). Leader g's k (rotated) and v go to rows
    /// pos0 .. pos0 + rows - 1 of cache firstCache + g in the stacks <paramref name="kCaches"/> / <paramref name="vCaches"/>
    /// ((numCaches, capacity, kvHeads, 128) bf16: every cache of a sequence in one buffer).
    /// </summary>
    public void LaunchKeysValues(CudaStream stream, DeviceSpan<Bf16> x, int rows, int hidden, DeviceSpan<Bf16> w, int kvHeads, int leaders,
        DeviceSpan<float> ropeTable, DeviceSpan<Bf16> kCaches, DeviceSpan<Bf16> vCaches, int numCaches, int firstCache, int capacity, int pos0)
    {
        KernelGuard.Positive(rows, LeadersEntry, nameof(rows));
        KernelGuard.Positive(hidden, LeadersEntry, nameof(hidden));
        KernelGuard.Positive(kvHeads, LeadersEntry, nameof(kvHeads));
        KernelGuard.Positive(leaders, LeadersEntry, nameof(leaders));
        if (!Applies(hidden, 0, kvHeads, HeadDim, out var why)) throw new NotSupportedException($"{LeadersEntry}: {why}.");
        if (firstCache < 0 || (long)firstCache + leaders > numCaches)
            throw new ArgumentOutOfRangeException(nameof(firstCache), $"{LeadersEntry}: caches {firstCache}..{firstCache + leaders - 1} are outside a stack of {numCaches}.");
        if (pos0 < 0 || (long)pos0 + rows > capacity)
            throw new ArgumentOutOfRangeException(nameof(pos0), $"{LeadersEntry}: positions {pos0}..{pos0 + rows - 1} are outside a cache of {capacity}.");
        int kvDim = kvHeads * HeadDim;
        long outDim = (long)leaders * 2 * kvDim;
        KernelGuard.Fits(x, (long)rows * hidden, LeadersEntry, nameof(x), $"({rows}, {hidden})");
        KernelGuard.Fits(w, outDim * hidden, LeadersEntry, nameof(w), $"({outDim}, {hidden})");
        KernelGuard.Fits(ropeTable, (long)rows * HeadDim, LeadersEntry, nameof(ropeTable), $"({rows}, {HeadDim})");
        KernelGuard.Fits(kCaches, (long)numCaches * capacity * kvDim, LeadersEntry, nameof(kCaches), $"({numCaches}, {capacity}, {kvHeads}, {HeadDim})");
        KernelGuard.Fits(vCaches, (long)numCaches * capacity * kvDim, LeadersEntry, nameof(vCaches), $"({numCaches}, {capacity}, {kvHeads}, {HeadDim})");
        if (x.Address % 16 != 0 || w.Address % 16 != 0 || kCaches.Address % 16 != 0 || vCaches.Address % 16 != 0 || ropeTable.Address % 8 != 0)
            throw new NotSupportedException($"{LeadersEntry}: it needs 16-byte aligned tensors (8-byte for the rope table).");
        if (!IsAvailable(out why)) throw new NotSupportedException($"{LeadersEntry}: {why}.");
        var mapX = CuDriver.EncodeBf16Rows(x.Address, rows, hidden, TileRows, TileK);
        var mapW = CuDriver.EncodeBf16Rows(w.Address, outDim, hidden, TileCols / 2, TileK);
        // Each cache's row extent ends at the step's last position, as in the 2-D maps: TMA clips a tile's rows past the step.
        ulong cacheStride = (ulong)capacity * (ulong)kvDim * 2;
        var mapK = CuDriver.EncodeBf16(kCaches.Address, [(ulong)kvDim, (ulong)(pos0 + rows), (ulong)numCaches], [(ulong)kvDim * 2, cacheStride], [OutBoxCols, OutBoxRows, 1]);
        var mapV = CuDriver.EncodeBf16(vCaches.Address, [(ulong)kvDim, (ulong)(pos0 + rows), (ulong)numCaches], [(ulong)kvDim * 2, cacheStride], [OutBoxCols, OutBoxRows, 1]);
        long units = (long)((rows + TileRows * Cluster - 1) / (TileRows * Cluster)) * (outDim / TileCols);
        ulong pr = ropeTable.Address;
        void** args = stackalloc void*[] { &mapX, &mapW, &mapK, &mapV, &pr, &rows, &kvDim, &leaders, &hidden, &pos0, &firstCache };
        _leaders.Launch(stream, units, args);
        Launches++;
    }
}
