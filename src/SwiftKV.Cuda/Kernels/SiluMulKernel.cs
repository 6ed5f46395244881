// Launcher for native-kernels/silu_mul.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>out (rows, inter) bf16 = silu(gate) · up, with gate_up (rows, 2·inter) = [gate | up] in fp32 or bf16.</summary>
public sealed unsafe class SiluMulKernel(KernelLibrary library)
{
    readonly CudaKernel _k = library.Get("silu_mul.cu", "silu_mul_f32");
    readonly CudaKernel _kBf16 = library.Get("silu_mul.cu", "silu_mul_bf16");

    /// <summary>bf16 [gate | up] (what the prefill GEMM writes); 16-byte vectors when inter % 8 == 0 and aligned.</summary>
    public void Launch(CudaStream stream, DeviceSpan<Bf16> gateUp, int rows, int inter, DeviceSpan<Bf16> output)
    {
        const string n = "silu_mul_bf16";
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(inter, n, nameof(inter));
        KernelGuard.Fits(gateUp, 2L * rows * inter, n, nameof(gateUp), $"({rows}, {2 * inter})");
        KernelGuard.Fits(output, (long)rows * inter, n, nameof(output), $"({rows}, {inter})");
        ulong pg = gateUp.Address, po = output.Address;
        int vec = inter % 8 == 0 && pg % 16 == 0 && po % 16 == 0 ? 1 : 0;
        int perBlock = 256 * (vec == 1 ? 8 : 1);
        void** args = stackalloc void*[] { &pg, &rows, &inter, &po, &vec };
        _kBf16.Launch(stream, ((uint)((inter + perBlock - 1) / perBlock), (uint)rows, 1), 256, 0, args);
    }

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
