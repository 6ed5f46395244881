// P/Invoke to the driver's tensor-map encoder (cuTensorMapEncodeTiled, cuda.h, CUDA 12+) and cluster occupancy
// (cuOccupancyMaxActiveClusters): Hopper's TMA copies tiles described by a 128-byte CUtensorMap that the kernel takes
// by value (a __grid_constant__ parameter), and a kernel built for clusters must know how many fit at once.
using System.Runtime.InteropServices;

namespace SwiftKV.Cuda.Native;

/// <summary>The driver's opaque CUtensorMap: 128 bytes, passed to a kernel by value.</summary>
[StructLayout(LayoutKind.Sequential, Size = 128)]
internal unsafe struct CuTensorMap
{
    fixed ulong _opaque[16];
}

internal static unsafe partial class CuDriver
{
    // CUtensorMapDataType, CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill
    public const int TensorMapBfloat16 = 9, TensorMapInterleaveNone = 0, TensorMapSwizzle128B = 3, TensorMapL2Promotion256B = 3, TensorMapOobFillZero = 0;

    [LibraryImport(CudaLibraries.Driver)]
    public static partial int cuTensorMapEncodeTiled(CuTensorMap* tensorMap, int dataType, uint rank, ulong globalAddress, ulong* globalDim,
        ulong* globalStrides, uint* boxDim, uint* elementStrides, int interleave, int swizzle, int l2Promotion, int oobFill);

    [LibraryImport(CudaLibraries.Driver)]
    public static partial int cuOccupancyMaxActiveClusters(out int numClusters, nint function, LaunchConfig* config);

    /// <summary>
    /// A 2-D bf16 tensor of <paramref name="rows"/> x <paramref name="cols"/> (row-major, rows 16-byte aligned) read in
    /// boxes of <paramref name="boxRows"/> x <paramref name="boxCols"/> with the 128-byte swizzle that wgmma's
    /// descriptors expect; reads past the tensor give zeros.
    /// </summary>
    public static CuTensorMap EncodeBf16Rows(ulong address, long rows, long cols, int boxRows, int boxCols)
    {
        // The driver wants the CUtensorMap it fills 64-byte aligned (alignas(64); 128 from CUDA 13's headers): encode
        // into an aligned scratch and return the bytes (a kernel parameter is copied by size, not by address).
        byte* scratch = stackalloc byte[128 + 128];
        var map = (CuTensorMap*)(((nuint)scratch + 127) & ~(nuint)127);
        ulong* dims = stackalloc ulong[] { (ulong)cols, (ulong)rows };
        ulong* strides = stackalloc ulong[] { (ulong)cols * 2 };
        uint* box = stackalloc uint[] { (uint)boxCols, (uint)boxRows };
        uint* elementStrides = stackalloc uint[] { 1, 1 };
        Check(cuTensorMapEncodeTiled(map, TensorMapBfloat16, 2, address, dims, strides, box, elementStrides, TensorMapInterleaveNone,
            TensorMapSwizzle128B, TensorMapL2Promotion256B, TensorMapOobFillZero), $"cuTensorMapEncodeTiled({rows} x {cols} bf16 at 0x{address:x})");
        return *map;
    }
}
