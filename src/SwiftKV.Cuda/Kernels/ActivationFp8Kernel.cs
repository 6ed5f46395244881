// Launcher for native-kernels/activation_fp8.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// Quantizes activation rows to e4m3 codes with one fp32 scale per row (per-token dynamic scaling), the input of a W8A8
/// GEMM: bf16 rows as they are, after SwiGLU, or fp32 residual rows after RMSNorm (<see cref="Cublas.TryLinearE4m3(E4m3Rows, int, int, E4m3Rows, int, DeviceSpan{float}, bool)"/>).
/// </summary>
public sealed unsafe class ActivationFp8Kernel(KernelLibrary library)
{
    CudaKernel? _quantize, _siluQuantize, _normQuantize;
    // Dynamic shared memory each kernel may take so far (up to 48 KB with its static part needs no opt-in).
    int _siluSharedBytes = 32 << 10, _normSharedBytes = 32 << 10;

    /// <summary>Whether the GPU converts to e4m3 in hardware (sm_89+), which the kernel needs.</summary>
    public static bool Supported(CudaDeviceInfo device) => device.ComputeMajor * 10 + device.ComputeMinor >= 89;

    static void RequireSupported(string kernel)
    {
        if (!Supported(CudaRuntime.Device))
            throw new NotSupportedException($"{kernel}: converting to e4m3 needs sm_89 or later; {CudaRuntime.Device} is {CudaRuntime.Device.Arch}.");
    }

    /// <summary>Whether <see cref="QuantizeRows"/> takes rows of <paramref name="columns"/> at these addresses.</summary>
    public static bool Takes(ulong xAddress, int columns, E4m3Rows output) =>
        columns % 16 == 0 && xAddress % 16 == 0 && output.Codes.Address % 16 == 0;

    /// <summary>
    /// output.Codes (rows, columns) = e4m3(x · 448 / amax(row)) and output.Scales[row] = amax(row) / 448 (1, with zero
    /// codes, for a row whose amax is below 1e-30, where 448 / amax would overflow): codes · scale reproduce x to e4m3's
    /// 3 mantissa bits.
    /// </summary>
    public void QuantizeRows(CudaStream stream, DeviceSpan<Bf16> x, long rows, int columns, E4m3Rows output)
    {
        const string n = "quantize_rows_e4m3";
        RequireSupported(n);
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

    /// <summary>
    /// The W8A8 MLP's SwiGLU and down_proj's input in one pass: output = <see cref="QuantizeRows"/> of silu(gate) · up
    /// (rows, inter), the bf16 values <see cref="SiluMulKernel"/> writes, from a bf16 [gate | up] (rows, 2·inter); the
    /// bf16 row stays in shared memory (inter · 2 bytes).
    /// </summary>
    public void SiluMulQuantize(CudaStream stream, DeviceSpan<Bf16> gateUp, long rows, int inter, E4m3Rows output)
    {
        const string n = "silu_mul_quantize_e4m3";
        RequireSupported(n);
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(inter, n, nameof(inter));
        KernelGuard.Fits(gateUp, 2 * rows * inter, n, nameof(gateUp), $"({rows}, {2L * inter})");
        KernelGuard.Fits(output.Codes, rows * inter, n, "codes", $"({rows}, {inter})");
        KernelGuard.Fits(output.Scales, rows, n, "scales", $"({rows})");
        if (!Takes(gateUp.Address, inter, output))
            throw new ArgumentException($"{n}: needs inter % 16 == 0 (inter = {inter}) and 16-byte aligned [gate | up] and codes.", nameof(gateUp));
        uint shared = checked((uint)inter * 2);
        var k = _siluQuantize ??= library.Get("activation_fp8.cu", n);
        AllowShared(k, shared, ref _siluSharedBytes);
        ulong g = gateUp.Address, c = output.Codes.Address, s = output.Scales.Address;
        void** args = stackalloc void*[] { &g, &rows, &inter, &c, &s };
        k.Launch(stream, ((uint)Math.Min(rows, 65535), 1, 1), 256, shared, args);
    }

    /// <summary>Whether <see cref="RmsNormQuantize"/> takes rows of <paramref name="dim"/> at these addresses.</summary>
    public static bool TakesRmsNorm(ulong xAddress, ulong biasAddress, ulong weightAddress, int dim, E4m3Rows output) =>
        Takes(xAddress, dim, output) && (biasAddress | weightAddress) % 16 == 0;

    /// <summary>
    /// A W8A8 GEMM's input straight from the residual stream: x (rows, dim) fp32 += bias (optional, in place), then
    /// output = <see cref="QuantizeRows"/> of the bf16 rows <see cref="RmsNormKernel"/> would write, RMSNorm(x) · weight,
    /// bit for bit; those bf16 rows stay in shared memory (dim · 2 bytes). Launched programmatically like the norm kernel.
    /// </summary>
    public void RmsNormQuantize(CudaStream stream, DeviceSpan<float> x, DeviceSpan<float>? bias, DeviceSpan<float> weight, int rows, int dim,
        float eps, E4m3Rows output)
    {
        const string n = "rms_norm_quantize_e4m3";
        RequireSupported(n);
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(dim, n, nameof(dim));
        KernelGuard.Fits(x, (long)rows * dim, n, nameof(x), $"({rows}, {dim})");
        KernelGuard.FitsOptional(bias, dim, n, nameof(bias), $"({dim})");
        KernelGuard.Fits(weight, dim, n, nameof(weight), $"({dim})");
        KernelGuard.Fits(output.Codes, (long)rows * dim, n, "codes", $"({rows}, {dim})");
        KernelGuard.Fits(output.Scales, rows, n, "scales", $"({rows})");
        ulong px = x.Address, pb = KernelGuard.Address(bias), pw = weight.Address, c = output.Codes.Address, s = output.Scales.Address;
        if (!TakesRmsNorm(px, pb, pw, dim, output))
            throw new ArgumentException($"{n}: needs dim % 16 == 0 (dim = {dim}) and 16-byte aligned x, bias, weight and codes.", nameof(x));
        uint shared = checked((uint)dim * 2);
        var k = _normQuantize ??= library.Get("activation_fp8.cu", n);
        AllowShared(k, shared, ref _normSharedBytes);
        void** args = stackalloc void*[] { &px, &pb, &pw, &rows, &dim, &eps, &c, &s };
        k.Launch(stream, ((uint)rows, 1, 1), 256, shared, args, library.ProgrammaticLaunch);
    }

    /// <summary>Opts <paramref name="k"/> in to <paramref name="shared"/> bytes of dynamic shared memory past what it may take so far.</summary>
    static void AllowShared(CudaKernel k, uint shared, ref int allowed)
    {
        if (shared <= allowed) return;
        k.SetAttribute(CudaKernel.AttrMaxDynamicSharedBytes, (int)shared);   // fails for a row past the GPU's shared memory
        allowed = (int)shared;
    }
}
