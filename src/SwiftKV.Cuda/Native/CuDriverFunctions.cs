// P/Invoke to the CUDA driver's per-kernel attributes (cuFuncSetAttribute / cuFuncGetAttribute): kernels that use
// more than 48 KB of dynamic shared memory must raise their limit first, and benchmarks read register counts; and
// how many CTAs of a kernel fit on one SM.
using System.Runtime.InteropServices;

namespace SwiftKV.Cuda.Native;

internal static partial class CuDriver
{
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuFuncSetAttribute(nint function, int attribute, int value);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuFuncGetAttribute(out int value, int attribute, nint function);
    [LibraryImport(CudaLibraries.Driver)] public static partial int cuOccupancyMaxActiveBlocksPerMultiprocessor(out int blocks, nint function, int blockSize, nuint dynamicSharedBytes);
}
