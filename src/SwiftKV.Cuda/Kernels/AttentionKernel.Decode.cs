// The decode-sized launch of the contiguous attention kernels (native-kernels/attention_flash.cu, attention.cu) as a
// single-graph decode step needs it: the position may live in device memory, the split count depends only on the
// shapes and the cache capacity (never on the position, so a captured graph stays right as the context grows, and a
// direct launch at the same step takes the same splits and gives the same bits), the kernel divides the keys over
// the splits itself, and the split combine is fused into the attention kernel (the last CTA of each row tile merges
// the partials), so a decode layer has one attention launch instead of two.
namespace SwiftKV.Cuda.Kernels;

public sealed unsafe partial class AttentionKernel
{
    readonly List<DeviceBuffer<int>> _retiredCounters = new();
    DeviceBuffer<int>? _counters;

    /// <summary>
    /// Causal GQA attention of one sequence's short step: q (rows, ldq) fp32 rotated queries, row r at position
    /// p + r, over bf16 caches (capacity, kv_heads, head_dim); out (rows, heads · head_dim) bf16. p is
    /// <paramref name="pos0"/>, or, when <paramref name="positionBase"/> is given, positionBase[0] read on the device
    /// (the caller then guarantees p + rows &lt;= capacity). <paramref name="fuseCombine"/> off launches the separate
    /// combine kernel instead (tests compare the two). <paramref name="programmatic"/>: programmatic launch (the
    /// flash kernels wait on the device before reading anything). Scratch and counters grow on the first launch of
    /// a shape: run one launch of each shape before capturing a graph.
    /// </summary>
    public void LaunchDecode(CudaStream stream, DeviceSpan<float> q, int ldq, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache, int capacity,
        DeviceSpan<Bf16> output, int rows, int heads, int kvHeads, int headDim, int pos0, DeviceSpan<int>? positionBase = null,
        bool fuseCombine = true, bool programmatic = false)
    {
        const string n = "decode attention";
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(capacity, n, nameof(capacity));
        CheckHeads(n, heads, kvHeads, headDim);
        if (ldq < heads * headDim) throw new ArgumentOutOfRangeException(nameof(ldq), ldq, $"{n}: row stride must be >= heads * head_dim ({heads * headDim}).");
        if (positionBase is { } pb) KernelGuard.Fits(pb, 1, n, nameof(positionBase), "(1)");
        else if (pos0 < 0 || (long)pos0 + rows > capacity)
            throw new ArgumentOutOfRangeException(nameof(pos0), $"{n}: positions {pos0}..{pos0 + rows - 1} are outside a cache of {capacity}.");
        if (rows > capacity) throw new ArgumentOutOfRangeException(nameof(rows), rows, $"{n}: {rows} rows do not fit a cache of {capacity}.");
        long kvDim = (long)kvHeads * headDim, outRow = (long)heads * headDim;
        KernelGuard.Fits(q, (long)(rows - 1) * ldq + outRow, n, nameof(q), $"({rows}, {ldq})");
        KernelGuard.Fits(kCache, capacity * kvDim, n, nameof(kCache), $"({capacity}, {kvHeads}, {headDim})");
        KernelGuard.Fits(vCache, capacity * kvDim, n, nameof(vCache), $"({capacity}, {kvHeads}, {headDim})");
        KernelGuard.Fits(output, rows * outRow, n, nameof(output), $"({rows}, {outRow})");
        ulong positionAddress = KernelGuard.Address(positionBase);

        int group = heads / kvHeads;
        var path = Path;
        bool flashOk = FlashApplies(headDim);
        if (path == AttentionPath.Hopper)
            throw new ArgumentException($"{n}: the wgmma kernel has no decode entry (no split-K, no device-side position); use Auto or a flash path.", nameof(Path));
        if (path == AttentionPath.Auto) path = flashOk ? AutoFlash((long)rows * group) : AttentionPath.Simple;
        if (path != AttentionPath.Simple && !flashOk)
            throw new ArgumentException($"{n}: the flash kernel needs head_dim 64 or 128 on sm_80+ (got head_dim {headDim}, {CudaRuntime.Device.Arch}).", nameof(headDim));
        if (path == AttentionPath.Simple)
        {
            LaunchSimple(stream, q, ldq, kCache, vCache, output, rows, heads, kvHeads, headDim, pos0, positionAddress);
            LastLaunch = ("attention_bf16", 1);
            return;
        }

        var shape = ShapeOf(path);
        string entry = "flash_attn_" + shape.Suffix(headDim);
        var k = Kernel(entry, shape.SharedBytes(headDim));
        int mTiles = (int)(((long)rows * group + shape.RowsPerCta - 1) / shape.RowsPerCta);
        int splits = DecodeSplits((long)mTiles * kvHeads, capacity, shape.Keys, _decodeSplitsOverride);
        // <= 0: the kernel divides the keys of the actual position over the splits.
        int keysPerSplit = splits == 1 ? int.MaxValue / 2 : 0;

        ulong pq = q.Address, pk = kCache.Address, pv = vCache.Address, po = output.Address, ppo = 0, plse = 0, pc = 0;
        if (splits > 1)
        {
            long partRows = (long)splits * rows * heads;
            _partO = Grow(_partO, partRows * headDim);
            _partLse = Grow(_partLse, partRows);
            ppo = _partO.Address;
            plse = _partLse.Address;
            if (fuseCombine)
            {
                _counters = GrowCounters(stream, _counters, (long)mTiles * kvHeads);
                pc = _counters.Address;
            }
        }
        float scaleLog2 = (float)(1.0 / Math.Sqrt(headDim)) * Log2E;
        long qbs = (long)rows * ldq, kvbs = capacity * kvDim, obs = rows * outRow;
        void** args = stackalloc void*[] { &pq, &qbs, &ldq, &pk, &pv, &kvbs, &po, &obs, &ppo, &plse, &rows, &heads, &kvHeads, &pos0, &keysPerSplit, &scaleLog2,
            &positionAddress, &pc };
        k.Launch(stream, ((uint)mTiles, (uint)kvHeads, (uint)splits), (uint)(32 * shape.Warps), (uint)shape.SharedBytes(headDim), args,
            programmatic && library.ProgrammaticLaunch);
        if (splits > 1 && !fuseCombine)
        {
            var c = Kernel("flash_attn_combine", 0);
            int batch = 1;
            void** cargs = stackalloc void*[] { &ppo, &plse, &po, &obs, &batch, &rows, &heads, &headDim, &splits };
            c.Launch(stream, ((uint)((long)rows * heads), 1, 1), (uint)headDim, 0, cargs);
        }
        LastLaunch = (entry, splits);
    }

    /// <summary>
    /// Splits of a decode launch: <paramref name="pinned"/> when set (capped at one per key tile of the cache), else
    /// enough CTAs for one per SM, at most one per key tile of the cache's capacity and <see cref="MaxSplits"/>; a
    /// function of the shapes only, so every step of a sequence takes the same count.
    /// (Measured on the H100, 8B, batch 1, 2K context, `swiftkv bench --decode-splits`: 11-22 splits 6.07 ms/token,
    /// 33 = two CTAs per SM 6.12-6.15, 4 splits 6.24.)
    /// </summary>
    internal static int DecodeSplits(long ctas, int capacity, int keyTile, int pinned = 0)
    {
        int capacityTiles = Math.Max(1, (capacity + keyTile - 1) / keyTile);
        if (pinned > 0) return Math.Min(pinned, capacityTiles);   // DecodeSplitsOverride
        long sms = CudaRuntime.Device.MultiprocessorCount;
        if (ctas >= sms) return 1;
        return (int)Math.Clamp((sms + ctas - 1) / ctas, 1, Math.Min(capacityTiles, MaxSplits));
    }

    /// <summary>
    /// The split counters, zeroed on the stream when allocated (the fused combine re-arms each one it uses; a copy on
    /// the legacy stream would not be ordered with a non-blocking stream). An outgrown buffer stays alive until
    /// Dispose for graphs that captured it.
    /// </summary>
    DeviceBuffer<int> GrowCounters(CudaStream stream, DeviceBuffer<int>? b, long n)
    {
        if (b is not null && b.Length >= n) return b;
        var grown = new DeviceBuffer<int>(Math.Max(n, (b?.Length ?? 0) * 2));
        try
        {
            stream.FillAsync(grown, 0);
        }
        catch
        {
            grown.Dispose();
            throw;
        }
        if (b is not null) _retiredCounters.Add(b);
        return grown;
    }
}
