// The loading rule shared by the launchers of the warp-specialised Hopper GEMMs (gemm_swiglu.cu, gemm_qkv.cu): an entry
// compiled on first use, with its shared memory, and launchable only where a cluster of two such CTAs fits.
namespace SwiftKV.Cuda.Kernels;

sealed class ClusterGemmEntry(KernelLibrary library, string file, string entry, int threads, int sharedBytes, int clusterSize)
{
    CudaKernel? _k;
    int _clusters;
    string? _unavailable;

    /// <summary>The loaded entry (after <see cref="IsAvailable"/> said yes).</summary>
    public CudaKernel Kernel => _k ?? throw new InvalidOperationException($"{entry} is not loaded (ask IsAvailable first).");

    /// <summary>Clusters that run at once on this device (one CTA per SM): the persistent grid.</summary>
    public int Clusters => _clusters;

    /// <summary>
    /// Whether the entry can be launched here: it compiles and loads on first call, and at least one cluster with its
    /// shared memory fits on the device (a MIG slice or a partitioned GPU may hold none). Callers fall back to their
    /// cuBLAS route when it cannot; <paramref name="why"/> says why not (also after a compile or load failure, which is
    /// remembered, so the fallback runs instead of every step retrying and failing). Running out of memory while loading
    /// is not remembered: it reaches the caller, and the next call tries again.
    /// </summary>
    public bool IsAvailable(out string? why)
    {
        if (_k is null && _unavailable is null)
        {
            try
            {
                var k = library.Get(file, entry);
                k.SetAttribute(CudaKernel.AttrMaxDynamicSharedBytes, sharedBytes);
                _clusters = k.MaxActiveClusters((uint)clusterSize, (uint)threads, (uint)sharedBytes);
                if (_clusters < 1) _unavailable = $"no cluster of {clusterSize} CTAs with {sharedBytes} bytes of shared memory fits on this device";
                else _k = k;
            }
            catch (Exception e) when (e is EntryPointNotFoundException || e is CudaException { IsOutOfMemory: false })
            {
                _unavailable = $"{e.GetType().Name}: {e.Message.Split('\n')[0]}";
            }
        }
        why = _unavailable;
        return _k is not null;
    }

    /// <summary>
    /// Launches the persistent grid for <paramref name="units"/> cluster tiles: one cluster per unit up to the clusters
    /// that fit at once (<see cref="Clusters"/>), each walking its share of the rest.
    /// </summary>
    public unsafe void Launch(CudaStream stream, long units, void** args)
    {
        uint grid = (uint)(Math.Min(units, Clusters) * clusterSize);
        Kernel.Launch(stream, (grid, 1, 1), (uint)threads, (uint)sharedBytes, args);
    }
}
