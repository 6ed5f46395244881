// Launcher for native-kernels/activation_fp8.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// Quantizes bf16 activation rows to e4m3 codes with one fp32 scale per row (per-token dynamic scaling), the input of
/// a W8A8 GEMM (<see cref="Cublas.TryLinearE4m3(E4m3Rows, int, int, E4m3Rows, int, DeviceSpan{float}, bool)"/>).
/// </summary>
public sealed unsafe class ActivationFp8Kernel(KernelLibrary library)
{
    CudaKernel? _quantize;

    /// <summary>Whether the GPU converts to e4m3 in hardware (sm_89+), which the kernel needs.</summary>
    public static bool Supported(CudaDeviceInfo device) => device.ComputeMajor * 10 + device.ComputeMinor >= 89;

    /// <summary>Whether <see cref="QuantizeRows"/> takes rows of <paramref name="columns"/> at these addresses.</summary>
    public static bool Takes(ulong xAddress, int columns, E4m3Rows output) =>
        columns % 16 == 0 && xAddress % 16 == 0 && output.Codes.Address % 16 == 0;

    /// <summary>
    /// output.Codes (rows, columns) = e4m3(x · 448 / amax(row)) and output.Scales[row] = amax(row) / 448 (1 for a row of
    /// zeros): codes · scale reproduce x to e4m3's 3 mantissa bits.
    /// </summary>
    public void QuantizeRows(CudaStream stream, DeviceSpan<Bf16> x, long rows, int columns, E4m3Rows output)
    {
        const string n = "quantize_rows_e4m3";
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(columns, n, nameof(columns));
        KernelGuard.Fits(x, rows * columns, n, nameof(x), $"({rows}, {columns})");
        KernelGuard.Fits(output.Codes, rows * columns, n, "codes", $"({rows}, {columns})");
        KernelGuard.Fits(output.Scales, rows, n, "scales", $"({rows})");
        if (!Takes(x.Address, columns, output))
            throw new ArgumentException($"{n}: needs columns % 16 == 0 (columns = {columns}) and 16-byte aligned x and codes.", nameof(x));
        var k = _quantize ??= library.Get("activation_fp8.cu", n);
        ulong xa = x.Address, c = output.Codes.Address, s = output.Scales.Address;
        void** args = stackalloc void*[] { &xa, &rows, &columns, &c, &s };
        k.Launch(stream, ((uint)Math.Min(rows, 65535), 1, 1), 256, 0, args);
    }
}
