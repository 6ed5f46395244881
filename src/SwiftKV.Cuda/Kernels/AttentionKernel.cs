// Launcher for causal GQA attention over contiguous caches: native-kernels/attention_hopper.cu (wgmma, sm_90a,
// head_dim 128, prefill-sized steps), native-kernels/attention_flash.cu (mma.sync, head_dim 64/128, split-K for short
// steps) and native-kernels/attention.cu (scalar, any head_dim) as the fallback.
// The paged, varlen launch of the serving engine is in AttentionKernel.Paged.cs.
namespace SwiftKV.Cuda.Kernels;

/// <summary>Which attention kernel a launch uses.</summary>
public enum AttentionPath
{
    /// <summary>The wgmma kernel for prefill-sized steps on sm_90a (head_dim 128), else the flash kernel where it applies (head_dim 64/128, sm_80+), shaped by the step; otherwise the scalar kernel.</summary>
    Auto,
    /// <summary>The scalar reference kernel (one thread per key; any head_dim; contiguous caches only).</summary>
    Simple,
    /// <summary>Flash kernel, 4 warps × 16 packed query rows (Q fragments in registers), 64-key tiles.</summary>
    Flash4Warps,
    /// <summary>Flash kernel, 8 warps × 16 packed query rows, 64-key tiles.</summary>
    Flash8Warps,
    /// <summary>Flash kernel, 4 warps × 32 packed query rows (Q re-read from shared memory), 64-key tiles.</summary>
    Flash4Warps32Rows,
    /// <summary>Flash kernel, 4 warps × 32 packed query rows, 32-key tiles (no spills; Auto's choice for long steps before Hopper).</summary>
    Flash4Warps32RowsKeys32,
    /// <summary>
    /// The wgmma kernel (native-kernels/attention_hopper.cu): sm_90a, head_dim 128, 2 warpgroups × 64 packed rows,
    /// 64-key tiles, two CTAs per SM, no split-K. Auto's choice for prefill-sized steps on H100/H200.
    /// </summary>
    Hopper,
}

/// <summary>
/// Causal GQA attention: q (rows, ldq) fp32 rotated queries, row r at position pos0 + r, over bf16 caches
/// (capacity, kv_heads, head_dim) holding at least pos0 + rows tokens; out (rows, heads · head_dim) bf16.
/// Owns a split-K scratch buffer (grown on demand, never per call once the largest shape has run). A grown buffer
/// keeps the old one alive until Dispose, so a CUDA graph captured earlier never points at freed memory; call
/// <see cref="Reserve"/> before capturing to size it once.
/// </summary>
public sealed unsafe partial class AttentionKernel(KernelLibrary library) : IDisposable
{
    /// <summary>Largest head_dim the kernel handles (4 output dims per thread × 128 threads).</summary>
    public const int MaxHeadDim = 512;
    /// <summary>Largest key tile of the flash kernels (a split covers a whole number of tiles).</summary>
    public const int KeyTile = 64;
    const int MaxSplits = 64;
    /// <summary>Most splits a decode launch takes (<see cref="DecodeSplitsOverride"/>'s upper bound).</summary>
    public const int MaxDecodeSplits = MaxSplits;
    const float Log2E = 1.4426950408889634f;
    /// <summary>
    /// Packed query rows (tokens × GQA group) per KV head from which Auto takes 32 rows per warp with 32-key tiles
    /// (H100, same process: 195 / 244 / 287 / 296 TFLOP/s at 2K / 4K / 8K / 32K vs 183 / 240 / 273 / 287 with 64-key
    /// tiles and 175 / 222 / 242 / 240 with 16 rows per warp; shorter steps keep 16 rows per warp, whose Q stays in registers).
    /// </summary>
    const int WideRowsThreshold = 256;

    readonly Dictionary<string, CudaKernel> _kernels = new();
    readonly List<DeviceBuffer<float>> _retired = new();
    DeviceBuffer<float>? _partO, _partLse;

    /// <summary>Kernel choice; <see cref="AttentionPath.Auto"/> unless a test or benchmark pins one.</summary>
    public AttentionPath Path { get; set; } = AttentionPath.Auto;

    /// <summary>
    /// Split count of decode launches (<see cref="LaunchDecode"/>), 0 = the rule of <see cref="DecodeSplits"/>
    /// (benchmarks compare counts); still at most one split per key tile of the cache.
    /// </summary>
    public int DecodeSplitsOverride
    {
        get => _decodeSplitsOverride;
        set => _decodeSplitsOverride = value is >= 0 and <= MaxSplits ? value
            : throw new ArgumentOutOfRangeException(nameof(value), value, $"decode splits must be 0 (auto) or 1..{MaxSplits}.");
    }
    int _decodeSplitsOverride;

    /// <summary>Entry point and split count of the last launch (for logs and benchmarks).</summary>
    public (string Kernel, int Splits) LastLaunch { get; private set; }

    /// <summary>CTA shape of a flash path: warps, 16-row m-fragments per warp, keys per tile.</summary>
    internal readonly record struct FlashShape(int Warps, int Frags, int Keys)
    {
        public int RowsPerCta => 16 * Warps * Frags;
        public string Suffix(int headDim) => $"d{headDim}_w{Warps}_m{Frags}_n{Keys}";
        /// <summary>Dynamic shared memory: 2 stages × (K, V) × keys × (head_dim + 8) bf16, plus Q when it stays in shared memory.</summary>
        public int SharedBytes(int headDim) => (4 * Keys + (Frags > 1 ? RowsPerCta : 0)) * (headDim + 8) * 2;
    }

    internal static FlashShape ShapeOf(AttentionPath path) => path switch
    {
        AttentionPath.Flash4Warps => new(4, 1, 64),
        AttentionPath.Flash8Warps => new(8, 1, 64),
        AttentionPath.Flash4Warps32Rows => new(4, 2, 64),
        AttentionPath.Flash4Warps32RowsKeys32 => new(4, 2, 32),
        _ => throw new ArgumentOutOfRangeException(nameof(path), path, "not a flash path"),
    };

    /// <summary>Auto's flash shape: 32 rows per warp, 32-key tiles, once a KV head has enough packed rows to fill 128-row CTAs.</summary>
    internal static AttentionPath AutoFlash(long packedRowsPerKvHead) =>
        packedRowsPerKvHead >= WideRowsThreshold ? AttentionPath.Flash4Warps32RowsKeys32 : AttentionPath.Flash4Warps;

    /// <summary>One sequence: the engine's per-layer call.</summary>
    public void Launch(CudaStream stream, DeviceSpan<float> q, int ldq, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache, int capacity,
        DeviceSpan<Bf16> output, int rows, int heads, int kvHeads, int headDim, int pos0, DeviceSpan<float>? ropeTable = null)
        => LaunchBatched(stream, q, ldq, (long)rows * ldq, kCache, vCache, (long)capacity * kvHeads * headDim, capacity,
            output, (long)rows * heads * headDim, 1, rows, heads, kvHeads, headDim, pos0, ropeTable);

    /// <summary>
    /// Whether a launch of this shape runs the wgmma kernel (Path Hopper, or Auto choosing it), the one kernel that can
    /// rotate the queries as it loads them: only then may <see cref="LaunchBatched"/> be given a rope table.
    /// </summary>
    public bool RotatesQueriesOnLoad(DeviceSpan<float> q, int ldq, long qBatchStride, int batch, int rows, int heads, int kvHeads, int headDim)
    {
        if (heads < 1 || kvHeads < 1 || heads % kvHeads != 0) return false;
        return ChoosePath(q, ldq, qBatchStride, batch, rows, heads, kvHeads, headDim, out _, out _, out _) == AttentionPath.Hopper;
    }

    /// <summary>
    /// The path a contiguous launch takes (<see cref="Path"/>, with Auto resolved), and what the checks found: whether
    /// the flash kernels and the wgmma kernel can run it, and if not the latter, why. One rule for the launch and for
    /// <see cref="RotatesQueriesOnLoad"/>.
    /// </summary>
    AttentionPath ChoosePath(DeviceSpan<float> q, int ldq, long qBatchStride, int batch, int rows, int heads, int kvHeads, int headDim,
        out bool flashOk, out bool hopperOk, out string? notHopper)
    {
        flashOk = FlashApplies(headDim) && (long)batch * kvHeads <= 65535;
        notHopper = null;
        hopperOk = flashOk && HopperApplies(q, ldq, qBatchStride, batch, headDim, out notHopper);
        if (Path != AttentionPath.Auto) return Path;
        return hopperOk && HopperPays(batch, rows, heads, kvHeads) ? AttentionPath.Hopper
            : flashOk ? AutoFlash((long)rows * (heads / kvHeads)) : AttentionPath.Simple;
    }

    /// <summary>
    /// <paramref name="batch"/> sequences at the same positions: sequence b's queries start at q + b·qBatchStride, its
    /// caches at k/v + b·kvBatchStride (each (capacity, kv_heads, head_dim)), its output at output + b·outBatchStride.
    /// <paramref name="ropeTable"/>: the queries are not rotated yet; row t's angles, (rows, head_dim) fp32 as cos of
    /// the head_dim/2 pairs then their sin (RopeKvKernel writes it), are applied as the wgmma kernel loads them. Only
    /// that kernel takes a table (<see cref="RotatesQueriesOnLoad"/>); any other path is an error.
    /// </summary>
    public void LaunchBatched(CudaStream stream, DeviceSpan<float> q, int ldq, long qBatchStride, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache,
        long kvBatchStride, int capacity, DeviceSpan<Bf16> output, long outBatchStride, int batch, int rows, int heads, int kvHeads, int headDim, int pos0,
        DeviceSpan<float>? ropeTable = null)
    {
        const string n = "attention";
        KernelGuard.Positive(batch, n, nameof(batch));
        KernelGuard.Positive(rows, n, nameof(rows));
        CheckHeads(n, heads, kvHeads, headDim);
        if (ldq < heads * headDim) throw new ArgumentOutOfRangeException(nameof(ldq), ldq, $"{n}: row stride must be >= heads * head_dim ({heads * headDim}).");
        if (pos0 < 0 || (long)pos0 + rows > capacity)
            throw new ArgumentOutOfRangeException(nameof(pos0), $"{n}: positions {pos0}..{pos0 + rows - 1} are outside a cache of {capacity}.");
        long kvDim = (long)kvHeads * headDim, outRow = (long)heads * headDim;
        if (qBatchStride < (long)(rows - 1) * ldq + outRow) throw new ArgumentOutOfRangeException(nameof(qBatchStride), qBatchStride, $"{n}: q batch stride is smaller than one sequence's queries.");
        if (kvBatchStride < capacity * kvDim) throw new ArgumentOutOfRangeException(nameof(kvBatchStride), kvBatchStride, $"{n}: cache batch stride is smaller than one cache ({capacity * kvDim}).");
        if (outBatchStride < rows * outRow) throw new ArgumentOutOfRangeException(nameof(outBatchStride), outBatchStride, $"{n}: output batch stride is smaller than one sequence's output.");
        KernelGuard.Fits(q, (batch - 1) * qBatchStride + (long)(rows - 1) * ldq + outRow, n, nameof(q), $"({batch}, {rows}, {ldq})");
        KernelGuard.Fits(kCache, (batch - 1) * kvBatchStride + capacity * kvDim, n, nameof(kCache), $"({batch}, {capacity}, {kvHeads}, {headDim})");
        KernelGuard.Fits(vCache, (batch - 1) * kvBatchStride + capacity * kvDim, n, nameof(vCache), $"({batch}, {capacity}, {kvHeads}, {headDim})");
        KernelGuard.Fits(output, (batch - 1) * outBatchStride + rows * outRow, n, nameof(output), $"({batch}, {rows}, {outRow})");
        KernelGuard.FitsOptional(ropeTable, (long)rows * headDim, n, nameof(ropeTable), $"({rows}, {headDim})");
        if (ropeTable is { } rt && rt.Address % 16 != 0)
            throw new ArgumentException($"{n}: the rope table must be 16-byte aligned (the kernel reads it as float4).", nameof(ropeTable));

        var path = ChoosePath(q, ldq, qBatchStride, batch, rows, heads, kvHeads, headDim, out bool flashOk, out bool hopperOk, out string? notHopper);
        if (flashOk || Path is not (AttentionPath.Auto or AttentionPath.Simple))
            CheckTensorCoreAlignment(n, kCache.Address, vCache.Address, kvBatchStride, output.Address, outBatchStride, batch);
        if (path == AttentionPath.Hopper)
        {
            if (!hopperOk) throw new ArgumentException($"{n}: the wgmma kernel cannot run this launch: {notHopper ?? FlashMissing(headDim, batch * kvHeads)}.", nameof(Path));
            LaunchHopper(stream, q, ldq, qBatchStride, kCache, vCache, kvBatchStride, output, outBatchStride, batch, rows, heads, kvHeads, pos0, ropeTable);
            return;
        }
        if (ropeTable is not null)
            throw new ArgumentException($"{n}: only the wgmma kernel rotates queries as it loads them, and this launch takes {path} (ask RotatesQueriesOnLoad first).", nameof(ropeTable));
        if (path != AttentionPath.Simple && !flashOk)
            throw new ArgumentException($"{n}: the flash kernel cannot run this launch: {FlashMissing(headDim, batch * kvHeads)}.", nameof(Path));
        if (path == AttentionPath.Simple)
        {
            for (int b = 0; b < batch; b++)
                LaunchSimple(stream, q.Slice(b * qBatchStride), ldq, kCache.Slice(b * kvBatchStride), vCache.Slice(b * kvBatchStride),
                    output.Slice(b * outBatchStride), rows, heads, kvHeads, headDim, pos0);
            LastLaunch = ("attention_bf16", 1);
            return;
        }
        LaunchFlash(stream, q, ldq, qBatchStride, kCache, vCache, kvBatchStride, output, outBatchStride, batch, rows, heads, kvHeads, headDim, pos0, ShapeOf(path));
    }

    static void CheckHeads(string n, int heads, int kvHeads, int headDim)
    {
        KernelGuard.Positive(kvHeads, n, nameof(kvHeads));
        if (heads < kvHeads || heads % kvHeads != 0)
            throw new ArgumentOutOfRangeException(nameof(heads), heads, $"{n}: heads must be a multiple of kv_heads ({kvHeads}).");
        if (headDim < 1 || headDim > MaxHeadDim) throw new ArgumentOutOfRangeException(nameof(headDim), headDim, $"{n}: head_dim must be in 1..{MaxHeadDim}.");
    }

    static bool FlashApplies(int headDim) => headDim is 64 or 128 && CudaRuntime.Device.ComputeMajor >= 8;

    static string FlashMissing(int headDim, long pairs) => FlashApplies(headDim)
        ? $"{pairs} (sequence, KV head) pairs exceed the grid's 65535"
        : $"it needs head_dim 64 or 128 on sm_80+ (got head_dim {headDim}, {CudaRuntime.Device.Arch})";

    /// <summary>
    /// The tensor-core kernels copy K/V in 16-byte chunks and store outputs as bf16 pairs: caches (and each sequence's
    /// cache) must start on 16 bytes, outputs on 4. A misaligned pointer would fault the whole context, so say so here.
    /// </summary>
    static void CheckTensorCoreAlignment(string n, ulong k, ulong v, long kvBatchStride, ulong output, long outBatchStride, int batch)
    {
        if (k % 16 != 0 || v % 16 != 0 || (batch > 1 && kvBatchStride % 8 != 0))
            throw new ArgumentException($"{n}: K/V caches must start on 16-byte boundaries (and the cache batch stride be a multiple of 8 elements) for the tensor-core kernels.");
        if (output % 4 != 0 || (batch > 1 && outBatchStride % 2 != 0))
            throw new ArgumentException($"{n}: the output must start on a 4-byte boundary (and its batch stride be even) for the tensor-core kernels.");
    }

    /// <summary>
    /// Splits over the keys so that short steps (small chunks, decode without the fused path) still put
    /// <paramref name="ctasPerSm"/> CTAs on every SM (flash-decoding): 2 by default (not re-measured); 1 for the paged
    /// decode-only launches, the rule the single-sequence decode measured best with (<see cref="DecodeSplits"/>).
    /// </summary>
    static (int Splits, int KeysPerSplit) SplitKeys(long ctas, int maxKeys, int keyTile, int ctasPerSm = 2)
    {
        int keyTiles = Math.Max(1, (maxKeys + keyTile - 1) / keyTile);
        int splits = SplitsByCtas(ctas, maxKeys, keyTile, ctasPerSm);
        int tilesPerSplit = (keyTiles + splits - 1) / splits;
        splits = (keyTiles + tilesPerSplit - 1) / tilesPerSplit;
        return (splits, splits == 1 ? int.MaxValue / 2 : tilesPerSplit * keyTile);
    }

    /// <summary>
    /// Splits that bring <paramref name="ctas"/> up to <paramref name="ctasPerSm"/> per SM, at most one per key tile of
    /// <paramref name="maxKeys"/> and <see cref="MaxSplits"/>. Launches whose sequences divide their own keys on the
    /// device take this count as it is: rounding it to whole tiles of a bound far above the actual contexts (a graph's)
    /// would leave splits empty (a 2K context under a 4K bound: 11 of 16 splits busy instead of 17 of 17).
    /// </summary>
    static int SplitsByCtas(long ctas, int maxKeys, int keyTile, int ctasPerSm)
    {
        int keyTiles = Math.Max(1, (maxKeys + keyTile - 1) / keyTile);
        long target = (long)ctasPerSm * CudaRuntime.Device.MultiprocessorCount;
        return ctas < target ? (int)Math.Clamp((target + ctas - 1) / ctas, 1, Math.Min(keyTiles, MaxSplits)) : 1;
    }

    void LaunchFlash(CudaStream stream, DeviceSpan<float> q, int ldq, long qBatchStride, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache,
        long kvBatchStride, DeviceSpan<Bf16> output, long outBatchStride, int batch, int rows, int heads, int kvHeads, int headDim, int pos0, FlashShape shape)
    {
        string entry = "flash_attn_" + shape.Suffix(headDim);
        var k = Kernel(entry, shape.SharedBytes(headDim));
        int group = heads / kvHeads, bm = shape.RowsPerCta;
        long packedRows = (long)rows * group;
        int mTiles = (int)((packedRows + bm - 1) / bm);
        var (splits, keysPerSplit) = SplitKeys((long)mTiles * kvHeads * batch, pos0 + rows, shape.Keys);

        ulong pq = q.Address, pk = kCache.Address, pv = vCache.Address, po = output.Address, ppo = 0, plse = 0;
        if (splits > 1)
        {
            long partRows = (long)splits * batch * rows * heads;
            _partO = Grow(_partO, partRows * headDim);
            _partLse = Grow(_partLse, partRows);
            ppo = _partO.Address;
            plse = _partLse.Address;
        }
        float scaleLog2 = (float)(1.0 / Math.Sqrt(headDim)) * Log2E;
        long qbs = qBatchStride, kvbs = kvBatchStride, obs = outBatchStride;
        ulong noPosition = 0, noCounters = 0;
        void** args = stackalloc void*[] { &pq, &qbs, &ldq, &pk, &pv, &kvbs, &po, &obs, &ppo, &plse, &rows, &heads, &kvHeads, &pos0, &keysPerSplit, &scaleLog2,
            &noPosition, &noCounters };
        k.Launch(stream, ((uint)mTiles, (uint)(batch * kvHeads), (uint)splits), (uint)(32 * shape.Warps), (uint)shape.SharedBytes(headDim), args);
        if (splits > 1)
        {
            var c = Kernel("flash_attn_combine", 0);
            void** cargs = stackalloc void*[] { &ppo, &plse, &po, &obs, &batch, &rows, &heads, &headDim, &splits };
            c.Launch(stream, ((uint)((long)batch * rows * heads), 1, 1), (uint)headDim, 0, cargs);
        }
        LastLaunch = (entry, splits);
    }

    /// <summary>Largest grid.y of a launch.</summary>
    internal const int MaxGridY = 65535;

    void LaunchSimple(CudaStream stream, DeviceSpan<float> q, int ldq, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache,
        DeviceSpan<Bf16> output, int rows, int heads, int kvHeads, int headDim, int pos0, ulong positionAddress = 0)
    {
        var k = _kernels.TryGetValue("attention_bf16", out var kk) ? kk : _kernels["attention_bf16"] = library.Get("attention.cu", "attention_bf16");
        float scale = (float)(1.0 / Math.Sqrt(headDim));
        ulong pk = kCache.Address, pv = vCache.Address, pp = positionAddress;
        if (pp != 0 && rows > MaxGridY)
            throw new ArgumentOutOfRangeException(nameof(rows), rows, $"attention: at most {MaxGridY} rows with a device-side position.");
        // Rows go on grid.y (at most 65,535): longer prompts run in slices of rows, each at its own first position.
        ulong pq = 0, po = 0;
        int count = 0, p0 = 0;
        void** args = stackalloc void*[] { &pq, &ldq, &pk, &pv, &po, &count, &heads, &kvHeads, &headDim, &p0, &scale, &pp };
        for (int r0 = 0; r0 < rows; r0 += MaxGridY)
        {
            count = Math.Min(MaxGridY, rows - r0);
            p0 = pos0 + r0;
            pq = q.Address + (ulong)((long)r0 * ldq * sizeof(float));
            po = output.Address + (ulong)((long)r0 * heads * headDim * 2);
            k.Launch(stream, ((uint)heads, (uint)count, 1), 128, (uint)(headDim * sizeof(float)), args);
        }
    }

    /// <summary>Dynamic shared memory of a flash path (<see cref="AttentionPath.Simple"/> and Auto excluded).</summary>
    public static int SharedBytes(int headDim, AttentionPath path) => ShapeOf(path).SharedBytes(headDim);

    /// <summary>The compiled contiguous (or, with <paramref name="paged"/>, paged) flash entry point of a path, for benchmarks that print registers and spills.</summary>
    public CudaKernel FlashKernel(int headDim, AttentionPath path, bool paged = false)
    {
        var shape = ShapeOf(path);
        return Kernel((paged ? "flash_attn_paged_" : "flash_attn_") + shape.Suffix(headDim), shape.SharedBytes(headDim));
    }

    /// <summary>
    /// Benchmarks only: a module compiled from another version of attention_flash.cu (same entry points and
    /// parameters) that this launcher uses instead of the embedded one, so two kernel versions run in one process.
    /// </summary>
    internal CudaModule? FlashModuleOverride { get; init; }

    CudaKernel Kernel(string entry, int sharedBytes)
    {
        if (_kernels.TryGetValue(entry, out var k)) return k;
        k = FlashModuleOverride?.GetKernel(entry) ?? library.Get("attention_flash.cu", entry);
        if (sharedBytes > 48 * 1024)
        {
            k.SetAttribute(CudaKernel.AttrMaxDynamicSharedBytes, sharedBytes);
            k.SetAttribute(CudaKernel.AttrSharedCarveoutPercent, 100);
        }
        return _kernels[entry] = k;
    }

    /// <summary>Allocates the split-K scratch for steps up to <paramref name="batch"/> × <paramref name="rows"/> query rows.</summary>
    public void Reserve(int batch, int rows, int heads, int headDim)
    {
        long partRows = (long)MaxSplits * batch * rows * heads;
        _partO = Grow(_partO, partRows * headDim);
        _partLse = Grow(_partLse, partRows);
    }

    DeviceBuffer<float> Grow(DeviceBuffer<float>? b, long n)
    {
        if (b is not null && b.Length >= n) return b;
        if (b is not null) _retired.Add(b);
        return new DeviceBuffer<float>(Math.Max(n, (b?.Length ?? 0) * 2));
    }

    public void Dispose()
    {
        _partO?.Dispose();
        _partLse?.Dispose();
        _partO = _partLse = null;
        foreach (var b in _retired) b.Dispose();
        _retired.Clear();
        _counters?.Dispose();
        _counters = null;
        foreach (var b in _retiredCounters) b.Dispose();
        _retiredCounters.Clear();
    }
}
