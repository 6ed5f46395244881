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

    readonly ClusterGemmEntry _entry = new(library, "gemm_qkv.cu", Entry, Threads, SharedBytes, Cluster);

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

    /// <summary>Whether the kernel can be launched at all here (<see cref="ClusterGemmEntry.IsAvailable"/>).</summary>
    public bool IsAvailable(out string? why) => _entry.IsAvailable(out why);

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
        LaunchCore(stream, x, rows, hidden, w, heads, kvHeads, ropeTable, query, kCache, vCache, capacity, pos0);
    }

    /// <summary>
    /// [k | v] = x · wᵀ with w = [Wk; Wv] (2·kvHeads·128, hidden): k rotated, both written to rows pos0 .. of the
    /// caches. SingleInputKV's K/V projection of one later layer (group leader) from norm_swiftkv(x_l).
    /// </summary>
    public void LaunchKeysValues(CudaStream stream, DeviceSpan<Bf16> x, int rows, int hidden, DeviceSpan<Bf16> w, int kvHeads,
        DeviceSpan<float> ropeTable, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache, int capacity, int pos0)
        => LaunchCore(stream, x, rows, hidden, w, 0, kvHeads, ropeTable, null, kCache, vCache, capacity, pos0);

    void LaunchCore(CudaStream stream, DeviceSpan<Bf16> x, int rows, int hidden, DeviceSpan<Bf16> w, int heads, int kvHeads,
        DeviceSpan<float> ropeTable, DeviceSpan<Bf16>? queryOrNull, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache, int capacity, int pos0)
    {
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
        var query = queryOrNull ?? kCache;   // without queries (heads 0) no tile is a query tile: the map is never used
        if (queryOrNull is not null) KernelGuard.Fits(query, (long)rows * qDim, Entry, nameof(query), $"({rows}, {qDim})");
        KernelGuard.Fits(kCache, (long)capacity * kvDim, Entry, nameof(kCache), $"({capacity}, {kvHeads}, {HeadDim})");
        KernelGuard.Fits(vCache, (long)capacity * kvDim, Entry, nameof(vCache), $"({capacity}, {kvHeads}, {HeadDim})");
        if (x.Address % 16 != 0 || w.Address % 16 != 0 || query.Address % 16 != 0 || kCache.Address % 16 != 0 || vCache.Address % 16 != 0 || ropeTable.Address % 8 != 0)
            throw new NotSupportedException($"{Entry}: it needs 16-byte aligned tensors (8-byte for the rope table).");
        if (!IsAvailable(out why)) throw new NotSupportedException($"{Entry}: {why}.");
        var mapX = CuDriver.EncodeBf16Rows(x.Address, rows, hidden, TileRows, TileK);
        var mapW = CuDriver.EncodeBf16Rows(w.Address, qDim + 2 * kvDim, hidden, TileCols / 2, TileK);
        var mapQ = CuDriver.EncodeBf16Rows(query.Address, rows, heads > 0 ? qDim : kvDim, OutBoxRows, OutBoxCols);
        // The caches' row extent ends at the step's last position: TMA clips the rows of a tile past the step there.
        var mapK = CuDriver.EncodeBf16Rows(kCache.Address, pos0 + rows, kvDim, OutBoxRows, OutBoxCols);
        var mapV = CuDriver.EncodeBf16Rows(vCache.Address, pos0 + rows, kvDim, OutBoxRows, OutBoxCols);
        long units = (long)((rows + TileRows * Cluster - 1) / (TileRows * Cluster)) * ((qDim + 2 * kvDim) / TileCols);
        ulong pr = ropeTable.Address;
        void** args = stackalloc void*[] { &mapX, &mapW, &mapQ, &mapK, &mapV, &pr, &rows, &qDim, &kvDim, &hidden, &pos0 };
        _entry.Launch(stream, units, args);
        Launches++;
    }
}
