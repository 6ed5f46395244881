// Launcher for native-kernels/silu_mul.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>out (rows, inter) bf16 = silu(gate) · up, with gate_up (rows, 2·inter) = [gate | up] in fp32 or bf16.</summary>
public sealed unsafe class SiluMulKernel(KernelLibrary library)
{
    readonly CudaKernel _k = library.Get("silu_mul.cu", "silu_mul_f32");
    readonly CudaKernel _kBf16 = library.Get("silu_mul.cu", "silu_mul_bf16");
    const int MaxGridY = 65535;

    /// <summary>bf16 [gate | up] (what the prefill GEMM writes); 16-byte vectors when inter % 8 == 0 and aligned.</summary>
    public void Launch(CudaStream stream, DeviceSpan<Bf16> gateUp, int rows, int inter, DeviceSpan<Bf16> output)
    {
        const string n = "silu_mul_bf16";
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(inter, n, nameof(inter));
        KernelGuard.Fits(gateUp, 2L * rows * inter, n, nameof(gateUp), $"({rows}, {2 * inter})");
        KernelGuard.Fits(output, (long)rows * inter, n, nameof(output), $"({rows}, {inter})");
        int vec = inter % 8 == 0 && gateUp.Address % 16 == 0 && output.Address % 16 == 0 ? 1 : 0;
        int perBlock = 256 * (vec == 1 ? 8 : 1);
        // Rows go on grid.y (at most 65,535): a longer prompt runs in slices of rows.
        ulong pg = 0, po = 0;
        int count = 0;
        void** args = stackalloc void*[] { &pg, &count, &inter, &po, &vec };
        for (int r0 = 0; r0 < rows; r0 += MaxGridY)
        {
            count = Math.Min(MaxGridY, rows - r0);
            pg = gateUp.Address + (ulong)(2L * r0 * inter * 2);
            po = output.Address + (ulong)((long)r0 * inter * 2);
            _kBf16.Launch(stream, ((uint)((inter + perBlock - 1) / perBlock), (uint)count, 1), 256, 0, args);
        }
    }

    public void Launch(CudaStream stream, DeviceSpan<float> gateUp, int rows, int inter, DeviceSpan<Bf16> output)
    {
        const string n = "silu_mul_f32";
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(inter, n, nameof(inter));
        KernelGuard.Fits(gateUp, 2L * rows * inter, n, nameof(gateUp), $"({rows}, {2 * inter})");
        KernelGuard.Fits(output, (long)rows * inter, n, nameof(output), $"({rows}, {inter})");
        ulong pg = 0, po = 0;
        int count = 0;
        void** args = stackalloc void*[] { &pg, &count, &inter, &po };
        for (int r0 = 0; r0 < rows; r0 += MaxGridY)
        {
            count = Math.Min(MaxGridY, rows - r0);
            pg = gateUp.Address + (ulong)(2L * r0 * inter * 4);
            po = output.Address + (ulong)((long)r0 * inter * 2);
            _k.Launch(stream, ((uint)((inter + 255) / 256), (uint)count, 1), 256, 0, args);
        }
    }
}
