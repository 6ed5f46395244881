// The engine's cuBLAS GEMMs through cuBLASLt with the algorithm chosen once per bucket of row counts.
// Why: cublasGemmEx runs cuBLAS's heuristic for every new (m, n, k) and may load a new kernel the first time it picks
// one. On an H100 that cost 0.2-0.4 ms per projection for a row count not seen before, and 4-5 ms when it loaded a
// kernel (bench/gemm/first_call_probe.cu). A serving step's row count (its prefill chunks plus its decodes) changes
// nearly every step, so those costs came back step after step. Here the heuristic runs for the bucket's top row count
// (n <= 16 as they are, then 8 buckets per power of two: 2000 runs 2048's algorithm) and the algorithm is kept for
// every n in the bucket; an algorithm cuBLASLt refuses for some n is replaced by one chosen for that exact n.
// An instance made for e4m3 operands runs W8A8 GEMMs: A and B e4m3 codes, each with one fp32 scale per row of op(A)
// (a weight's output rows) and per column of B (a token) applied to the fp32 sums (cuBLASLt's outer-vector scaling,
// cuBLAS 12.9+; measured on Hopper, bench/gemm/fp8_rowwise_probe.cu). It has no cublasGemmEx fallback: a problem it
// refuses, or a GPU whose cuBLASLt has no algorithm for the scale mode, goes back to the caller.
using System.Numerics;
using SwiftKV.Cuda.Native;

namespace SwiftKV.Cuda;

/// <summary>
/// y = W·x GEMMs (cuBLAS's column-major view, A = W transposed) through cuBLASLt, one algorithm per row bucket; bf16
/// operands, or e4m3 operands with row scales (<see cref="E4m3RowScaled"/>).
/// </summary>
sealed unsafe class CublasLtPlans : IDisposable
{
    /// <summary>cuBLAS's recommended workspace on Hopper; the heuristic is told the algorithms may use this much.</summary>
    /// <summary>The cuBLASLt workspace every <see cref="Cublas"/> holds on the device.</summary>
    internal const long WorkspaceBytes = 32L << 20;

    readonly CublasHandle _handle = new(CublasLtNative.cublasLtDestroy);
    readonly nint _op;
    readonly int _abType;
    readonly DeviceBuffer<byte> _workspace;
    readonly Dictionary<PlanKey, CublasLtNative.MatmulAlgo?> _plans = new();
    bool _disposed;

    /// <summary>A problem as the heuristic sees it: shapes, the output type, the row bucket and the pointers' alignment.</summary>
    readonly record struct PlanKey(int M, int K, int Ldc, int CType, int Rows, int AlignA, int AlignB, int AlignC);

    public CublasLtPlans(bool e4m3RowScaled = false)
    {
        E4m3RowScaled = e4m3RowScaled;
        _abType = e4m3RowScaled ? CublasNative.CudaR8fE4m3 : CublasNative.CudaR16BF;
        CudaRuntime.Bind();
        nint h;
        using (CaptureGate.Exclusive())
            CublasNative.Check(CublasLtNative.cublasLtCreate(out h), "cublasLtCreate");
        _handle.Set(h);
        try
        {
            CublasNative.Check(CublasLtNative.cublasLtMatmulDescCreate(out _op, CublasNative.Compute32F, CublasNative.CudaR32F), "cublasLtMatmulDescCreate");
            int t = CublasNative.OpT, n = CublasNative.OpN;
            CublasNative.Check(CublasLtNative.cublasLtMatmulDescSetAttribute(_op, CublasLtNative.DescTransA, &t, sizeof(int)), "cublasLtMatmulDescSetAttribute(TRANSA)");
            CublasNative.Check(CublasLtNative.cublasLtMatmulDescSetAttribute(_op, CublasLtNative.DescTransB, &n, sizeof(int)), "cublasLtMatmulDescSetAttribute(TRANSB)");
            if (e4m3RowScaled)
            {
                int mode = CublasLtNative.MatrixScaleOuterVec32F;
                CublasNative.Check(CublasLtNative.cublasLtMatmulDescSetAttribute(_op, CublasLtNative.DescAScaleMode, &mode, sizeof(int)), "cublasLtMatmulDescSetAttribute(A_SCALE_MODE)");
                CublasNative.Check(CublasLtNative.cublasLtMatmulDescSetAttribute(_op, CublasLtNative.DescBScaleMode, &mode, sizeof(int)), "cublasLtMatmulDescSetAttribute(B_SCALE_MODE)");
            }
            _workspace = new DeviceBuffer<byte>(WorkspaceBytes);
        }
        catch
        {
            if (_op != 0) CublasLtNative.cublasLtMatmulDescDestroy(_op);
            _handle.Dispose();
            throw;
        }
    }

    /// <summary>Whether A and B are e4m3 codes with outer-vector fp32 scales (W8A8), not bf16.</summary>
    public bool E4m3RowScaled { get; }

    /// <summary>Heuristic queries so far (tests: a new row count inside a known bucket asks none).</summary>
    public int HeuristicQueries { get; private set; }

    /// <summary>GEMMs handed back to cublasGemmEx because cuBLASLt had no algorithm that takes them.</summary>
    public int Fallbacks { get; private set; }

    static bool Refused(int status) => status is CublasLtNative.StatusNotSupported or CublasLtNative.StatusInvalidValue;

    /// <summary>
    /// The row count whose algorithm serves <paramref name="n"/> rows: n up to 16, then n rounded up to an eighth of its
    /// power of two (17-31 by 2, ..., 1025-2047 by 128, 2049-4095 by 256), so a bucket's rows differ by at most 1/8.
    /// </summary>
    public static int RowBucket(int n)
    {
        if (n <= 16) return n;
        int g = (int)BitOperations.RoundUpToPowerOf2((uint)n + 1) / 16;   // an eighth of the power of two at or below n
        return (n + g - 1) / g * g;
    }

    /// <summary>
    /// C (m, n) = op(A)ᵀ·B [+ C] in cuBLAS's terms: A (k, m) with lda = k, B (k, n) with ldb = k (bf16, or e4m3 with
    /// <paramref name="aScales"/> (m floats) and <paramref name="bScales"/> (n floats) when <see cref="E4m3RowScaled"/>),
    /// C of <paramref name="cType"/> with ldc. Returns false when cuBLASLt has no algorithm for the problem (the caller
    /// falls back to cublasGemmEx, or for e4m3 to its bf16 route).
    /// </summary>
    public bool TryGemm(int m, int n, int k, ulong a, ulong b, ulong c, int cType, int ldc, float beta, nint stream, ulong aScales = 0, ulong bScales = 0)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (E4m3RowScaled)
        {
            // Set before the heuristic too: cuBLASLt refuses a scaled problem whose scale pointers are unset.
            if (aScales == 0 || bScales == 0) throw new ArgumentException("An e4m3 GEMM needs both row-scale vectors.");
            CublasNative.Check(CublasLtNative.cublasLtMatmulDescSetAttribute(_op, CublasLtNative.DescAScalePointer, &aScales, sizeof(ulong)), "cublasLtMatmulDescSetAttribute(A_SCALE_POINTER)");
            CublasNative.Check(CublasLtNative.cublasLtMatmulDescSetAttribute(_op, CublasLtNative.DescBScalePointer, &bScales, sizeof(ulong)), "cublasLtMatmulDescSetAttribute(B_SCALE_POINTER)");
        }
        using var layouts = new Layouts(m, n, k, _abType, cType, ldc);
        var key = new PlanKey(m, k, ldc, cType, RowBucket(n), Alignment(a), Alignment(b), Alignment(c));
        int status = Run(key, a, b, c, beta, layouts, stream);
        if (Refused(status) && key.Rows != n)
            status = Run(key with { Rows = n }, a, b, c, beta, layouts, stream);   // the bucket's algorithm does not fit n
        if (status == -1 || Refused(status))
        {
            Fallbacks++;   // no algorithm, or none that takes this problem: cublasGemmEx runs it (an e4m3 one: the caller's bf16 route)
            return false;
        }
        CublasNative.Check(status, $"cublasLtMatmul(m={m}, n={n}, k={k}, {(E4m3RowScaled ? "e4m3" : "bf16")} in, C {(cType == CublasNative.CudaR32F ? "fp32" : "bf16")})");
        return true;
    }

    /// <summary>The matmul with <paramref name="key"/>'s algorithm (chosen now if new); -1 when the heuristic has none.</summary>
    int Run(PlanKey key, ulong a, ulong b, ulong c, float beta, in Layouts layouts, nint stream)
    {
        if (!_plans.TryGetValue(key, out var algo)) _plans[key] = algo = Choose(key);
        if (algo is not { } chosen) return -1;
        float alpha = 1;
        return CublasLtNative.cublasLtMatmul(_handle.DangerousGetHandle(), _op, &alpha, a, layouts.A, b, layouts.B, &beta, c, layouts.C, c, layouts.C,
            &chosen, _workspace.Span.Address, (nuint)WorkspaceBytes, stream);
    }

    /// <summary>A problem's three matrix layouts, A (k, m) and B (k, n) of abType with ld k, C (m, n) with ldc; destroyed together.</summary>
    readonly struct Layouts : IDisposable
    {
        public readonly nint A, B, C;

        public Layouts(int m, int n, int k, int abType, int cType, int ldc)
        {
            try
            {
                CublasNative.Check(CublasLtNative.cublasLtMatrixLayoutCreate(out A, abType, (ulong)k, (ulong)m, k), "cublasLtMatrixLayoutCreate(A)");
                CublasNative.Check(CublasLtNative.cublasLtMatrixLayoutCreate(out B, abType, (ulong)k, (ulong)n, k), "cublasLtMatrixLayoutCreate(B)");
                CublasNative.Check(CublasLtNative.cublasLtMatrixLayoutCreate(out C, cType, (ulong)m, (ulong)n, ldc), "cublasLtMatrixLayoutCreate(C)");
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        public void Dispose()
        {
            if (C != 0) CublasLtNative.cublasLtMatrixLayoutDestroy(C);
            if (B != 0) CublasLtNative.cublasLtMatrixLayoutDestroy(B);
            if (A != 0) CublasLtNative.cublasLtMatrixLayoutDestroy(A);
        }
    }

    /// <summary>cuBLASLt's first choice for the key's problem at its bucket's row count, or null if it has none.</summary>
    CublasLtNative.MatmulAlgo? Choose(PlanKey key)
    {
        HeuristicQueries++;
        nint pref = 0;
        try
        {
            CublasNative.Check(CublasLtNative.cublasLtMatmulPreferenceCreate(out pref), "cublasLtMatmulPreferenceCreate");
            ulong bytes = WorkspaceBytes;
            CublasNative.Check(CublasLtNative.cublasLtMatmulPreferenceSetAttribute(pref, CublasLtNative.PrefMaxWorkspaceBytes, &bytes, sizeof(ulong)), "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)");
            // The heuristic assumes 256-byte aligned pointers unless told otherwise; a column slice of y may be less.
            foreach (var (attr, align) in new[] { (CublasLtNative.PrefMinAlignmentA, key.AlignA), (CublasLtNative.PrefMinAlignmentB, key.AlignB),
                (CublasLtNative.PrefMinAlignmentC, key.AlignC), (CublasLtNative.PrefMinAlignmentD, key.AlignC) })
            {
                uint v = (uint)align;
                CublasNative.Check(CublasLtNative.cublasLtMatmulPreferenceSetAttribute(pref, attr, &v, sizeof(uint)), "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT)");
            }
            using var layouts = new Layouts(key.M, key.Rows, key.K, _abType, key.CType, key.Ldc);
            CublasLtNative.HeuristicResult result;
            int status = CublasLtNative.cublasLtMatmulAlgoGetHeuristic(_handle.DangerousGetHandle(), _op, layouts.A, layouts.B, layouts.C, layouts.C,
                pref, 1, &result, out int found);
            if (status == CublasLtNative.StatusNotSupported) return null;
            if (E4m3RowScaled && Refused(status)) return null;   // a scale mode this GPU's cuBLASLt does not take: the caller's bf16 route
            CublasNative.Check(status, $"cublasLtMatmulAlgoGetHeuristic(m={key.M}, n={key.Rows}, k={key.K})");   // other errors are not "no algorithm"
            return found >= 1 && result.State == 0 ? result.Algo : null;
        }
        finally
        {
            if (pref != 0) CublasLtNative.cublasLtMatmulPreferenceDestroy(pref);
        }
    }

    /// <summary>The largest power of two (up to 256) that divides the address.</summary>
    static int Alignment(ulong address) => address == 0 ? 256 : (int)Math.Min(256UL, address & (~address + 1));

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (CudaRuntime.TryBindForRelease()) CublasLtNative.cublasLtMatmulDescDestroy(_op);
        _workspace.Dispose();
        _handle.Dispose();
    }
}
