// Launcher for native-kernels/gemv.cu: the linear layers of decode-sized steps (1..8 rows), where the weight
// bytes, not the FLOPs, set the time. Weights are bf16, or fp8 e4m3 codes with row scales (E4m3Rows: an FP8
// checkpoint kept as it is, half the bytes). Picks the 16-byte vector kernel specialised for the row count when the
// shapes allow it (in % 8 == 0, 16-byte aligned x and W), else the scalar fallback. The LaunchRms* forms fold the
// RMSNorm that precedes a projection into it (x is then the fp32 residual stream; no norm launch, no normed row).
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// A weight matrix (out, in) held as fp8 e4m3 codes, row-major, with one fp32 scale per row: weight = code · scale (an
/// FP8 checkpoint's per-channel or per-matrix scales).
/// </summary>
public readonly record struct E4m3Rows(DeviceSpan<byte> Codes, DeviceSpan<float> Scales)
{
    /// <summary>Rows [first, first + count) of a matrix of <paramref name="columns"/> columns.</summary>
    public E4m3Rows Slice(long first, long count, long columns) => new(Codes.Slice(first * columns, count * columns), Scales.Slice(first, count));
}

/// <summary>
/// y (rows, out) fp32 [+]= x (rows, in) bf16 · W (out, in)ᵀ bf16 for rows ≤ <see cref="MaxRows"/>; and the fused
/// SwiGLU form out (rows, inter) bf16 = silu(x · Wgᵀ) · (x · Wuᵀ) with W = [gate; up] (2·inter, in).
/// </summary>
public sealed unsafe class GemvKernel(KernelLibrary library)
{
    /// <summary>Most rows one launch handles (each weight byte is read once for all of them).</summary>
    public const int MaxRows = 8;
    const int Warps = 8;

    readonly CudaKernel?[] _plain = new CudaKernel?[2 * (MaxRows + 1)];
    readonly CudaKernel?[] _silu = new CudaKernel?[2 * (MaxRows + 1)];
    readonly CudaKernel?[] _rms = new CudaKernel?[MaxRmsRows + 1];
    readonly CudaKernel?[] _rmsSilu = new CudaKernel?[MaxRmsRows + 1];
    CudaKernel? _plainAny, _siluAny, _rmsAny, _rmsSiluAny;

    /// <summary>Most rows the RMSNorm-folding forms handle.</summary>
    public const int MaxRmsRows = 4;

    /// <summary>Tests pin the scalar fallback with this; the engine leaves it off.</summary>
    public bool ForceScalar { get; set; }

    /// <summary>
    /// Vector kernels first ask L2 to prefetch the start of their weight rows, before waiting for the previous kernel
    /// (overlap under programmatic launch). Off by default: it measured slower on the H100 (benchmarks compare).
    /// </summary>
    public bool PrefetchWeights { get; set; }

    /// <summary>Whether the last launch took the vector kernel.</summary>
    public bool LastWasVector { get; private set; }

    /// <summary>y (rows, outDim), row stride <paramref name="ldy"/> (0 = outDim), = x · Wᵀ, plus y when <paramref name="accumulate"/>.</summary>
    public void Launch(CudaStream stream, DeviceSpan<Bf16> x, int rows, int inDim, DeviceSpan<Bf16> w, int outDim, DeviceSpan<float> y,
        bool accumulate = false, int ldy = 0)
    {
        const string n = "gemv_bf16";
        if (ldy == 0) ldy = outDim;
        CheckCommon(n, x, rows, inDim, w, outDim);
        if (ldy < outDim) throw new ArgumentOutOfRangeException(nameof(ldy), ldy, $"{n}: row stride must be >= out ({outDim}).");
        KernelGuard.Fits(y, (long)(rows - 1) * ldy + outDim, n, nameof(y), $"({rows}, {outDim}) with row stride {ldy}");
        ulong px = x.Address, pw = w.Address, py = y.Address;
        int acc = accumulate ? 1 : 0;
        if (Vector(x, w, inDim))
        {
            int slot = PrefetchWeights ? MaxRows + 1 + rows : rows;
            var k = _plain[slot] ??= library.Get("gemv.cu", PrefetchWeights ? $"gemv_bf16_pf_r{rows}" : $"gemv_bf16_r{rows}");
            void** args = stackalloc void*[] { &px, &pw, &py, &inDim, &outDim, &ldy, &acc };
            k.Launch(stream, ((uint)((outDim + 2 * Warps - 1) / (2 * Warps)), 1, 1), 32 * Warps, 0, args, library.ProgrammaticLaunch);
            LastWasVector = true;
        }
        else
        {
            var k = _plainAny ??= library.Get("gemv.cu", "gemv_bf16_any");
            void** args = stackalloc void*[] { &px, &pw, &py, &rows, &inDim, &outDim, &ldy, &acc };
            k.Launch(stream, ((uint)((outDim + Warps - 1) / Warps), 1, 1), 32 * Warps, 0, args, library.ProgrammaticLaunch);
            LastWasVector = false;
        }
    }

    /// <summary>output (rows, inter) bf16 = silu(x · W[0..inter)ᵀ) · (x · W[inter..2·inter)ᵀ) with W (2·inter, in).</summary>
    public void LaunchSiluMul(CudaStream stream, DeviceSpan<Bf16> x, int rows, int inDim, DeviceSpan<Bf16> gateUp, int inter, DeviceSpan<Bf16> output)
    {
        const string n = "gemv_silu_bf16";
        KernelGuard.Positive(inter, n, nameof(inter));
        CheckCommon(n, x, rows, inDim, gateUp, 2 * inter);
        KernelGuard.Fits(output, (long)rows * inter, n, nameof(output), $"({rows}, {inter})");
        ulong px = x.Address, pw = gateUp.Address, po = output.Address;
        uint grid = (uint)((inter + Warps - 1) / Warps);
        if (Vector(x, gateUp, inDim))
        {
            int slot = PrefetchWeights ? MaxRows + 1 + rows : rows;
            var k = _silu[slot] ??= library.Get("gemv.cu", PrefetchWeights ? $"gemv_silu_bf16_pf_r{rows}" : $"gemv_silu_bf16_r{rows}");
            void** args = stackalloc void*[] { &px, &pw, &po, &inDim, &inter };
            k.Launch(stream, (grid, 1, 1), 32 * Warps, 0, args, library.ProgrammaticLaunch);
            LastWasVector = true;
        }
        else
        {
            var k = _siluAny ??= library.Get("gemv.cu", "gemv_silu_bf16_any");
            void** args = stackalloc void*[] { &px, &pw, &po, &rows, &inDim, &inter };
            k.Launch(stream, (grid, 1, 1), 32 * Warps, 0, args, library.ProgrammaticLaunch);
            LastWasVector = false;
        }
    }

    /// <summary>
    /// y (rows, outDim), row stride <paramref name="ldy"/> (0 = outDim), = (RMSNorm(x) · normWeight) · Wᵀ, plus y
    /// when <paramref name="accumulate"/>; x (rows, inDim) fp32, normWeight (inDim) fp32. Each warp sums x² of the
    /// row itself and scales its dot products by 1 / sqrt(mean(x²) + eps): the activations are never rounded to bf16.
    /// </summary>
    public void LaunchRms(CudaStream stream, DeviceSpan<float> x, int rows, int inDim, DeviceSpan<float> normWeight, float eps,
        DeviceSpan<Bf16> w, int outDim, DeviceSpan<float> y, bool accumulate = false, int ldy = 0)
    {
        const string n = "gemv_rms_bf16";
        if (ldy == 0) ldy = outDim;
        CheckRms(n, x, rows, inDim, normWeight, w, outDim);
        if (ldy < outDim) throw new ArgumentOutOfRangeException(nameof(ldy), ldy, $"{n}: row stride must be >= out ({outDim}).");
        KernelGuard.Fits(y, (long)(rows - 1) * ldy + outDim, n, nameof(y), $"({rows}, {outDim}) with row stride {ldy}");
        ulong px = x.Address, pn = normWeight.Address, pw = w.Address, py = y.Address;
        int acc = accumulate ? 1 : 0;
        if (VectorRms(x, normWeight, w, inDim))
        {
            var k = _rms[rows] ??= library.Get("gemv.cu", $"gemv_rms_bf16_r{rows}");
            void** args = stackalloc void*[] { &px, &pn, &eps, &pw, &py, &inDim, &outDim, &ldy, &acc };
            k.Launch(stream, ((uint)((outDim + 2 * Warps - 1) / (2 * Warps)), 1, 1), 32 * Warps, 0, args, library.ProgrammaticLaunch);
            LastWasVector = true;
        }
        else
        {
            var k = _rmsAny ??= library.Get("gemv.cu", "gemv_rms_bf16_any");
            void** args = stackalloc void*[] { &px, &pn, &eps, &pw, &py, &rows, &inDim, &outDim, &ldy, &acc };
            k.Launch(stream, ((uint)((outDim + Warps - 1) / Warps), 1, 1), 32 * Warps, 0, args, library.ProgrammaticLaunch);
            LastWasVector = false;
        }
    }

    /// <summary>output (rows, inter) bf16 = silu(h · W[0..inter)ᵀ) · (h · W[inter..2·inter)ᵀ), h = RMSNorm(x) · normWeight, x fp32.</summary>
    public void LaunchRmsSiluMul(CudaStream stream, DeviceSpan<float> x, int rows, int inDim, DeviceSpan<float> normWeight, float eps,
        DeviceSpan<Bf16> gateUp, int inter, DeviceSpan<Bf16> output)
    {
        const string n = "gemv_rms_silu_bf16";
        KernelGuard.Positive(inter, n, nameof(inter));
        CheckRms(n, x, rows, inDim, normWeight, gateUp, 2 * inter);
        KernelGuard.Fits(output, (long)rows * inter, n, nameof(output), $"({rows}, {inter})");
        ulong px = x.Address, pn = normWeight.Address, pw = gateUp.Address, po = output.Address;
        uint grid = (uint)((inter + Warps - 1) / Warps);
        if (VectorRms(x, normWeight, gateUp, inDim))
        {
            var k = _rmsSilu[rows] ??= library.Get("gemv.cu", $"gemv_rms_silu_bf16_r{rows}");
            void** args = stackalloc void*[] { &px, &pn, &eps, &pw, &po, &inDim, &inter };
            k.Launch(stream, (grid, 1, 1), 32 * Warps, 0, args, library.ProgrammaticLaunch);
            LastWasVector = true;
        }
        else
        {
            var k = _rmsSiluAny ??= library.Get("gemv.cu", "gemv_rms_silu_bf16_any");
            void** args = stackalloc void*[] { &px, &pn, &eps, &pw, &po, &rows, &inDim, &inter };
            k.Launch(stream, (grid, 1, 1), 32 * Warps, 0, args, library.ProgrammaticLaunch);
            LastWasVector = false;
        }
    }

    readonly CudaKernel?[] _e4m3 = new CudaKernel?[2 * (MaxRows + 1)];

    /// <summary>Whether the e4m3 forms take these operands: in % 16 == 0 and 16-byte aligned x and codes (there is no scalar e4m3 fallback).</summary>
    public static bool TakesE4m3(ulong xAddress, E4m3Rows w, int inDim) => inDim % 16 == 0 && xAddress % 16 == 0 && w.Codes.Address % 16 == 0;

    CudaKernel E4m3Kernel(int form, int rows, string name) => _e4m3[form * (MaxRows + 1) + rows] ??= library.Get("gemv.cu", $"{name}_r{rows}");

    static void CheckE4m3(string n, ulong xAddress, int rows, int inDim, E4m3Rows w, int outDim)
    {
        if (rows < 1 || rows > MaxRows) throw new ArgumentOutOfRangeException(nameof(rows), rows, $"{n}: rows must be in 1..{MaxRows}.");
        KernelGuard.Positive(inDim, n, "in");
        KernelGuard.Positive(outDim, n, "out");
        KernelGuard.Fits(w.Codes, (long)outDim * inDim, n, "codes", $"({outDim}, {inDim})");
        KernelGuard.Fits(w.Scales, outDim, n, "scales", $"({outDim})");
        if (!TakesE4m3(xAddress, w, inDim))
            throw new ArgumentException($"{n}: needs in % 16 == 0 (in = {inDim}) and 16-byte aligned x and codes; dequantize the matrix for other shapes.", nameof(w));
    }

    /// <summary><see cref="Launch(CudaStream, DeviceSpan{Bf16}, int, int, DeviceSpan{Bf16}, int, DeviceSpan{float}, bool, int)"/> over an e4m3 matrix.</summary>
    public void Launch(CudaStream stream, DeviceSpan<Bf16> x, int rows, int inDim, E4m3Rows w, int outDim, DeviceSpan<float> y,
        bool accumulate = false, int ldy = 0)
    {
        const string n = "gemv_e4m3";
        if (ldy == 0) ldy = outDim;
        CheckE4m3(n, x.Address, rows, inDim, w, outDim);
        KernelGuard.Fits(x, (long)rows * inDim, n, nameof(x), $"({rows}, {inDim})");
        if (ldy < outDim) throw new ArgumentOutOfRangeException(nameof(ldy), ldy, $"{n}: row stride must be >= out ({outDim}).");
        KernelGuard.Fits(y, (long)(rows - 1) * ldy + outDim, n, nameof(y), $"({rows}, {outDim}) with row stride {ldy}");
        ulong px = x.Address, pw = w.Codes.Address, ps = w.Scales.Address, py = y.Address;
        int acc = accumulate ? 1 : 0;
        void** args = stackalloc void*[] { &px, &pw, &ps, &py, &inDim, &outDim, &ldy, &acc };
        E4m3Kernel(0, rows, n).Launch(stream, ((uint)((outDim + 2 * Warps - 1) / (2 * Warps)), 1, 1), 32 * Warps, 0, args, library.ProgrammaticLaunch);
        LastWasVector = true;
    }

    /// <summary><see cref="LaunchSiluMul(CudaStream, DeviceSpan{Bf16}, int, int, DeviceSpan{Bf16}, int, DeviceSpan{Bf16})"/> over an e4m3 [gate; up].</summary>
    public void LaunchSiluMul(CudaStream stream, DeviceSpan<Bf16> x, int rows, int inDim, E4m3Rows gateUp, int inter, DeviceSpan<Bf16> output)
    {
        const string n = "gemv_silu_e4m3";
        KernelGuard.Positive(inter, n, nameof(inter));
        CheckE4m3(n, x.Address, rows, inDim, gateUp, 2 * inter);
        KernelGuard.Fits(x, (long)rows * inDim, n, nameof(x), $"({rows}, {inDim})");
        KernelGuard.Fits(output, (long)rows * inter, n, nameof(output), $"({rows}, {inter})");
        ulong px = x.Address, pw = gateUp.Codes.Address, ps = gateUp.Scales.Address, po = output.Address;
        void** args = stackalloc void*[] { &px, &pw, &ps, &po, &inDim, &inter };
        E4m3Kernel(1, rows, n).Launch(stream, ((uint)((inter + Warps - 1) / Warps), 1, 1), 32 * Warps, 0, args, library.ProgrammaticLaunch);
        LastWasVector = true;
    }

    bool VectorRms(DeviceSpan<float> x, DeviceSpan<float> normWeight, DeviceSpan<Bf16> w, int inDim) =>
        !ForceScalar && inDim % 8 == 0 && x.Address % 16 == 0 && normWeight.Address % 16 == 0 && w.Address % 16 == 0;

    static void CheckRms(string n, DeviceSpan<float> x, int rows, int inDim, DeviceSpan<float> normWeight, DeviceSpan<Bf16> w, int outDim)
    {
        if (rows < 1 || rows > MaxRmsRows) throw new ArgumentOutOfRangeException(nameof(rows), rows, $"{n}: rows must be in 1..{MaxRmsRows} (norm first, then a GEMM, for more).");
        KernelGuard.Positive(inDim, n, "in");
        KernelGuard.Positive(outDim, n, "out");
        KernelGuard.Fits(x, (long)rows * inDim, n, nameof(x), $"({rows}, {inDim})");
        KernelGuard.Fits(normWeight, inDim, n, nameof(normWeight), $"({inDim})");
        KernelGuard.Fits(w, (long)outDim * inDim, n, nameof(w), $"({outDim}, {inDim})");
    }

    bool Vector(DeviceSpan<Bf16> x, DeviceSpan<Bf16> w, int inDim) =>
        !ForceScalar && inDim % 8 == 0 && x.Address % 16 == 0 && w.Address % 16 == 0;

    static void CheckCommon(string n, DeviceSpan<Bf16> x, int rows, int inDim, DeviceSpan<Bf16> w, int outDim)
    {
        if (rows < 1 || rows > MaxRows) throw new ArgumentOutOfRangeException(nameof(rows), rows, $"{n}: rows must be in 1..{MaxRows} (use a GEMM for more).");
        KernelGuard.Positive(inDim, n, "in");
        KernelGuard.Positive(outDim, n, "out");
        KernelGuard.Fits(x, (long)rows * inDim, n, nameof(x), $"({rows}, {inDim})");
        KernelGuard.Fits(w, (long)outDim * inDim, n, nameof(w), $"({outDim}, {inDim})");
    }
}
