// P/Invoke to cuLaunchKernelEx (cuda.h, CUDA 12+) for programmatic dependent launch on sm_90+: a kernel launched
// with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION may start while the kernel before it on the stream
// is still finishing; its griddepcontrol.wait then blocks until that kernel's writes are visible. Struct layouts
// follow cuda.h: CUlaunchConfig (7 uints, CUstream, CUlaunchAttribute*, uint) and CUlaunchAttribute (id, 4 bytes
// of padding, a 64-byte value union).
using System.Runtime.InteropServices;

namespace SwiftKV.Cuda.Native;

internal static unsafe partial class CuDriver
{
    /// <summary>CUlaunchAttributeID CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION.</summary>
    public const int LaunchAttrProgrammaticStreamSerialization = 6;

    [StructLayout(LayoutKind.Sequential)]
    public struct LaunchAttribute
    {
        public int Id;
        int _pad;
        public fixed byte Value[64];
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct LaunchConfig
    {
        public uint GridX, GridY, GridZ, BlockX, BlockY, BlockZ, SharedBytes;
        public nint Stream;
        public LaunchAttribute* Attrs;
        public uint NumAttrs;
    }

    [LibraryImport(CudaLibraries.Driver)] public static partial int cuLaunchKernelEx(LaunchConfig* config, nint f, void** kernelParams, void** extra);
}
