// Launcher for native-kernels/attention.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// Causal GQA attention: q (rows, ldq) fp32 rotated queries, row r at position pos0 + r, over bf16 caches
/// (capacity, kv_heads, head_dim) holding at least pos0 + rows tokens; out (rows, heads · head_dim) bf16.
/// </summary>
public sealed unsafe class AttentionKernel(KernelLibrary library)
{
    /// <summary>Largest head_dim the kernel handles (4 output dims per thread × 128 threads).</summary>
    public const int MaxHeadDim = 512;
    readonly CudaKernel _k = library.Get("attention.cu", "attention_bf16");

    public void Launch(CudaStream stream, DeviceSpan<float> q, int ldq, DeviceSpan<Bf16> kCache, DeviceSpan<Bf16> vCache, int capacity,
        DeviceSpan<Bf16> output, int rows, int heads, int kvHeads, int headDim, int pos0)
    {
        const string n = "attention_bf16";
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(kvHeads, n, nameof(kvHeads));
        if (heads < kvHeads || heads % kvHeads != 0)
            throw new ArgumentOutOfRangeException(nameof(heads), heads, $"{n}: heads must be a multiple of kv_heads ({kvHeads}).");
        if (headDim < 1 || headDim > MaxHeadDim) throw new ArgumentOutOfRangeException(nameof(headDim), headDim, $"{n}: head_dim must be in 1..{MaxHeadDim}.");
        if (ldq < heads * headDim) throw new ArgumentOutOfRangeException(nameof(ldq), ldq, $"{n}: row stride must be >= heads * head_dim ({heads * headDim}).");
        if (pos0 < 0 || (long)pos0 + rows > capacity)
            throw new ArgumentOutOfRangeException(nameof(pos0), $"{n}: positions {pos0}..{pos0 + rows - 1} are outside a cache of {capacity}.");
        long kvDim = (long)kvHeads * headDim;
        KernelGuard.Fits(q, (long)(rows - 1) * ldq + heads * headDim, n, nameof(q), $"({rows}, {ldq})");
        KernelGuard.Fits(kCache, capacity * kvDim, n, nameof(kCache), $"({capacity}, {kvHeads}, {headDim})");
        KernelGuard.Fits(vCache, capacity * kvDim, n, nameof(vCache), $"({capacity}, {kvHeads}, {headDim})");
        KernelGuard.Fits(output, (long)rows * heads * headDim, n, nameof(output), $"({rows}, {heads * headDim})");
        float scale = (float)(1.0 / Math.Sqrt(headDim));
        ulong pq = q.Address, pk = kCache.Address, pv = vCache.Address, po = output.Address;
        void** args = stackalloc void*[] { &pq, &ldq, &pk, &pv, &po, &rows, &heads, &kvHeads, &headDim, &pos0, &scale };
        _k.Launch(stream, ((uint)heads, (uint)rows, 1), 128, (uint)(headDim * sizeof(float)), args);
    }
}
