// Launcher for native-kernels/gemm_e4m3_rows.cu: steps of MinRows..MaxRows rows (batched decode) over matrices held as
// e4m3 codes with row scales, each code read once and multiplied on bf16 tensor cores, instead of a dequantize pass
// into a bf16 scratch and a cuBLAS GEMM over it (the route above the e4m3 GEMV's rows before it).
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// y (rows, out) fp32 [+]= x (rows, in) bf16 · (codes · scale)ᵀ, and the SwiGLU form out (rows, inter) bf16 =
/// silu(x · Wgᵀ) · (x · Wuᵀ) over an e4m3 [gate; up], for rows ≤ <see cref="MaxRows"/>; mma.sync, so sm_80+.
/// </summary>
public sealed unsafe class E4m3RowsGemmKernel(KernelLibrary library)
{
    /// <summary>Most rows one launch handles (four 16-row MMA fragments).</summary>
    public const int MaxRows = 64;

    const uint Block = 256;
    const int Chunk = 64;
    readonly CudaKernel?[] _kernels = new CudaKernel?[2 * 5];

    /// <summary>Whether these operands are taken: in % 64 == 0, 16-byte aligned x and codes, and mma.sync's sm_80+.</summary>
    public static bool Takes(ulong xAddress, E4m3Rows w, int inDim) =>
        inDim % Chunk == 0 && xAddress % 16 == 0 && w.Codes.Address % 16 == 0 && CudaRuntime.Device.ComputeMajor >= 8;

    CudaKernel Kernel(bool silu, int rows)
    {
        int fragments = (rows + 15) / 16;
        return _kernels[(silu ? 5 : 0) + fragments] ??= library.Get("gemm_e4m3_rows.cu", $"{(silu ? "gemm_silu_e4m3_rows" : "gemm_e4m3_rows")}_m{fragments}");
    }

    static void Check(string n, DeviceSpan<Bf16> x, int rows, int inDim, E4m3Rows w, int outDim)
    {
        if (rows < 1 || rows > MaxRows) throw new ArgumentOutOfRangeException(nameof(rows), rows, $"{n}: rows must be in 1..{MaxRows}.");
        KernelGuard.Positive(inDim, n, "in");
        KernelGuard.Positive(outDim, n, "out");
        KernelGuard.Fits(x, (long)rows * inDim, n, nameof(x), $"({rows}, {inDim})");
        KernelGuard.Fits(w.Codes, (long)outDim * inDim, n, "codes", $"({outDim}, {inDim})");
        KernelGuard.Fits(w.Scales, outDim, n, "scales", $"({outDim})");
        if (!Takes(x.Address, w, inDim))
            throw new ArgumentException($"{n}: needs in % {Chunk} == 0 (in = {inDim}), 16-byte aligned x and codes, and an sm_80+ GPU; dequantize the matrix otherwise.", nameof(w));
    }

    /// <summary>y (rows, outDim), row stride <paramref name="ldy"/> (0 = outDim), = x · (codes · scale)ᵀ, plus y when <paramref name="accumulate"/>.</summary>
    public void Launch(CudaStream stream, DeviceSpan<Bf16> x, int rows, int inDim, E4m3Rows w, int outDim, DeviceSpan<float> y,
        bool accumulate = false, int ldy = 0)
    {
        const string n = "gemm_e4m3_rows";
        if (ldy == 0) ldy = outDim;
        Check(n, x, rows, inDim, w, outDim);
        if (ldy < outDim) throw new ArgumentOutOfRangeException(nameof(ldy), ldy, $"{n}: row stride must be >= out ({outDim}).");
        KernelGuard.Fits(y, (long)(rows - 1) * ldy + outDim, n, nameof(y), $"({rows}, {outDim}) with row stride {ldy}");
        ulong px = x.Address, pw = w.Codes.Address, ps = w.Scales.Address, py = y.Address;
        int acc = accumulate ? 1 : 0;
        void** args = stackalloc void*[] { &px, &pw, &ps, &py, &rows, &inDim, &outDim, &ldy, &acc };
        Kernel(false, rows).Launch(stream, ((uint)((outDim + 31) / 32), 1, 1), Block, 0, args);
    }

    /// <summary>output (rows, inter) bf16 = silu(x · Wgᵀ) · (x · Wuᵀ) over <paramref name="gateUp"/> = [gate; up] (2 · inter, in).</summary>
    public void LaunchSiluMul(CudaStream stream, DeviceSpan<Bf16> x, int rows, int inDim, E4m3Rows gateUp, int inter, DeviceSpan<Bf16> output)
    {
        const string n = "gemm_silu_e4m3_rows";
        KernelGuard.Positive(inter, n, nameof(inter));
        Check(n, x, rows, inDim, gateUp, 2 * inter);
        KernelGuard.Fits(output, (long)rows * inter, n, nameof(output), $"({rows}, {inter})");
        ulong px = x.Address, pw = gateUp.Codes.Address, ps = gateUp.Scales.Address, po = output.Address;
        void** args = stackalloc void*[] { &px, &pw, &ps, &po, &rows, &inDim, &inter };
        Kernel(true, rows).Launch(stream, ((uint)((inter + 15) / 16), 1, 1), Block, 0, args);
    }
}
