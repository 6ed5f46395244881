// Launcher for native-kernels/sampling.cu.
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// out[r] = a token drawn from softmax(logits row r / temperature) restricted by top-k then top-p, using the
/// uniform <c>u</c> in [0, 1) (row r uses frac(u + 0.618·r)). Same logits and u, same token. NaN logits count as -inf;
/// a row whose maximum is +inf gets its first +inf token; a row with nothing above -inf gets -1 (callers throw).
/// </summary>
public sealed unsafe class SamplingKernel
{
    // The threshold search's bins per thread: SEARCH_CUTS + 1 in sampling.cu.
    const int SearchBins = 17;
    // The one-CTA entries' table: SearchBins x SAMPLE_THREADS (1024) fp32 (SAMPLE_TABLE_BYTES).
    const int TableBytes = SearchBins * 1024 * 4;
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
            // The cluster shape is the one compiled in (SC_CTAS, SC_THREADS may be overridden through
            // SWIFTKV_NVRTC_DEFINES): read back from both entries, so launches always match their kernels.
            (ClusterCtas, ClusterThreads) = ClusterShape(_clusterK);
            if (ClusterShape(_clusterRows) != (ClusterCtas, ClusterThreads))
                throw new InvalidOperationException($"sampling.cu: sample_cluster_f32 is built for {ClusterCtas} x {ClusterThreads} threads but sample_rows_cluster_f32 for {ClusterShape(_clusterRows)}.");
        }
        UseClusters = _clusterK is not null;
    }

    /// <summary>The cluster entries' CTAs per row (SC_CTAS) and threads per CTA (SC_THREADS); 0 without them.</summary>
    internal int ClusterCtas { get; }
    internal int ClusterThreads { get; }

    static (int Ctas, int Threads) ClusterShape(CudaKernel k)
    {
        int ctas = k.GetAttribute(CudaKernel.AttrRequiredClusterWidth), threads = k.GetAttribute(CudaKernel.AttrMaxThreadsPerBlock);
        if (ctas < 1 || threads < 32 || threads % 32 != 0)
            throw new InvalidOperationException($"sampling.cu: {k.Name} reports a cluster of {ctas} CTAs x {threads} threads; expected __cluster_dims__ and __launch_bounds__ of a whole number of warps.");
        return (ctas, threads);
    }

    /// <summary>
    /// Whether rows are sampled by the cluster entries (one cluster per row, 8 CTAs as built by default, the row in their shared memory:
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

    /// <summary>
    /// Dynamic shared memory of a cluster entry built for <paramref name="ctas"/> x <paramref name="threads"/> over rows of
    /// <paramref name="n"/> logits: the search's bins per thread, then the CTA's slice (SC_SLICE: a multiple of 4 floats).
    /// </summary>
    internal static int ClusterSharedBytes(int ctas, int threads, int n) => (SearchBins * threads + (n + 4 * ctas - 1) / (4 * ctas) * 4) * 4;

    int ClusterSharedBytes(int n) => ClusterSharedBytes(ClusterCtas, ClusterThreads, n);

    // Whether the cluster entries take rows of n logits here: their shared memory fits a CTA and a cluster fits the GPU.
    // The check for the last n and the entries' shared-memory attribute are per instance and unlocked: each backend owns
    // its SamplingKernel and runs one step at a time.
    internal bool ClusterTakes(int n, int rows)
    {
        if (!_useClusters || rows > 65535) return false;
        if (n == _clusterCheckedN) return _clusterFits;
        int bytes = ClusterSharedBytes(n);
        try
        {
            foreach (var k in new[] { _clusterK!, _clusterRows! }) k.SetAttribute(CudaKernel.AttrMaxDynamicSharedBytes, bytes);
            _clusterFits = _clusterRows!.MaxActiveClusters((uint)ClusterCtas, (uint)ClusterThreads, (uint)bytes) >= 1
                && _clusterK!.MaxActiveClusters((uint)ClusterCtas, (uint)ClusterThreads, (uint)bytes) >= 1;
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
        if (ClusterTakes(n, rows)) _clusterRows!.Launch(stream, ((uint)ClusterCtas, (uint)rows, 1), (uint)ClusterThreads, (uint)ClusterSharedBytes(n), args);
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
    /// Row rows[j] of <paramref name="logits"/> keeps logit i only where bit i of mask j is set, else -inf:
    /// <paramref name="rows"/> (count) ints, <paramref name="allowed"/> (count, <see cref="MaskWords"/>(n)) words as
    /// <see cref="PackMask"/> writes them. Device data: the caller checks on the host that every row is below the
    /// logits' rows.
    /// </summary>
    public void LaunchMask(CudaStream stream, DeviceSpan<float> logits, int rowCount, int n, DeviceSpan<int> rows, DeviceSpan<uint> allowed, int count)
    {
        const string name = "mask_logits_f32";
        KernelGuard.Positive(rowCount, name, nameof(rowCount));
        KernelGuard.Positive(n, name, nameof(n));
        KernelGuard.Positive(count, name, nameof(count));
        int words = MaskWords(n);
        KernelGuard.Fits(logits, (long)rowCount * n, name, nameof(logits), $"({rowCount}, {n})");
        KernelGuard.Fits(rows, count, name, nameof(rows), $"({count})");
        KernelGuard.Fits(allowed, (long)count * words, name, nameof(allowed), $"({count}, {words})");
        if (count > 65535) throw new ArgumentOutOfRangeException(nameof(count), count, $"{name}: at most 65535 masked rows a launch (grid.y).");
        ulong pl = logits.Address, pr = rows.Address, pa = allowed.Address;
        void** args = stackalloc void*[] { &pl, &n, &pr, &pa, &words };
        _mask.Launch(stream, ((uint)((n + 255) / 256), (uint)count, 1), 256, 0, args);
    }

    /// <summary>32-bit words of one row's mask over <paramref name="n"/> tokens.</summary>
    public static int MaskWords(int n) => (n + 31) / 32;

    /// <summary>
    /// Packs a row's allowed tokens into the bits <see cref="LaunchMask"/> reads: token i is bit (i % 32) of word i / 32;
    /// the last word's bits past the row stay clear.
    /// </summary>
    public static void PackMask(ReadOnlySpan<bool> allowed, Span<uint> bits)
    {
        int words = MaskWords(allowed.Length);
        if (bits.Length < words) throw new ArgumentException($"a mask of {allowed.Length} tokens needs {words} words; got {bits.Length}.", nameof(bits));
        // A bool's byte is 0 or 1 in .NET, but any nonzero byte counts as allowed here, as `if (b)` would read it.
        var bytes = MemoryMarshal.AsBytes(allowed);
        int w = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; 32 * (w + 1) <= bytes.Length; w++)
            {
                var v = Vector256.Create<byte>(bytes.Slice(32 * w, 32));
                bits[w] = ~Vector256.Equals(v, Vector256<byte>.Zero).ExtractMostSignificantBits();
            }
        for (; w < words; w++)
        {
            uint v = 0;
            for (int i = 32 * w, end = Math.Min(bytes.Length, i + 32); i < end; i++)
                if (bytes[i] != 0) v |= 1u << (i - 32 * w);
            bits[w] = v;
        }
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
        if (ClusterTakes(n, rows)) _clusterK!.Launch(stream, ((uint)ClusterCtas, (uint)rows, 1), (uint)ClusterThreads, (uint)ClusterSharedBytes(n), args);
        else _k.Launch(stream, ((uint)rows, 1, 1), 1024, TableBytes, args);
    }
}
