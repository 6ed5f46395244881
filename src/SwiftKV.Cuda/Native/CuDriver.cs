// P/Invoke to the CUDA driver API (cuda.h), the subset the engine uses. C types beside each handle:
// CUdevice = int, CUcontext/CUmodule/CUfunction/CUstream/CUevent = opaque pointers (nint),
// CUdeviceptr = unsigned long long (ulong), size_t = nuint. Every entry returns CUresult (0 = CUDA_SUCCESS);
// Check turns any other value into a CudaException naming the call.
using System.Runtime.InteropServices;

namespace SwiftKV.Cuda.Native;

internal static unsafe partial class CuDriver
{
    static CuDriver() => CudaLibraries.EnsureResolver();

    public const int AttrMultiprocessorCount = 16;
    public const int AttrComputeCapabilityMajor = 75;
    public const int AttrComputeCapabilityMinor = 76;
    public const int AttrMaxSharedMemoryPerBlockOptin = 97;

    [LibraryImport(CudaLibraries.Driver)] public static partial int cuInit(uint flags);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDriverGetVersion(out int version);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDeviceGetCount(out int count);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDeviceGet(out int device, int ordinal);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDeviceGetName(byte* name, int len, int device);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDeviceGetAttribute(out int value, int attribute, int device);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuDeviceTotalMem_v2")] public static partial int cuDeviceTotalMem(out nuint bytes, int device);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuDevicePrimaryCtxRetain(out nint context, int device);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuDevicePrimaryCtxRelease_v2")] public static partial int cuDevicePrimaryCtxRelease(int device);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuCtxSetCurrent(nint context);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuCtxSynchronize();

    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemAlloc_v2")] public static partial int cuMemAlloc(out ulong dptr, nuint bytes);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemFree_v2")] public static partial int cuMemFree(ulong dptr);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemGetInfo_v2")] public static partial int cuMemGetInfo(out nuint free, out nuint total);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemcpyHtoD_v2")] public static partial int cuMemcpyHtoD(ulong dst, void* src, nuint bytes);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemcpyDtoH_v2")] public static partial int cuMemcpyDtoH(void* dst, ulong src, nuint bytes);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemcpyHtoDAsync_v2")] public static partial int cuMemcpyHtoDAsync(ulong dst, void* src, nuint bytes, nint stream);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemcpyDtoHAsync_v2")] public static partial int cuMemcpyDtoHAsync(void* dst, ulong src, nuint bytes, nint stream);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemcpyDtoDAsync_v2")] public static partial int cuMemcpyDtoDAsync(ulong dst, ulong src, nuint bytes, nint stream);

    [LibraryImport(CudaLibraries.Driver)] public static partial int cuStreamCreate(out nint stream, uint flags);
    /// <summary>CU_STREAM_NON_BLOCKING: the stream does not synchronise with the legacy default stream.</summary>
    public const uint StreamNonBlocking = 1;
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuStreamDestroy_v2")] public static partial int cuStreamDestroy(nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuStreamSynchronize(nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuEventCreate(out nint evt, uint flags);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuEventDestroy_v2")] public static partial int cuEventDestroy(nint evt);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuEventRecord(nint evt, nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuEventSynchronize(nint evt);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuEventElapsedTime(out float ms, nint start, nint end);

    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemHostAlloc")] public static partial int cuMemHostAlloc(out nint pp, nuint bytes, uint flags);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuMemFreeHost(nint p);
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemsetD32Async")] public static partial int cuMemsetD32Async(ulong dst, uint value, nuint count, nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuStreamWaitEvent(nint stream, nint evt, uint flags);

    /// <summary>CUstreamCaptureMode RELAXED (2): cuBLAS may query or set up state while a stream is captured.</summary>
    public const int CaptureModeRelaxed = 2;
    /// <summary>CUDA_ERROR_NOT_FOUND: e.g. cuModuleGetFunction for an entry the module does not have.</summary>
    public const int ErrorNotFound = 500;
    /// <summary>CUDA_ERROR_OUT_OF_MEMORY.</summary>
    public const int ErrorOutOfMemory = 2;
    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuStreamBeginCapture_v2")] public static partial int cuStreamBeginCapture(nint stream, int mode);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuStreamEndCapture(nint stream, out nint graph);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGraphInstantiateWithFlags(out nint exec, nint graph, ulong flags);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGraphLaunch(nint exec, nint stream);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGraphGetNodes(nint graph, nint* nodes, ref nuint count);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGraphDestroy(nint graph);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGraphExecDestroy(nint exec);

    [LibraryImport(CudaLibraries.Driver)] public static partial int cuModuleLoadData(out nint module, void* image);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuModuleUnload(nint module);
    [LibraryImport(CudaLibraries.Driver, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int cuModuleGetFunction(out nint function, nint module, string name);
    [LibraryImport(CudaLibraries.Driver)]
    public static partial int cuLaunchKernel(nint f, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedMemBytes, nint stream, void** kernelParams, void** extra);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGetErrorString(int error, out nint str);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuGetErrorName(int error, out nint str);

    /// <summary>Throws a <see cref="CudaException"/> naming <paramref name="call"/> unless <paramref name="status"/> is CUDA_SUCCESS.</summary>
    public static void Check(int status, string call)
    {
        if (status == 0) return;
        bool lost = IsContextLost(status);
        throw new CudaException($"{call} failed: {Describe(status)}" + (lost ? ContextLostAdvice : ""))
        {
            Call = call, Status = status, IsOutOfMemory = status == ErrorOutOfMemory, IsContextLost = lost,
        };
    }

    internal const string ContextLostAdvice = "; after this error the CUDA context is unusable and every later GPU call in this process fails: restart the process.";

    /// <summary>
    /// "Sticky" errors: a kernel faulted (illegal address or instruction, misaligned access, a trap, a timeout), after
    /// which the driver refuses every call in the context, so no request can run until the process restarts.
    /// </summary>
    internal static bool IsContextLost(int status) => status is 700 or 702 or (>= 714 and <= 719);

    public static string Describe(int status)
    {
        string name = cuGetErrorName(status, out var n) == 0 && n != 0 ? Marshal.PtrToStringUTF8(n)! : "CUDA_ERROR_" + status;
        string text = cuGetErrorString(status, out var s) == 0 && s != 0 ? Marshal.PtrToStringUTF8(s)! : "unknown error";
        return $"{name} ({status}): {text}";
    }
}
