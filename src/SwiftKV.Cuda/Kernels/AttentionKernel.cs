// Launcher for causal GQA attention: native-kernels/attention_flash.cu (tensor cores, head_dim 64/128, split-K for
// short steps) with native-kernels/attention.cu (scalar, any head_dim) as the fallback.
namespace SwiftKV.Cuda.Kernels;

/// <summary>Which attention kernel a launch uses.</summary>
public enum AttentionPath
{
    /// <summary>Flash kernel where it applies (head_dim 64/128, sm_80+), otherwise the scalar kernel.</summary>
    Auto,
    /// <summary>The scalar reference kernel (one thread per key; any head_dim).</summary>
    Simple,
    /// <summary>Flash kernel, 4 warps = 64 packed query rows per CTA.</summary>
    Flash4Warps,
    /// <summary>Flash kernel, 8 warps = 128 packed query rows per CTA.</summary>
    Flash8Warps,
}

/// <summary>
/// Causal GQA attention: q (rows, ldq) fp32 rotated queries, row r at position pos0 + r, over bf16 caches
/// (capacity, kv_heads, head_dim) holding at least pos0 + rows tokens; out (rows, heads · head_dim) bf16.
/// Owns a split-K scratch buffer (grown on demand, never per call once the largest shape has run). A grown buffer
/// keeps the old one alive until Dispose, so a CUDA graph captured earlier never points at freed memory; call
/// <see cref="Reserve"/> before capturing to size it once.
/// </summary>
public sealed unsafe class AttentionKernel(KernelLibrary library) : IDisposable
{
    /// <summary>Largest head_dim the kernel handles (4 output dims per thread × 128 threads).</summary>
    public const int MaxHeadDim = 512;
    /// <summary>Keys per K/V tile of the flash kernel (a split covers a whole number of tiles).</summary>
    public const int KeyTile = 64;
    const int MaxSplits = 64;
    const float Log2E = 1.4426950408889634f;

    readonly Dictionary<string, CudaKernel> _kernels = new();
    readonly List<DeviceBuffer<float>> _retired = new();
    DeviceBuffer<float>? _partO, _partLse;

    /// <summary>Kernel choice; <see cref="AttentionPath.Auto"/> unless a test or benchmark pins one.</summary>
    public AttentionPath Path { get; set; } = AttentionPath.Auto;

    /// <summary>Entry point and split count of the last launch (for logs and benchmarks).</summary>
    public (string Kernel, int Splits) LastLaunch { get; private set; }

    /// <summary>One sequence: the engine's per-layer call.</summary>
    public void Launch(CudaStream stream, DeviceSpan<float> q, int ldq, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache, int capacity,
        DeviceSpan<Bf16> output, int rows, int heads, int kvHeads, int headDim, int pos0)
        => LaunchBatched(stream, q, ldq, (long)rows * ldq, kCache, vCache, (long)capacity * kvHeads * headDim, capacity,
            output, (long)rows * heads * headDim, 1, rows, heads, kvHeads, headDim, pos0);

    /// <summary>
    /// <paramref name="batch"/> sequences at the same positions: sequence b's queries start at q + b·qBatchStride, its
    /// caches at k/v + b·kvBatchStride (each (capacity, kv_heads, head_dim)), its output at output + b·outBatchStride.
    /// </summary>
    public void LaunchBatched(CudaStream stream, DeviceSpan<float> q, int ldq, long qBatchStride, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache,
        long kvBatchStride, int capacity, DeviceSpan<Bf16> output, long outBatchStride, int batch, int rows, int heads, int kvHeads, int headDim, int pos0)
    {
        const string n = "attention";
        KernelGuard.Positive(batch, n, nameof(batch));
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(kvHeads, n, nameof(kvHeads));
        if (heads < kvHeads || heads % kvHeads != 0)
            throw new ArgumentOutOfRangeException(nameof(heads), heads, $"{n}: heads must be a multiple of kv_heads ({kvHeads}).");
        if (headDim < 1 || headDim > MaxHeadDim) throw new ArgumentOutOfRangeException(nameof(headDim), headDim, $"{n}: head_dim must be in 1..{MaxHeadDim}.");
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

        var path = Path;
        bool flashOk = headDim is 64 or 128 && CudaRuntime.Device.ComputeMajor >= 8 && (long)batch * kvHeads <= 65535;
        if (path == AttentionPath.Auto) path = flashOk ? AttentionPath.Flash4Warps : AttentionPath.Simple;
        if (path != AttentionPath.Simple && !flashOk)
            throw new ArgumentException($"{n}: the flash kernel needs head_dim 64 or 128 on sm_80+ (got head_dim {headDim}, {CudaRuntime.Device.Arch}).", nameof(headDim));
        if (path == AttentionPath.Simple)
        {
            for (int b = 0; b < batch; b++)
                LaunchSimple(stream, q.Slice(b * qBatchStride), ldq, kCache.Slice(b * kvBatchStride), vCache.Slice(b * kvBatchStride),
                    output.Slice(b * outBatchStride), rows, heads, kvHeads, headDim, pos0);
            LastLaunch = ("attention_bf16", 1);
            return;
        }
        LaunchFlash(stream, q, ldq, qBatchStride, kCache, vCache, kvBatchStride, output, outBatchStride, batch, rows, heads, kvHeads, headDim, pos0,
            path == AttentionPath.Flash8Warps ? 8 : 4);
    }

    void LaunchFlash(CudaStream stream, DeviceSpan<float> q, int ldq, long qBatchStride, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache,
        long kvBatchStride, DeviceSpan<Bf16> output, long outBatchStride, int batch, int rows, int heads, int kvHeads, int headDim, int pos0, int warps)
    {
        string entry = $"flash_attn_d{headDim}_w{warps}";
        var k = Kernel(entry, sharedBytes: SharedBytes(headDim));
        int group = heads / kvHeads, bm = 16 * warps;
        long packedRows = (long)rows * group;
        int mTiles = (int)((packedRows + bm - 1) / bm);
        long ctas = (long)mTiles * kvHeads * batch;
        int keyTiles = (pos0 + rows + KeyTile - 1) / KeyTile;
        // Short steps (decode, small chunks) cannot fill the GPU with row tiles: split the keys too (flash-decoding).
        int sms = CudaRuntime.Device.MultiprocessorCount, splits = 1;
        if (ctas < 2L * sms)
            splits = (int)Math.Clamp((2L * sms + ctas - 1) / ctas, 1, Math.Min(keyTiles, MaxSplits));
        int tilesPerSplit = (keyTiles + splits - 1) / splits;
        splits = (keyTiles + tilesPerSplit - 1) / tilesPerSplit;
        int keysPerSplit = splits == 1 ? int.MaxValue / 2 : tilesPerSplit * KeyTile;

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
        void** args = stackalloc void*[] { &pq, &qbs, &ldq, &pk, &pv, &kvbs, &po, &obs, &ppo, &plse, &rows, &heads, &kvHeads, &pos0, &keysPerSplit, &scaleLog2 };
        k.Launch(stream, ((uint)mTiles, (uint)(batch * kvHeads), (uint)splits), (uint)(32 * warps), (uint)SharedBytes(headDim), args);
        if (splits > 1)
        {
            var c = Kernel("flash_attn_combine", 0);
            void** cargs = stackalloc void*[] { &ppo, &plse, &po, &obs, &batch, &rows, &heads, &headDim, &splits };
            c.Launch(stream, ((uint)((long)batch * rows * heads), 1, 1), (uint)headDim, 0, cargs);
        }
        LastLaunch = (entry, splits);
    }

    void LaunchSimple(CudaStream stream, DeviceSpan<float> q, int ldq, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache,
        DeviceSpan<Bf16> output, int rows, int heads, int kvHeads, int headDim, int pos0)
    {
        var k = _kernels.TryGetValue("attention_bf16", out var kk) ? kk : _kernels["attention_bf16"] = library.Get("attention.cu", "attention_bf16");
        float scale = (float)(1.0 / Math.Sqrt(headDim));
        ulong pq = q.Address, pk = kCache.Address, pv = vCache.Address, po = output.Address;
        void** args = stackalloc void*[] { &pq, &ldq, &pk, &pv, &po, &rows, &heads, &kvHeads, &headDim, &pos0, &scale };
        k.Launch(stream, ((uint)heads, (uint)rows, 1), 128, (uint)(headDim * sizeof(float)), args);
    }

    /// <summary>Dynamic shared memory of the flash kernel: 2 stages × (K, V) × 64 keys × (head_dim + 8) bf16.</summary>
    public static int SharedBytes(int headDim) => 2 * 2 * KeyTile * (headDim + 8) * 2;

    /// <summary>The compiled flash entry point (for benchmarks that print registers and spills).</summary>
    public CudaKernel FlashKernel(int headDim, int warps) => Kernel($"flash_attn_d{headDim}_w{warps}", SharedBytes(headDim));

    CudaKernel Kernel(string entry, int sharedBytes)
    {
        if (_kernels.TryGetValue(entry, out var k)) return k;
        k = library.Get("attention_flash.cu", entry);
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
    }
}
