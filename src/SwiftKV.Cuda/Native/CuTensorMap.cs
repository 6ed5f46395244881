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
    public static CuTensorMap EncodeBf16Rows(ulong address, long rows, long cols, int boxRows, int boxCols) =>
        EncodeBf16(address, [(ulong)cols, (ulong)rows], [(ulong)cols * 2], [(uint)boxCols, (uint)boxRows]);

    /// <summary>
    /// A bf16 tensor of up to 5 dimensions, <paramref name="dims"/> innermost first, <paramref name="strideBytes"/> the
    /// byte strides of dimensions 1.. (multiples of 16), read in boxes of <paramref name="box"/> elements with the
    /// 128-byte swizzle (the innermost box extent is 64 elements = 128 bytes); reads past the tensor give zeros.
    /// </summary>
    public static CuTensorMap EncodeBf16(ulong address, ReadOnlySpan<ulong> dims, ReadOnlySpan<ulong> strideBytes, ReadOnlySpan<uint> box)
    {
        int rank = dims.Length;
        if (rank is < 1 or > 5 || strideBytes.Length != rank - 1 || box.Length != rank)
            throw new ArgumentException($"a tensor map of rank {rank} needs {rank - 1} strides and {rank} box extents (got {strideBytes.Length}, {box.Length}).");
        // The driver wants the CUtensorMap it fills 64-byte aligned (alignas(64); 128 from CUDA 13's headers): encode
        // into an aligned scratch and return the bytes (a kernel parameter is copied by size, not by address).
        byte* scratch = stackalloc byte[128 + 128];
        var map = (CuTensorMap*)(((nuint)scratch + 127) & ~(nuint)127);
        uint* elementStrides = stackalloc uint[] { 1, 1, 1, 1, 1 };
        int status;
        fixed (ulong* d = dims)
        fixed (ulong* st = strideBytes)
        fixed (uint* b = box)
            status = cuTensorMapEncodeTiled(map, TensorMapBfloat16, (uint)rank, address, d, st, b, elementStrides, TensorMapInterleaveNone,
                TensorMapSwizzle128B, TensorMapL2Promotion256B, TensorMapOobFillZero);
        if (status != 0)   // the message only when it fails: this runs on every launch of a TMA kernel
            Check(status, $"cuTensorMapEncodeTiled(bf16 dims [{string.Join(", ", dims.ToArray())}], strides [{string.Join(", ", strideBytes.ToArray())}] B, box [{string.Join(", ", box.ToArray())}] at 0x{address:x})");
        return *map;
    }
}
