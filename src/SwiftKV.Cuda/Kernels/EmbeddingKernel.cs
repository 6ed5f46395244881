// Launcher for native-kernels/embedding.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>out (rows, hidden) fp32 = table (vocab, hidden) bf16 rows picked by ids.</summary>
public sealed unsafe class EmbeddingKernel(KernelLibrary library)
{
    readonly CudaKernel _k = library.Get("embedding.cu", "embedding_bf16");

    /// <summary>Ids must already be checked against the vocabulary (the kernel trusts them).</summary>
    public void Launch(CudaStream stream, DeviceSpan<int> ids, DeviceSpan<Bf16> table, int vocab, DeviceSpan<float> output, int rows, int hidden)
    {
        const string n = "embedding_bf16";
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(hidden, n, nameof(hidden));
        KernelGuard.Fits(ids, rows, n, nameof(ids), $"({rows})");
        KernelGuard.Fits(table, (long)vocab * hidden, n, nameof(table), $"({vocab}, {hidden})");
        KernelGuard.Fits(output, (long)rows * hidden, n, nameof(output), $"({rows}, {hidden})");
        ulong i = ids.Address, t = table.Address, o = output.Address;
        void** args = stackalloc void*[] { &i, &t, &o, &rows, &hidden };
        _k.Launch(stream, ((uint)rows, 1, 1), 256, 0, args);
    }
}
