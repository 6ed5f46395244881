// P/Invoke to NCCL (nccl.h): the few calls data-parallel work needs. ncclComm_t = opaque pointer (nint),
// cudaStream_t = CUstream (nint), buffers are device pointers (ulong). Every entry returns ncclResult_t (0 = ncclSuccess).
using System.Runtime.InteropServices;

namespace SwiftKV.Cuda.Native;

/// <summary>ncclUniqueId: 128 opaque bytes that rank 0 makes and every rank is given to find the others.</summary>
[StructLayout(LayoutKind.Sequential, Size = Bytes)]
internal unsafe struct NcclUniqueId
{
    public const int Bytes = 128;
    public fixed byte Internal[Bytes];
}

internal static unsafe partial class NcclNative
{
    static NcclNative() => CudaLibraries.EnsureResolver();

    /// <summary>ncclDataType_t values.</summary>
    public const int Float32 = 7, Float64 = 8;
    /// <summary>ncclRedOp_t ncclSum.</summary>
    public const int Sum = 0;

    [LibraryImport(CudaLibraries.Nccl)] public static partial int ncclGetVersion(out int version);
    [LibraryImport(CudaLibraries.Nccl)] public static partial int ncclGetUniqueId(NcclUniqueId* uniqueId);
    [LibraryImport(CudaLibraries.Nccl)] public static partial int ncclCommInitRank(out nint comm, int nranks, NcclUniqueId commId, int rank);
    [LibraryImport(CudaLibraries.Nccl)] public static partial int ncclCommDestroy(nint comm);
    [LibraryImport(CudaLibraries.Nccl)] public static partial int ncclCommAbort(nint comm);
    [LibraryImport(CudaLibraries.Nccl)]
    public static partial int ncclAllReduce(ulong sendbuff, ulong recvbuff, nuint count, int datatype, int op, nint comm, nint stream);
    [LibraryImport(CudaLibraries.Nccl)] public static partial int ncclGroupStart();
    [LibraryImport(CudaLibraries.Nccl)] public static partial int ncclGroupEnd();
    [LibraryImport(CudaLibraries.Nccl)] public static partial nint ncclGetErrorString(int result);

    /// <summary>Throws a <see cref="CudaException"/> naming <paramref name="call"/> and NCCL's own text unless <paramref name="status"/> is ncclSuccess.</summary>
    public static void Check(int status, string call)
    {
        if (status == 0) return;
        string text = Marshal.PtrToStringUTF8(ncclGetErrorString(status)) ?? "unknown error";
        // NCCL_DEBUG=WARN prints why (a peer that did not join, a network it could not use) on stderr.
        throw new CudaException($"{call} failed: NCCL error {status}: {text} (set NCCL_DEBUG=WARN for NCCL's own account)") { Call = call, Status = status };
    }
}
