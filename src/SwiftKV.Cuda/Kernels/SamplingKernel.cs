// Launcher for native-kernels/sampling.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// out[r] = a token drawn from softmax(logits row r / temperature) restricted by top-k then top-p, using the
/// uniform <c>u</c> in [0, 1) (row r uses frac(u + 0.618·r)). Same logits and u, same token. NaN logits count as -inf;
/// a row whose maximum is +inf gets its first +inf token; a row with nothing above -inf gets -1 (callers throw).
/// </summary>
public sealed unsafe class SamplingKernel
{
    // The threshold search's table: (16 cuts + 1) bins x 1024 threads of fp32 (SAMPLE_TABLE_BYTES in sampling.cu).
    const int TableBytes = 17 * 1024 * 4;
    // The cluster entries (sm_90+): SC_CTAS CTAs of SC_THREADS threads per row, each holding its table and its slice of
    // the row (SC_SLICE: a multiple of 4 floats) in shared memory.
    internal const int ClusterCtas = 8, ClusterThreads = 512;
    readonly CudaKernel _k, _rows, _bias, _mask;
    readonly CudaKernel? _clusterK, _clusterRows;
    int _clusterCheckedN = -1;
    bool _clusterFits;

    public SamplingKernel(KernelLibrary library)
    {
        _k = library.Get("sampling.cu", "sample_f32");
        _rows = library.Get("sampling.cu", "sample_rows_f32");
        _bias = library.Get("sampling.cu", "bias_logits_f32");
        _mask = library.Get("sampling.cu", "mask_logits_f32");
        foreach (var k in new[] { _k, _rows }) k.SetAttribute(CudaKernel.AttrMaxDynamicSharedBytes, TableBytes);
        if (CudaRuntime.Device.ComputeMajor >= 9)
        {
            _clusterK = library.Get("sampling.cu", "sample_cluster_f32");
            _clusterRows = library.Get("sampling.cu", "sample_rows_cluster_f32");
        }
        UseClusters = _clusterK is not null;
    }

    /// <summary>
    /// Whether rows are sampled by the cluster entries (one cluster of 8 CTAs per row, the row in their shared memory:
    /// 66 against 289 us for a 128K row at top-p 0.9 on the H100) where the device has them (sm_90+) and a row's slice
    /// fits; else one CTA per row.
    /// On by default where available; benchmarks and tests switch it to compare.
    /// </summary>
    public bool UseClusters
    {
        get => _useClusters;
        set => _useClusters = value && _clusterK is not null;
    }
    bool _useClusters;

    internal static int ClusterSharedBytes(int n) => (17 * ClusterThreads + ((n + 4 * ClusterCtas - 1) / (4 * ClusterCtas)) * 4) * 4;

    // Whether the cluster entries take rows of n logits here: their shared memory fits a CTA and a cluster fits the GPU.
    // The check for the last n and the entries' shared-memory attribute are per instance and unlocked: each backend owns
    // its SamplingKernel and runs one step at a time.
    bool ClusterTakes(int n, int rows)
    {
        if (!_useClusters || rows > 65535) return false;
        if (n == _clusterCheckedN) return _clusterFits;
        int bytes = ClusterSharedBytes(n);
        try
        {
            foreach (var k in new[] { _clusterK!, _clusterRows! }) k.SetAttribute(CudaKernel.AttrMaxDynamicSharedBytes, bytes);
            _clusterFits = _clusterRows!.MaxActiveClusters(ClusterCtas, ClusterThreads, (uint)bytes) >= 1
                && _clusterK!.MaxActiveClusters(ClusterCtas, ClusterThreads, (uint)bytes) >= 1;
        }
        catch (CudaException e) when (!e.IsOutOfMemory)
        {
            _clusterFits = false;   // more shared memory than a CTA may have: the one-CTA entries read the row from L2
        }
        _clusterCheckedN = n;
        return _clusterFits;
    }

    /// <summary>
    /// Samples row r with its own parameters: <paramref name="parameters"/> (rows, 3) floats (1 / temperature, top_p,
    /// u in [0, 1)) and <paramref name="topK"/> (rows); the token is the one <see cref="Launch"/> gives for that row
    /// with u_r = u. A row whose 1 / temperature is 0 is not written (greedy: the caller's argmax stays in
    /// <paramref name="output"/>). The parameters are device data: the caller checks them on the host.
    /// </summary>
    public void LaunchRows(CudaStream stream, DeviceSpan<float> logits, int rows, int n, DeviceSpan<float> parameters, DeviceSpan<int> topK, DeviceSpan<int> output)
    {
        const string name = "sample_rows_f32";
        KernelGuard.Positive(rows, name, nameof(rows));
        KernelGuard.Positive(n, name, nameof(n));
        KernelGuard.Fits(logits, (long)rows * n, name, nameof(logits), $"({rows}, {n})");
        KernelGuard.Fits(parameters, 3L * rows, name, nameof(parameters), $"({rows}, 3)");
        KernelGuard.Fits(topK, rows, name, nameof(topK), $"({rows})");
        KernelGuard.Fits(output, rows, name, nameof(output), $"({rows})");
        ulong pl = logits.Address, pp = parameters.Address, pk = topK.Address, po = output.Address;
        void** args = stackalloc void*[] { &pl, &n, &pp, &pk, &po };
        if (ClusterTakes(n, rows)) _clusterRows!.Launch(stream, (ClusterCtas, (uint)rows, 1), ClusterThreads, (uint)ClusterSharedBytes(n), args);
        else _rows.Launch(stream, ((uint)rows, 1, 1), 1024, TableBytes, args);
    }

    /// <summary>
    /// logits[row, token] += delta for each of <paramref name="count"/> entries: <paramref name="entries"/> (count, 2)
    /// ints (row, token), <paramref name="deltas"/> (count) floats. Device data: the caller checks on the host that
    /// every row is below the logits' rows, every token below <paramref name="n"/>, and no (row, token) repeats.
    /// </summary>
    public void LaunchBias(CudaStream stream, DeviceSpan<float> logits, int rows, int n, DeviceSpan<int> entries, DeviceSpan<float> deltas, int count)
    {
        const string name = "bias_logits_f32";
        KernelGuard.Positive(rows, name, nameof(rows));
        KernelGuard.Positive(n, name, nameof(n));
        KernelGuard.Positive(count, name, nameof(count));
        KernelGuard.Fits(logits, (long)rows * n, name, nameof(logits), $"({rows}, {n})");
        KernelGuard.Fits(entries, 2L * count, name, nameof(entries), $"({count}, 2)");
        KernelGuard.Fits(deltas, count, name, nameof(deltas), $"({count})");
        ulong pl = logits.Address, pe = entries.Address, pd = deltas.Address;
        void** args = stackalloc void*[] { &pl, &n, &pe, &pd, &count };
        _bias.Launch(stream, ((uint)((count + 255) / 256), 1, 1), 256, 0, args);
    }

    /// <summary>
    /// Row rows[j] of <paramref name="logits"/> keeps logit i only where allowed[j, i] is nonzero, else -inf:
    /// <paramref name="rows"/> (count) ints, <paramref name="allowed"/> (count, n) bytes. Device data: the caller checks
    /// on the host that every row is below the logits' rows.
    /// </summary>
    public void LaunchMask(CudaStream stream, DeviceSpan<float> logits, int rowCount, int n, DeviceSpan<int> rows, DeviceSpan<byte> allowed, int count)
    {
        const string name = "mask_logits_f32";
        KernelGuard.Positive(rowCount, name, nameof(rowCount));
        KernelGuard.Positive(n, name, nameof(n));
        KernelGuard.Positive(count, name, nameof(count));
        KernelGuard.Fits(logits, (long)rowCount * n, name, nameof(logits), $"({rowCount}, {n})");
        KernelGuard.Fits(rows, count, name, nameof(rows), $"({count})");
        KernelGuard.Fits(allowed, (long)count * n, name, nameof(allowed), $"({count}, {n})");
        if (count > 65535) throw new ArgumentOutOfRangeException(nameof(count), count, $"{name}: at most 65535 masked rows a launch (grid.y).");
        ulong pl = logits.Address, pr = rows.Address, pa = allowed.Address;
        void** args = stackalloc void*[] { &pl, &n, &pr, &pa };
        _mask.Launch(stream, ((uint)((n + 1023) / 1024), (uint)count, 1), 256, 0, args);
    }

    /// <summary>Samples one token per row; topK 0 = no top-k filter, topP 1 = no nucleus filter (must be in (0, 1]).</summary>
    public void Launch(CudaStream stream, DeviceSpan<float> logits, int rows, int n, float temperature, int topK, float topP, float u, DeviceSpan<int> output)
    {
        const string name = "sample_f32";
        KernelGuard.Positive(rows, name, nameof(rows));
        KernelGuard.Positive(n, name, nameof(n));
        if (!(temperature > 0) || float.IsInfinity(temperature) || float.IsInfinity(1f / temperature))
            throw new ArgumentOutOfRangeException(nameof(temperature), temperature, $"{name}: temperature must be finite, > 0 and have a finite inverse (use argmax for greedy).");
        ArgumentOutOfRangeException.ThrowIfNegative(topK);
        if (!(topP > 0 && topP <= 1)) throw new ArgumentOutOfRangeException(nameof(topP), topP, $"{name}: top_p must be in (0, 1].");
        if (!(u >= 0 && u < 1)) throw new ArgumentOutOfRangeException(nameof(u), u, $"{name}: u must be in [0, 1).");
        KernelGuard.Fits(logits, (long)rows * n, name, nameof(logits), $"({rows}, {n})");
        KernelGuard.Fits(output, rows, name, nameof(output), $"({rows})");
        float invT = 1f / temperature;
        ulong pl = logits.Address, po = output.Address;
        void** args = stackalloc void*[] { &pl, &n, &invT, &topK, &topP, &u, &po };
        if (ClusterTakes(n, rows)) _clusterK!.Launch(stream, (ClusterCtas, (uint)rows, 1), ClusterThreads, (uint)ClusterSharedBytes(n), args);
        else _k.Launch(stream, ((uint)rows, 1, 1), 1024, TableBytes, args);
    }
}
