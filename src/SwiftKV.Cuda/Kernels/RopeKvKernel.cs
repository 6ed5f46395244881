// Launcher for native-kernels/rope_kv.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// One pass over a fused [q | k | v] projection (rows, ld) fp32: bias + RoPE on q in place, and K (bias + RoPE) and
/// V (bias) stored bf16 into caches (capacity, kv_heads, head_dim) at slots pos0 .. pos0 + rows - 1 (or from
/// positionBase[0], read on the device: replayable in a CUDA graph; the caller then guarantees the range).
/// With a rope table, q is left unrotated (and must have no bias) and the rows' angles go to the table instead,
/// (rows, head_dim) fp32: cos of the head_dim/2 pairs, then their sin, for an attention launch that rotates q as it
/// loads it (AttentionKernel.Launch's ropeTable).
/// </summary>
public sealed unsafe class RopeKvKernel(KernelLibrary library)
{
    readonly CudaKernel _k = library.Get("rope_kv.cu", "rope_qkv_write_bf16");
    readonly KernelLibrary _library = library;

    public void Launch(CudaStream stream, DeviceSpan<float> qkv, int ld, DeviceSpan<float>? qBias, DeviceSpan<float>? kBias, DeviceSpan<float>? vBias,
        DeviceSpan<float> invFreq, int rows, int heads, int kvHeads, int headDim, int pos0, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache, int capacity,
        DeviceSpan<int>? positionBase = null, DeviceSpan<float>? ropeTable = null)
    {
        const string n = "rope_qkv_write_bf16";
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(heads, n, nameof(heads));
        KernelGuard.Positive(kvHeads, n, nameof(kvHeads));
        if (headDim < 2 || headDim % 2 != 0) throw new ArgumentOutOfRangeException(nameof(headDim), headDim, $"{n}: head_dim must be even and >= 2.");
        int qDim = heads * headDim, kvDim = kvHeads * headDim;
        if (ld < qDim + 2 * kvDim) throw new ArgumentOutOfRangeException(nameof(ld), ld, $"{n}: row stride must be >= q + 2 kv ({qDim + 2 * kvDim}).");
        if (pos0 < 0 || (long)pos0 + rows > capacity)
            throw new ArgumentOutOfRangeException(nameof(pos0), $"{n}: slots {pos0}..{pos0 + rows - 1} are outside a cache of {capacity}.");
        KernelGuard.Fits(qkv, (long)(rows - 1) * ld + qDim + 2 * kvDim, n, nameof(qkv), $"({rows}, {ld})");
        KernelGuard.FitsOptional(qBias, qDim, n, nameof(qBias), $"({qDim})");
        KernelGuard.FitsOptional(kBias, kvDim, n, nameof(kBias), $"({kvDim})");
        KernelGuard.FitsOptional(vBias, kvDim, n, nameof(vBias), $"({kvDim})");
        KernelGuard.Fits(invFreq, headDim / 2, n, nameof(invFreq), $"({headDim / 2})");
        KernelGuard.Fits(kCache, (long)capacity * kvDim, n, nameof(kCache), $"({capacity}, {kvHeads}, {headDim})");
        KernelGuard.Fits(vCache, (long)capacity * kvDim, n, nameof(vCache), $"({capacity}, {kvHeads}, {headDim})");
        KernelGuard.FitsOptional(positionBase, 1, n, nameof(positionBase), "(1)");
        KernelGuard.FitsOptional(ropeTable, (long)rows * headDim, n, nameof(ropeTable), $"({rows}, {headDim})");
        if (ropeTable is not null && qBias is not null)
            throw new ArgumentException($"{n}: a q bias cannot be added when q is left for the attention kernel to rotate (rope table given).", nameof(qBias));
        ulong pq = qkv.Address, pqb = KernelGuard.Address(qBias), pkb = KernelGuard.Address(kBias), pvb = KernelGuard.Address(vBias), pf = invFreq.Address;
        ulong ck = kCache.Address, cv = vCache.Address, pp = KernelGuard.Address(positionBase), pt = KernelGuard.Address(ropeTable);
        void** args = stackalloc void*[] { &pq, &ld, &pqb, &pkb, &pvb, &pf, &rows, &heads, &kvHeads, &headDim, &pos0, &ck, &cv, &pp, &pt };
        int qUnits = ropeTable is null ? heads : 1;
        _k.Launch(stream, RowGrid.For(rows, (qUnits + kvHeads) * (headDim / 2)), RowGrid.Threads, 0, args, _library.ProgrammaticLaunch);
    }
}
