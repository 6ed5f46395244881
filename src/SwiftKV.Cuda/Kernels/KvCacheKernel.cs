// Launcher for native-kernels/kv_cache.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// Writes a step's K (bias + RoPE) and V (bias) rows, fp32 with row stride ld, into bf16 caches
/// (capacity, kv_heads, head_dim) at slots pos0 .. pos0 + rows - 1. With <c>positionBase</c> the first slot is read
/// on the device (replayable in a CUDA graph); the caller then guarantees it is in range, and pos0 is only checked.
/// </summary>
public sealed unsafe class KvCacheKernel(KernelLibrary library)
{
    readonly CudaKernel _k = library.Get("kv_cache.cu", "kv_write_bf16");

    public void Launch(CudaStream stream, DeviceSpan<float> k, DeviceSpan<float> v, int ld, DeviceSpan<float>? kBias, DeviceSpan<float>? vBias,
        DeviceSpan<float> invFreq, int rows, int kvHeads, int headDim, int pos0, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache, int capacity,
        DeviceSpan<int>? positionBase = null)
    {
        const string n = "kv_write_bf16";
        int kvDim = kvHeads * headDim;
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(kvHeads, n, nameof(kvHeads));
        if (headDim < 2 || headDim % 2 != 0) throw new ArgumentOutOfRangeException(nameof(headDim), headDim, $"{n}: head_dim must be even and >= 2.");
        if (ld < kvDim) throw new ArgumentOutOfRangeException(nameof(ld), ld, $"{n}: row stride must be >= kv_heads * head_dim ({kvDim}).");
        if (pos0 < 0 || (long)pos0 + rows > capacity)
            throw new ArgumentOutOfRangeException(nameof(pos0), $"{n}: slots {pos0}..{pos0 + rows - 1} are outside a cache of {capacity}.");
        long span = (long)(rows - 1) * ld + kvDim;
        KernelGuard.Fits(k, span, n, nameof(k), $"({rows}, {ld})");
        KernelGuard.Fits(v, span, n, nameof(v), $"({rows}, {ld})");
        KernelGuard.FitsOptional(kBias, kvDim, n, nameof(kBias), $"({kvDim})");
        KernelGuard.FitsOptional(vBias, kvDim, n, nameof(vBias), $"({kvDim})");
        KernelGuard.Fits(invFreq, headDim / 2, n, nameof(invFreq), $"({headDim / 2})");
        KernelGuard.Fits(kCache, (long)capacity * kvDim, n, nameof(kCache), $"({capacity}, {kvHeads}, {headDim})");
        KernelGuard.Fits(vCache, (long)capacity * kvDim, n, nameof(vCache), $"({capacity}, {kvHeads}, {headDim})");
        ulong pk = k.Address, pv = v.Address, pkb = KernelGuard.Address(kBias), pvb = KernelGuard.Address(vBias), pf = invFreq.Address;
        KernelGuard.FitsOptional(positionBase, 1, n, nameof(positionBase), "(1)");
        ulong ck = kCache.Address, cv = vCache.Address, pp = KernelGuard.Address(positionBase);
        void** args = stackalloc void*[] { &pk, &pv, &ld, &pkb, &pvb, &pf, &rows, &kvHeads, &headDim, &pos0, &ck, &cv, &pp };
        _k.Launch(stream, RowGrid.For(rows, kvHeads * (headDim / 2)), RowGrid.Threads, 0, args, library.ProgrammaticLaunch && RowGrid.ProgrammaticFor(rows));
    }
}
