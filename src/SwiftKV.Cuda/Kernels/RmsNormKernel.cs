// Launcher for native-kernels/rms_norm.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>x (rows, dim) fp32 += bias (optional, in place); out (rows, dim) bf16 = RMSNorm(x) · weight.</summary>
public sealed unsafe class RmsNormKernel(KernelLibrary library)
{
    readonly CudaKernel _k = library.Get("rms_norm.cu", "rms_norm_f32");
    readonly KernelLibrary _library = library;

    public void Launch(CudaStream stream, DeviceSpan<float> x, DeviceSpan<float>? bias, DeviceSpan<float> weight, DeviceSpan<Bf16> output,
        int rows, int dim, float eps)
    {
        const string n = "rms_norm_f32";
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(dim, n, nameof(dim));
        KernelGuard.Fits(x, (long)rows * dim, n, nameof(x), $"({rows}, {dim})");
        KernelGuard.FitsOptional(bias, dim, n, nameof(bias), $"({dim})");
        KernelGuard.Fits(weight, dim, n, nameof(weight), $"({dim})");
        KernelGuard.Fits(output, (long)rows * dim, n, nameof(output), $"({rows}, {dim})");
        ulong px = x.Address, pb = KernelGuard.Address(bias), pw = weight.Address, po = output.Address;
        void** args = stackalloc void*[] { &px, &pb, &pw, &po, &rows, &dim, &eps };
        _k.Launch(stream, ((uint)rows, 1, 1), 256, 0, args, _library.ProgrammaticLaunch);
    }
}
