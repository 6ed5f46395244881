// cuBLAS for the engine's linear layers: y (rows, out) = x (rows, in) · W (out, in)ᵀ with bf16 x and W,
// fp32 accumulation and an fp32 y, optionally accumulated into y (beta = 1: the residual add for free).
// Row-major (rows, out) is column-major (out, rows), so the call is C = op(A)·B with A = W stored
// column-major as (in, out) and transposed: m = out, n = rows, k = in, lda = ldb = in, ldc = out.
using System.Runtime.InteropServices;
using SwiftKV.Cuda.Native;

namespace SwiftKV.Cuda;

sealed class CublasHandle() : SafeHandle(0, true)
{
    public override bool IsInvalid => handle == 0;
    public void Set(nint h) => SetHandle(h);
    protected override bool ReleaseHandle() => CudaRuntime.TryBindForRelease() && CublasNative.cublasDestroy(handle) == 0;
}

/// <summary>An owned cuBLAS handle bound to one stream.</summary>
public sealed unsafe class Cublas : IDisposable
{
    readonly CublasHandle _handle = new();

    public Cublas(CudaStream stream)
    {
        CudaRuntime.Bind();
        CublasNative.Check(CublasNative.cublasCreate(out nint h), "cublasCreate_v2");
        _handle.Set(h);
        CublasNative.Check(CublasNative.cublasSetStream(h, stream.Handle), "cublasSetStream_v2");
        CublasNative.Check(CublasNative.cublasGetVersion(h, out int v), "cublasGetVersion_v2");
        Version = v;
    }

    public int Version { get; }

    nint Handle => _handle.IsClosed ? throw new ObjectDisposedException(nameof(Cublas)) : _handle.DangerousGetHandle();

    /// <summary>
    /// y (rows, outDim) = x (rows, inDim) · w (outDim, inDim)ᵀ [+ y when <paramref name="accumulate"/>].
    /// <paramref name="ldy"/> is y's row stride (defaults to outDim), so results can land in a column slice.
    /// </summary>
    public void Linear(DeviceSpan<Bf16> x, int rows, int inDim, DeviceSpan<Bf16> w, int outDim, DeviceSpan<float> y,
        bool accumulate = false, int ldy = 0)
    {
        if (ldy == 0) ldy = outDim;
        if (rows < 1 || inDim < 1 || outDim < 1 || ldy < outDim)
            throw new ArgumentException($"Linear: bad shape rows={rows} in={inDim} out={outDim} ldy={ldy}.");
        Need(x.Length, (long)rows * inDim, "x", $"({rows}, {inDim})");
        Need(w.Length, (long)outDim * inDim, "w", $"({outDim}, {inDim})");
        Need(y.Length, (long)(rows - 1) * ldy + outDim, "y", $"({rows}, {outDim}) with row stride {ldy}");
        float alpha = 1, beta = accumulate ? 1 : 0;
        CudaRuntime.Bind();
        CublasNative.Check(CublasNative.cublasGemmEx(Handle, CublasNative.OpT, CublasNative.OpN, outDim, rows, inDim,
            &alpha, w.Address, CublasNative.CudaR16BF, inDim, x.Address, CublasNative.CudaR16BF, inDim,
            &beta, y.Address, CublasNative.CudaR32F, ldy, CublasNative.Compute32F, CublasNative.GemmDefault),
            $"cublasGemmEx(m={outDim}, n={rows}, k={inDim})");
    }

    static void Need(long have, long need, string what, string shape)
    {
        if (have < need) throw new ArgumentException($"Linear: {what} holds {have} elements, {shape} needs {need}.");
    }

    public void Dispose() => _handle.Dispose();
}
