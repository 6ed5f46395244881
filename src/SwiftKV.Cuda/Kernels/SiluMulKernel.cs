// Launcher for native-kernels/silu_mul.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>out (rows, inter) bf16 = silu(gate) · up, with gate_up (rows, 2·inter) fp32 = [gate | up].</summary>
public sealed unsafe class SiluMulKernel(KernelLibrary library)
{
    readonly CudaKernel _k = library.Get("silu_mul.cu", "silu_mul_f32");

    public void Launch(CudaStream stream, DeviceSpan<float> gateUp, int rows, int inter, DeviceSpan<Bf16> output)
    {
        const string n = "silu_mul_f32";
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(inter, n, nameof(inter));
        KernelGuard.Fits(gateUp, 2L * rows * inter, n, nameof(gateUp), $"({rows}, {2 * inter})");
        KernelGuard.Fits(output, (long)rows * inter, n, nameof(output), $"({rows}, {inter})");
        ulong pg = gateUp.Address, po = output.Address;
        void** args = stackalloc void*[] { &pg, &rows, &inter, &po };
        _k.Launch(stream, ((uint)((inter + 255) / 256), (uint)rows, 1), 256, 0, args);
    }
}
