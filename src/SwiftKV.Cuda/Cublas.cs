// cuBLAS for the engine's linear layers: y (rows, out) = x (rows, in) · W (out, in)ᵀ with bf16 x and W,
// fp32 accumulation and an fp32 y, optionally accumulated into y (beta = 1: the residual add for free), or a bf16 y
// where the next op reads bf16 (half the output bytes; the [gate; up] projection of a long prefill writes
// 2·inter values per token).
// Row-major (rows, out) is column-major (out, rows), so the call is C = op(A)·B with A = W stored
// column-major as (in, out) and transposed: m = out, n = rows, k = in, lda = ldb = in, ldc = out.
// The GEMMs go through cuBLASLt with one algorithm per bucket of row counts (CublasLtPlans says why); cublasGemmEx is
// the fallback for a problem cuBLASLt's heuristic has no algorithm for.
using System.Runtime.InteropServices;
using SwiftKV.Cuda.Kernels;
using SwiftKV.Cuda.Native;

namespace SwiftKV.Cuda;

/// <summary>
/// A cuBLAS or cuBLASLt handle, destroyed by <paramref name="destroy"/> outside other threads' graph captures: at once,
/// or once they end (<see cref="CaptureGate.Release"/>; the finalizer thread must not wait for them).
/// </summary>
sealed class CublasHandle(Func<nint, int> destroy) : SafeHandle(0, true)
{
    public override bool IsInvalid => handle == 0;
    public void Set(nint h) => SetHandle(h);
    protected override bool ReleaseHandle()
    {
        nint h = handle;
        return CaptureGate.Release(() => CudaRuntime.TryBindForRelease() && destroy(h) == 0);
    }
}

/// <summary>An owned cuBLAS handle (and cuBLASLt plans) bound to one stream.</summary>
public sealed unsafe class Cublas : IDisposable
{
    readonly CublasHandle _handle = new(CublasNative.cublasDestroy);
    readonly CublasLtPlans _lt;
    CublasLtPlans? _ltE4m3;   // the W8A8 GEMMs' plans, made by the first one (their own descriptor and workspace)
    readonly nint _stream;

    public Cublas(CudaStream stream)
    {
        CudaRuntime.Bind();
        nint h;
        using (CaptureGate.Exclusive())
            CublasNative.Check(CublasNative.cublasCreate(out h), "cublasCreate_v2");
        _handle.Set(h);
        try
        {
            CublasNative.Check(CublasNative.cublasSetStream(h, stream.Handle), "cublasSetStream_v2");
            CublasNative.Check(CublasNative.cublasGetVersion(h, out int v), "cublasGetVersion_v2");
            Version = v;
            _stream = stream.Handle;
            _lt = new CublasLtPlans();
        }
        catch
        {
            _handle.Dispose();   // now, on this thread and context, not on the finalizer's
            throw;
        }
    }

    public int Version { get; }

    /// <summary>Device memory each instance holds for cuBLASLt's workspace.</summary>
    public static long WorkspaceBytes => CublasLtPlans.WorkspaceBytes;

    /// <summary>cuBLASLt heuristic queries so far (bf16 and W8A8 plans): one per projection shape and row bucket, not per row count.</summary>
    public int HeuristicQueries => _lt.HeuristicQueries + (_ltE4m3?.HeuristicQueries ?? 0);

    /// <summary>The row count whose cuBLASLt algorithm serves <paramref name="rows"/> rows (its bucket's top).</summary>
    public static int RowBucket(int rows) => CublasLtPlans.RowBucket(rows);

    /// <summary>GEMMs that cuBLASLt had no algorithm for, run by cublasGemmEx instead.</summary>
    public int GemmExFallbacks => _lt.Fallbacks;

    nint Handle => _handle.IsClosed ? throw new ObjectDisposedException(nameof(Cublas)) : _handle.DangerousGetHandle();

    /// <summary>
    /// y (rows, outDim) = x (rows, inDim) · w (outDim, inDim)ᵀ [+ y when <paramref name="accumulate"/>].
    /// <paramref name="ldy"/> is y's row stride (defaults to outDim), so results can land in a column slice.
    /// </summary>
    public void Linear(DeviceSpan<Bf16> x, int rows, int inDim, DeviceSpan<Bf16> w, int outDim, DeviceSpan<float> y,
        bool accumulate = false, int ldy = 0)
    {
        if (ldy == 0) ldy = outDim;
        Check(x, rows, inDim, w, outDim, y.Length, ldy);
        Gemm(x.Address, rows, inDim, w.Address, outDim, y.Address, CublasNative.CudaR32F, ldy, accumulate);
    }

    /// <summary>y (rows, outDim) bf16 = x · wᵀ, fp32 accumulation rounded once to bf16 on output.</summary>
    public void Linear(DeviceSpan<Bf16> x, int rows, int inDim, DeviceSpan<Bf16> w, int outDim, DeviceSpan<Bf16> y, int ldy = 0)
    {
        if (ldy == 0) ldy = outDim;
        Check(x, rows, inDim, w, outDim, y.Length, ldy);
        Gemm(x.Address, rows, inDim, w.Address, outDim, y.Address, CublasNative.CudaR16BF, ldy, false);
    }

    /// <summary>
    /// W8A8: y (rows, outDim) fp32 = (x codes · x scale per row) · (w codes · w scale per row)ᵀ [+ y], e4m3 products
    /// summed in fp32 on fp8 tensor cores, both scales applied to each sum. False when cuBLASLt has no algorithm for
    /// the problem (it needs a Hopper GPU, <see cref="E4m3RowScaledGpu"/>, cuBLAS 12.9+ and inDim a multiple of 16): the
    /// caller then runs its bf16 route.
    /// </summary>
    public bool TryLinearE4m3(E4m3Rows x, int rows, int inDim, E4m3Rows w, int outDim, DeviceSpan<float> y, bool accumulate = false) =>
        TryE4m3(x, rows, inDim, w, outDim, y.Address, y.Length, CublasNative.CudaR32F, accumulate);

    /// <summary><see cref="TryLinearE4m3(E4m3Rows, int, int, E4m3Rows, int, DeviceSpan{float}, bool)"/> with a bf16 y, rounded once.</summary>
    public bool TryLinearE4m3(E4m3Rows x, int rows, int inDim, E4m3Rows w, int outDim, DeviceSpan<Bf16> y) =>
        TryE4m3(x, rows, inDim, w, outDim, y.Address, y.Length, CublasNative.CudaR16BF, false);

    /// <summary>The first cuBLAS with cuBLASLt's outer-vector scales (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F), which W8A8 needs.</summary>
    public const int E4m3RowScaledVersion = 120900;

    /// <summary>Whether this cuBLAS can run <see cref="TryLinearE4m3(E4m3Rows, int, int, E4m3Rows, int, DeviceSpan{float}, bool)"/> at all.</summary>
    public bool TakesE4m3RowScaled => Version >= E4m3RowScaledVersion;

    /// <summary>
    /// Whether cuBLASLt runs outer-vector fp8 scales on <paramref name="device"/>: Hopper (sm_90) only. NVIDIA lists
    /// the mode for sm_90 alone (NVIDIA/CUDALibrarySamples#270); on sm_100 and sm_120 the heuristic refuses it (PyTorch
    /// #160693, #161236, #192707), and Ada has no cuBLASLt row-wise fp8 at all. Measured here on H200s.
    /// </summary>
    public static bool E4m3RowScaledGpu(CudaDeviceInfo device) => device.ComputeMajor == 9 && device.ComputeMinor == 0;

    /// <summary>W8A8 GEMMs that cuBLASLt ran (tests and benchmarks check the route was taken).</summary>
    public long E4m3Gemms { get; private set; }

    bool TryE4m3(E4m3Rows x, int rows, int inDim, E4m3Rows w, int outDim, ulong y, long yLength, int yType, bool accumulate)
    {
        if (rows < 1 || inDim < 1 || outDim < 1)
            throw new ArgumentException($"LinearE4m3: bad shape rows={rows} in={inDim} out={outDim}.");
        Need(x.Codes.Length, (long)rows * inDim, "x codes", $"({rows}, {inDim})");
        Need(x.Scales.Length, rows, "x scales", $"({rows})");
        Need(w.Codes.Length, (long)outDim * inDim, "w codes", $"({outDim}, {inDim})");
        Need(w.Scales.Length, outDim, "w scales", $"({outDim})");
        Need(yLength, (long)rows * outDim, "y", $"({rows}, {outDim})");
        // fp8 operands' leading dimension; older cuBLAS lacks the scale mode, other GPUs refuse it.
        if (inDim % 16 != 0 || !TakesE4m3RowScaled || !E4m3RowScaledGpu(CudaRuntime.Device)) return false;
        CudaRuntime.Bind();
        _ltE4m3 ??= new CublasLtPlans(e4m3RowScaled: true);
        if (!_ltE4m3.TryGemm(outDim, rows, inDim, w.Codes.Address, x.Codes.Address, y, yType, outDim, accumulate ? 1 : 0, _stream,
                w.Scales.Address, x.Scales.Address))
            return false;
        E4m3Gemms++;
        return true;
    }

    static void Check(DeviceSpan<Bf16> x, int rows, int inDim, DeviceSpan<Bf16> w, int outDim, long yLength, int ldy)
    {
        if (rows < 1 || inDim < 1 || outDim < 1 || ldy < outDim)
            throw new ArgumentException($"Linear: bad shape rows={rows} in={inDim} out={outDim} ldy={ldy}.");
        Need(x.Length, (long)rows * inDim, "x", $"({rows}, {inDim})");
        Need(w.Length, (long)outDim * inDim, "w", $"({outDim}, {inDim})");
        Need(yLength, (long)(rows - 1) * ldy + outDim, "y", $"({rows}, {outDim}) with row stride {ldy}");
    }

    void Gemm(ulong x, int rows, int inDim, ulong w, int outDim, ulong y, int yType, int ldy, bool accumulate)
    {
        float alpha = 1, beta = accumulate ? 1 : 0;
        CudaRuntime.Bind();
        if (_lt.TryGemm(outDim, rows, inDim, w, x, y, yType, ldy, beta, _stream)) return;
        CublasNative.Check(CublasNative.cublasGemmEx(Handle, CublasNative.OpT, CublasNative.OpN, outDim, rows, inDim,
            &alpha, w, CublasNative.CudaR16BF, inDim, x, CublasNative.CudaR16BF, inDim,
            &beta, y, yType, ldy, CublasNative.Compute32F, CublasNative.GemmDefault),
            $"cublasGemmEx(m={outDim}, n={rows}, k={inDim}, C {(yType == CublasNative.CudaR32F ? "fp32" : "bf16")})");
    }

    /// <summary>
    /// fp32 C (m, n) = alpha·op(A)·op(B) + beta·C in cuBLAS's column-major terms (A is (m, k) after op, B (k, n));
    /// for distillation's training passes. <paramref name="tf32"/> runs it on TF32 tensor cores (inputs rounded to a
    /// 10-bit mantissa, sums in fp32), about 8x the fp32 rate on Hopper.
    /// </summary>
    public void GemmF32(bool transA, bool transB, int m, int n, int k, DeviceSpan<float> a, int lda, DeviceSpan<float> b, int ldb,
        DeviceSpan<float> c, int ldc, float beta, bool tf32, float alpha = 1f) =>
        GemmStridedBatchedF32(transA, transB, m, n, k, a, lda, 0, b, ldb, 0, c, ldc, 0, 1, beta, tf32, alpha);

    /// <summary>
    /// <paramref name="batch"/> GEMMs as <see cref="GemmF32"/>, the i-th on A + i·strideA, B + i·strideB and C + i·strideC
    /// (elements; a stride of 0 shares one operand, as a group's query heads share their key/value head).
    /// </summary>
    public void GemmStridedBatchedF32(bool transA, bool transB, int m, int n, int k, DeviceSpan<float> a, int lda, long strideA,
        DeviceSpan<float> b, int ldb, long strideB, DeviceSpan<float> c, int ldc, long strideC, int batch, float beta, bool tf32, float alpha = 1f)
    {
        string call = $"cublasGemmStridedBatchedEx(fp32, m={m}, n={n}, k={k}, batch={batch})";
        if (m < 1 || n < 1 || k < 1 || batch < 1 || strideA < 0 || strideB < 0 || strideC < 0)
            throw new ArgumentException($"{call}: bad shape.");
        // Column-major extents: op(A) is (m, k), so A is stored (m, k) or, transposed, (k, m); likewise B.
        long Extent(bool trans, int rows, int cols, int ld, string what)
        {
            int stored = trans ? cols : rows, lines = trans ? rows : cols;
            if (ld < stored) throw new ArgumentException($"{call}: leading dimension of {what} is {ld}, below {stored}.");
            return (long)(lines - 1) * ld + stored;
        }
        Need(a.Length, (batch - 1) * strideA + Extent(transA, m, k, lda, "A"), "A", $"({m}, {k}) x {batch}");
        Need(b.Length, (batch - 1) * strideB + Extent(transB, k, n, ldb, "B"), "B", $"({k}, {n}) x {batch}");
        Need(c.Length, (batch - 1) * strideC + Extent(false, m, n, ldc, "C"), "C", $"({m}, {n}) x {batch}");
        CudaRuntime.Bind();
        CublasNative.Check(CublasNative.cublasGemmStridedBatchedEx(Handle, transA ? CublasNative.OpT : CublasNative.OpN,
            transB ? CublasNative.OpT : CublasNative.OpN, m, n, k, &alpha, a.Address, CublasNative.CudaR32F, lda, strideA,
            b.Address, CublasNative.CudaR32F, ldb, strideB, &beta, c.Address, CublasNative.CudaR32F, ldc, strideC, batch,
            tf32 ? CublasNative.Compute32FFastTf32 : CublasNative.Compute32F, CublasNative.GemmDefault), call);
    }

    static void Need(long have, long need, string what, string shape)
    {
        if (have < need) throw new ArgumentException($"Linear: {what} holds {have} elements, {shape} needs {need}.");
    }

    public void Dispose()
    {
        _ltE4m3?.Dispose();
        _lt.Dispose();
        _handle.Dispose();
    }
}
