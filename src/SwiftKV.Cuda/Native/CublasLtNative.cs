// P/Invoke to cuBLASLt (cublasLt.h): the matmul descriptors, the algorithm heuristic and the matmul itself. Handles
// and descriptors are opaque pointers (nint); matrices are device pointers (ulong) in column-major layouts. Every entry
// returns cublasStatus_t (0 = CUBLAS_STATUS_SUCCESS), whose text comes from cuBLAS (CublasNative.Check).
using System.Runtime.InteropServices;

namespace SwiftKV.Cuda.Native;

internal static unsafe partial class CublasLtNative
{
    static CublasLtNative() => CudaLibraries.EnsureResolver();

    /// <summary>cublasLtMatmulDescAttributes_t.</summary>
    public const int DescTransA = 3, DescTransB = 4, DescAScalePointer = 17, DescBScalePointer = 18, DescAScaleMode = 31, DescBScaleMode = 32;
    /// <summary>cublasLtMatmulMatrixScale_t: one fp32 scale per row of op(A) (m) and per column of B (n).</summary>
    public const int MatrixScaleOuterVec32F = 3;
    /// <summary>cublasLtMatmulPreferenceAttributes_t.</summary>
    public const int PrefMaxWorkspaceBytes = 1, PrefMinAlignmentA = 5, PrefMinAlignmentB = 6, PrefMinAlignmentC = 7, PrefMinAlignmentD = 8;
    /// <summary>cublasStatus_t values an algorithm that does not fit a problem returns.</summary>
    public const int StatusInvalidValue = 7, StatusNotSupported = 15;

    /// <summary>cublasLtMatmulAlgo_t: 8 opaque words.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct MatmulAlgo
    {
        public fixed ulong Data[8];
    }

    /// <summary>cublasLtMatmulHeuristicResult_t.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct HeuristicResult
    {
        public MatmulAlgo Algo;
        public nuint WorkspaceSize;
        public int State;
        public float WavesCount;
        public fixed int Reserved[4];
    }

    [LibraryImport(CudaLibraries.CublasLt)] public static partial int cublasLtCreate(out nint handle);
    [LibraryImport(CudaLibraries.CublasLt)] public static partial int cublasLtDestroy(nint handle);
    [LibraryImport(CudaLibraries.CublasLt)] public static partial int cublasLtMatmulDescCreate(out nint desc, int computeType, int scaleType);
    [LibraryImport(CudaLibraries.CublasLt)] public static partial int cublasLtMatmulDescDestroy(nint desc);
    [LibraryImport(CudaLibraries.CublasLt)] public static partial int cublasLtMatmulDescSetAttribute(nint desc, int attr, void* value, nuint size);
    [LibraryImport(CudaLibraries.CublasLt)] public static partial int cublasLtMatrixLayoutCreate(out nint layout, int type, ulong rows, ulong cols, long ld);
    [LibraryImport(CudaLibraries.CublasLt)] public static partial int cublasLtMatrixLayoutDestroy(nint layout);
    [LibraryImport(CudaLibraries.CublasLt)] public static partial int cublasLtMatmulPreferenceCreate(out nint pref);
    [LibraryImport(CudaLibraries.CublasLt)] public static partial int cublasLtMatmulPreferenceDestroy(nint pref);
    [LibraryImport(CudaLibraries.CublasLt)] public static partial int cublasLtMatmulPreferenceSetAttribute(nint pref, int attr, void* value, nuint size);
    [LibraryImport(CudaLibraries.CublasLt)]
    public static partial int cublasLtMatmulAlgoGetHeuristic(nint handle, nint opDesc, nint aDesc, nint bDesc, nint cDesc, nint dDesc,
        nint preference, int requested, HeuristicResult* results, out int returned);
    [LibraryImport(CudaLibraries.CublasLt)]
    public static partial int cublasLtMatmul(nint handle, nint opDesc, void* alpha, ulong a, nint aDesc, ulong b, nint bDesc,
        void* beta, ulong c, nint cDesc, ulong d, nint dDesc, MatmulAlgo* algo, ulong workspace, nuint workspaceBytes, nint stream);
}
