// Launcher for native-kernels/argmax.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>out[r] = argmax of x (rows, n) row r (lowest index on ties).</summary>
public sealed unsafe class ArgmaxKernel(KernelLibrary library)
{
    readonly CudaKernel _k = library.Get("argmax.cu", "argmax_f32");

    public void Launch(CudaStream stream, DeviceSpan<float> x, int rows, int n, DeviceSpan<int> output)
    {
        const string name = "argmax_f32";
        KernelGuard.Positive(rows, name, nameof(rows));
        KernelGuard.Positive(n, name, nameof(n));
        KernelGuard.Fits(x, (long)rows * n, name, nameof(x), $"({rows}, {n})");
        KernelGuard.Fits(output, rows, name, nameof(output), $"({rows})");
        ulong px = x.Address, po = output.Address;
        void** args = stackalloc void*[] { &px, &rows, &n, &po };
        _k.Launch(stream, ((uint)rows, 1, 1), 1024, 0, args);
    }
}
