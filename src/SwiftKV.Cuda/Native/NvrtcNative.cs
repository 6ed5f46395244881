// P/Invoke to NVRTC (nvrtc.h), the run-time CUDA C++ compiler. nvrtcProgram = opaque pointer (nint);
// every entry returns nvrtcResult (0 = NVRTC_SUCCESS).
using System.Runtime.InteropServices;

namespace SwiftKV.Cuda.Native;

internal static unsafe partial class NvrtcNative
{
    static NvrtcNative() => CudaLibraries.EnsureResolver();

    [LibraryImport(CudaLibraries.Nvrtc)] public static partial int nvrtcVersion(out int major, out int minor);
    [LibraryImport(CudaLibraries.Nvrtc)]
    public static partial int nvrtcCreateProgram(out nint prog, byte* src, byte* name, int numHeaders, byte** headers, byte** includeNames);
    [LibraryImport(CudaLibraries.Nvrtc)] public static partial int nvrtcDestroyProgram(ref nint prog);
    [LibraryImport(CudaLibraries.Nvrtc)] public static partial int nvrtcCompileProgram(nint prog, int numOptions, byte** options);
    [LibraryImport(CudaLibraries.Nvrtc)] public static partial int nvrtcGetProgramLogSize(nint prog, out nuint size);
    [LibraryImport(CudaLibraries.Nvrtc)] public static partial int nvrtcGetProgramLog(nint prog, byte* log);
    [LibraryImport(CudaLibraries.Nvrtc)] public static partial int nvrtcGetCUBINSize(nint prog, out nuint size);
    [LibraryImport(CudaLibraries.Nvrtc)] public static partial int nvrtcGetCUBIN(nint prog, byte* cubin);
    [LibraryImport(CudaLibraries.Nvrtc)] public static partial int nvrtcGetPTXSize(nint prog, out nuint size);
    [LibraryImport(CudaLibraries.Nvrtc)] public static partial int nvrtcGetPTX(nint prog, byte* ptx);
    [LibraryImport(CudaLibraries.Nvrtc)] public static partial nint nvrtcGetErrorString(int result);

    public static void Check(int status, string call)
    {
        if (status == 0) return;
        string text = Marshal.PtrToStringUTF8(nvrtcGetErrorString(status)) ?? "unknown NVRTC error";
        throw new CudaException($"{call} failed: {text} ({status})") { Call = call, Status = status, IsOutOfMemory = status == 1 /* NVRTC_ERROR_OUT_OF_MEMORY */ };
    }
}
