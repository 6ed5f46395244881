// P/Invoke to cuBLAS (cublas_api.h). cublasHandle_t = opaque pointer (nint), cudaStream_t = CUstream (nint);
// matrices are device pointers (ulong) in cuBLAS's column-major convention. Every entry returns
// cublasStatus_t (0 = CUBLAS_STATUS_SUCCESS).
using System.Runtime.InteropServices;

namespace SwiftKV.Cuda.Native;

internal static unsafe partial class CublasNative
{
    static CublasNative() => CudaLibraries.EnsureResolver();

    public const int OpN = 0;
    public const int OpT = 1;
    /// <summary>cudaDataType_t values.</summary>
    public const int CudaR32F = 0;
    public const int CudaR16BF = 14, CudaR8fE4m3 = 28;
    /// <summary>cublasComputeType_t CUBLAS_COMPUTE_32F.</summary>
    public const int Compute32F = 68;
    /// <summary>CUBLAS_COMPUTE_32F_FAST_TF32: fp32 data through TF32 tensor cores (10-bit mantissa inputs, fp32 sums).</summary>
    public const int Compute32FFastTf32 = 77;
    /// <summary>cublasGemmAlgo_t CUBLAS_GEMM_DEFAULT.</summary>
    public const int GemmDefault = -1;

    [LibraryImport(CudaLibraries.Cublas, EntryPoint = "cublasCreate_v2")] public static partial int cublasCreate(out nint handle);
    [LibraryImport(CudaLibraries.Cublas, EntryPoint = "cublasDestroy_v2")] public static partial int cublasDestroy(nint handle);
    [LibraryImport(CudaLibraries.Cublas, EntryPoint = "cublasSetStream_v2")] public static partial int cublasSetStream(nint handle, nint stream);
    [LibraryImport(CudaLibraries.Cublas, EntryPoint = "cublasGetVersion_v2")] public static partial int cublasGetVersion(nint handle, out int version);
    [LibraryImport(CudaLibraries.Cublas)]
    public static partial int cublasGemmEx(nint handle, int transa, int transb, int m, int n, int k,
        void* alpha, ulong a, int aType, int lda, ulong b, int bType, int ldb,
        void* beta, ulong c, int cType, int ldc, int computeType, int algo);
    [LibraryImport(CudaLibraries.Cublas)]
    public static partial int cublasGemmStridedBatchedEx(nint handle, int transa, int transb, int m, int n, int k,
        void* alpha, ulong a, int aType, int lda, long strideA, ulong b, int bType, int ldb, long strideB,
        void* beta, ulong c, int cType, int ldc, long strideC, int batchCount, int computeType, int algo);
    [LibraryImport(CudaLibraries.Cublas)] public static partial nint cublasGetStatusString(int status);

    public static void Check(int status, string call)
    {
        if (status == 0) return;
        string text = Marshal.PtrToStringUTF8(cublasGetStatusString(status)) ?? "unknown cuBLAS error";
        throw new CudaException($"{call} failed: {text} ({status})") { Call = call, Status = status, IsOutOfMemory = status == 3 /* CUBLAS_STATUS_ALLOC_FAILED */ };
    }
}
