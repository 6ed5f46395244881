// Launcher for native-kernels/gemm_swiglu.cu: the prefill MLP's [gate; up] GEMM with SwiGLU in its epilogue on Hopper
// (TMA + wgmma, warp-specialised, clusters of two CTAs sharing the weight tiles). It replaces cuBLAS's [gate | up]
// output and the silu pass that read it back (silu_mul.cu) for prefill-sized steps on sm_90a.
using SwiftKV.Cuda.Native;

namespace SwiftKV.Cuda.Kernels;

public sealed unsafe class GemmSwigluKernel(KernelLibrary library)
{
    const string Entry = "gemm_swiglu_bf16";
    // The kernel's constants: 384 threads (a producer and two consumer warpgroups), 128 x 128 gated output tiles (128
    // rows of x against 128 gate and 128 up rows of W), 64-wide k steps, 4 stages of 48 KB, clusters of 2 along M.
    const int Threads = 384, TileRows = 128, TileCols = 128, TileK = 64, Stages = 4, Cluster = 2;
    // Shared memory (GG_SMEM_BYTES): the stages, the epilogue's staging panels (2 warpgroups x 64 rows x 128 bf16
    // columns, stored by TMA in 64 x 64 boxes), the mbarriers, 1 KB for the 1024-byte alignment of the swizzle.
    const int OutBoxRows = 64, OutBoxCols = 64;
    const int SharedBytes = Stages * (TileRows * TileK * 2 + 2 * TileCols * TileK * 2) + TileRows * TileCols * 2 + 2 * Stages * 8 + 1024;

    readonly ClusterGemmEntry _entry = new(library, "gemm_swiglu.cu", Entry, Threads, SharedBytes, Cluster);

    /// <summary>Launches so far (tests check that a path really took this kernel).</summary>
    public long Launches { get; private set; }

    /// <summary>
    /// Whether the kernel can run on this device and shapes: sm_90a (wgmma, TMA multicast), and 16-byte aligned rows
    /// (TMA strides: hidden and inter multiples of 8, aligned base addresses). <paramref name="why"/> says what is missing.
    /// </summary>
    public static bool Applies(DeviceSpan<Bf16> x, int hidden, DeviceSpan<Bf16> gateUp, int inter, DeviceSpan<Bf16> output, out string? why)
    {
        why = CudaRuntime.Device.Arch != "sm_90a" ? $"it needs sm_90a (this device is {CudaRuntime.Device.Arch})"
            : hidden % 8 != 0 || inter % 8 != 0 ? $"it needs hidden and intermediate sizes that are multiples of 8 (got {hidden}, {inter})"
            : x.Address % 16 != 0 || gateUp.Address % 16 != 0 || output.Address % 16 != 0 ? "it needs 16-byte aligned tensors"
            : null;
        return why is null;
    }

    /// <summary>
    /// Whether the kernel can be launched at all here (<see cref="ClusterGemmEntry.IsAvailable"/>); callers fall back
    /// to cuBLAS + the silu pass when it cannot.
    /// </summary>
    public bool IsAvailable(out string? why) => _entry.IsAvailable(out why);

    /// <summary>
    /// output (rows, inter) bf16 = silu(x · Wgᵀ) ⊙ (x · Wuᵀ) with x (rows, hidden) bf16 and gateUp = [Wg; Wu]
    /// (2 inter, hidden) bf16, fp32 accumulation, one rounding to bf16.
    /// </summary>
    public void Launch(CudaStream stream, DeviceSpan<Bf16> x, int rows, int hidden, DeviceSpan<Bf16> gateUp, int inter, DeviceSpan<Bf16> output)
    {
        KernelGuard.Positive(rows, Entry, nameof(rows));
        KernelGuard.Positive(hidden, Entry, nameof(hidden));
        KernelGuard.Positive(inter, Entry, nameof(inter));
        KernelGuard.Fits(x, (long)rows * hidden, Entry, nameof(x), $"({rows}, {hidden})");
        KernelGuard.Fits(gateUp, 2L * inter * hidden, Entry, nameof(gateUp), $"({2 * inter}, {hidden})");
        KernelGuard.Fits(output, (long)rows * inter, Entry, nameof(output), $"({rows}, {inter})");
        if (!Applies(x, hidden, gateUp, inter, output, out var why)) throw new NotSupportedException($"{Entry}: {why}.");
        if (!IsAvailable(out why)) throw new NotSupportedException($"{Entry}: {why}.");
        var mapX = CuDriver.EncodeBf16Rows(x.Address, rows, hidden, TileRows, TileK);
        var mapGate = CuDriver.EncodeBf16Rows(gateUp.Address, inter, hidden, TileCols, TileK);
        var mapUp = CuDriver.EncodeBf16Rows(gateUp.Address + (ulong)(2L * inter * hidden), inter, hidden, TileCols, TileK);
        long units = (long)((rows + TileRows * Cluster - 1) / (TileRows * Cluster)) * ((inter + TileCols - 1) / TileCols);
        var mapOut = CuDriver.EncodeBf16Rows(output.Address, rows, inter, OutBoxRows, OutBoxCols);
        void** args = stackalloc void*[] { &mapX, &mapGate, &mapUp, &mapOut, &rows, &inter, &hidden };
        _entry.Launch(stream, units, args);
        Launches++;
    }
}
