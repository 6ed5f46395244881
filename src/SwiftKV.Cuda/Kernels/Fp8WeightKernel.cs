// Launcher for native-kernels/weight_fp8.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// Dequantizes fp8 weights to bf16 on the GPU: runs of a checkpoint's matrix as it loads, and whole e4m3 matrices the
/// engine keeps as codes (<see cref="E4m3Rows"/>), into a scratch before a GEMM.
/// </summary>
public sealed unsafe class Fp8WeightKernel(KernelLibrary library)
{
    readonly CudaKernel _dequantize = library.Get("weight_fp8.cu", "dequantize_fp8_bf16");
    CudaKernel? _rows;

    /// <summary>Whether <see cref="DequantizeRows"/> takes a matrix of <paramref name="columns"/> columns at these addresses.</summary>
    public static bool TakesRows(E4m3Rows w, long columns, DeviceSpan<Bf16> output) =>
        columns % 16 == 0 && w.Codes.Address % 16 == 0 && output.Address % 16 == 0;

    /// <summary>output (rows, columns) = bf16(value(code) · scale of its row): the values the loader would have written.</summary>
    public void DequantizeRows(CudaStream stream, E4m3Rows w, long rows, long columns, DeviceSpan<Bf16> output)
    {
        const string n = "dequantize_e4m3_rows_bf16";
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(columns, n, nameof(columns));
        KernelGuard.Fits(w.Codes, rows * columns, n, "codes", $"({rows}, {columns})");
        KernelGuard.Fits(w.Scales, rows, n, "scales", $"({rows})");
        KernelGuard.Fits(output, rows * columns, n, nameof(output), $"({rows}, {columns})");
        if (!TakesRows(w, columns, output))
            throw new ArgumentException($"{n}: needs columns % 16 == 0 (columns = {columns}) and 16-byte aligned codes and output.", nameof(w));
        var k = _rows ??= library.Get("weight_fp8.cu", n);
        ulong c = w.Codes.Address, s = w.Scales.Address, o = output.Address;
        void** args = stackalloc void*[] { &c, &s, &rows, &columns, &o };
        long chunks = rows * columns / 16;
        k.Launch(stream, ((uint)Math.Clamp((chunks + 255) / 256, 1, 132 * 16), 1, 1), 256, 0, args);
    }

    /// <summary>
    /// output[i] = bf16(table[codes[i]] · scale) for i &lt; output.Length, where element first + i of the row-major matrix of
    /// <paramref name="columns"/> columns takes scales[(row / blockRows) · scaleColumns + column / blockColumns].
    /// </summary>
    public void Dequantize(CudaStream stream, DeviceSpan<byte> codes, long first, DeviceSpan<float> table, DeviceSpan<float> scales,
        long columns, int blockRows, int blockColumns, int scaleColumns, DeviceSpan<Bf16> output)
    {
        if (codes.Length < output.Length) throw new ArgumentException($"{codes.Length} codes cannot fill {output.Length} outputs.", nameof(codes));
        if (table.Length < 256) throw new ArgumentException("the fp8 table needs 256 values.", nameof(table));
        if (columns <= 0 || blockRows <= 0 || blockColumns <= 0 || scaleColumns <= 0)
            throw new ArgumentOutOfRangeException(nameof(columns), "columns, block sizes and scale columns must be positive.");
        long n = output.Length;
        ulong c = codes.Address, t = table.Address, s = scales.Address, o = output.Address;
        void** args = stackalloc void*[] { &c, &n, &first, &t, &s, &columns, &blockRows, &blockColumns, &scaleColumns, &o };
        // Grid-stride loop: a fixed cap of 132 x 64 blocks (RandomFillKernel's) keeps any card busy; more only adds blocks.
        _dequantize.Launch(stream, ((uint)Math.Clamp((n + 255) / 256, 1, 132 * 64), 1, 1), 256, 0, args);
    }
}
