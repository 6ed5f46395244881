// Launcher for native-kernels/weight_fp8.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>Dequantizes runs of an fp8 weight matrix to bf16 on the GPU (checkpoint loading).</summary>
public sealed unsafe class Fp8WeightKernel(KernelLibrary library)
{
    readonly CudaKernel _dequantize = library.Get("weight_fp8.cu", "dequantize_fp8_bf16");

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
