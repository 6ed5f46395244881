// A loaded CUBIN (cuModuleLoadData) and its kernels. Launch takes the kernel's argument pointers in the
// order of the extern "C" signature; the typed launchers in Kernels/ are the only callers.
using System.Runtime.InteropServices;
using SwiftKV.Cuda.Native;

namespace SwiftKV.Cuda;

sealed class ModuleHandle() : SafeHandle(0, true)
{
    public override bool IsInvalid => handle == 0;
    public void Set(nint h) => SetHandle(h);
    protected override bool ReleaseHandle() => CudaRuntime.TryBindForRelease() && CuDriver.cuModuleUnload(handle) == 0;
}

/// <summary>An owned CUmodule.</summary>
public sealed unsafe class CudaModule : IDisposable
{
    readonly ModuleHandle _handle = new();

    public CudaModule(byte[] image, string name)
    {
        Name = name;
        CudaRuntime.Bind();
        fixed (byte* p = image)
        {
            CuDriver.Check(CuDriver.cuModuleLoadData(out nint m, p), $"cuModuleLoadData({name})");
            _handle.Set(m);
        }
    }

    public string Name { get; }

    public CudaKernel GetKernel(string entry)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuModuleGetFunction(out nint f, _handle.DangerousGetHandle(), entry), $"cuModuleGetFunction({Name}:{entry})");
        return new CudaKernel(this, f, entry);
    }

    /// <summary>True once the module was unloaded: its kernels may not launch any more.</summary>
    public bool IsDisposed => _handle.IsClosed;

    public void Dispose() => _handle.Dispose();
}

/// <summary>One kernel entry point of a <see cref="CudaModule"/> (valid while the module lives).</summary>
public sealed unsafe class CudaKernel
{
    readonly CudaModule _module;
    readonly nint _function;

    internal CudaKernel(CudaModule module, nint function, string name)
    {
        _module = module;
        _function = function;
        Name = name;
    }

    public string Name { get; }

    /// <summary>CUfunction_attribute values used by the launchers (cuda.h).</summary>
    public const int AttrMaxThreadsPerBlock = 0, AttrLocalSizeBytes = 3, AttrNumRegs = 4, AttrMaxDynamicSharedBytes = 8, AttrSharedCarveoutPercent = 9,
        AttrRequiredClusterWidth = 11;

    /// <summary>cuFuncSetAttribute, e.g. <see cref="AttrMaxDynamicSharedBytes"/> before a launch over 48 KB of shared memory.</summary>
    public void SetAttribute(int attribute, int value)
    {
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuFuncSetAttribute(_function, attribute, value), $"cuFuncSetAttribute({_module.Name}:{Name}, {attribute}, {value})");
    }

    /// <summary>cuFuncGetAttribute (registers per thread, local-memory bytes, ...).</summary>
    public int GetAttribute(int attribute)
    {
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuFuncGetAttribute(out int v, attribute, _function), $"cuFuncGetAttribute({_module.Name}:{Name}, {attribute})");
        return v;
    }

    /// <summary>CTAs of this kernel that fit on one SM with this block size and dynamic shared memory (0: none fits).</summary>
    public int MaxActiveBlocksPerMultiprocessor(int block, int sharedBytes)
    {
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuOccupancyMaxActiveBlocksPerMultiprocessor(out int n, _function, block, (nuint)sharedBytes),
            $"cuOccupancyMaxActiveBlocksPerMultiprocessor({_module.Name}:{Name}, {block}, {sharedBytes})");
        return n;
    }

    /// <summary>
    /// How many clusters of <paramref name="clusterSize"/> CTAs of a kernel built with those cluster dimensions (__cluster_dims__) fit on the device at once
    /// with this block size and dynamic shared memory (cuOccupancyMaxActiveClusters): a persistent kernel sizes its
    /// grid by it, since a GPC can leave SMs that no whole cluster fits on.
    /// </summary>
    public int MaxActiveClusters(uint clusterSize, uint block, uint sharedBytes)
    {
        CudaRuntime.Bind();
        // The grid must be a whole number of clusters (CUDA_ERROR_INVALID_CLUSTER_SIZE otherwise).
        var config = new CuDriver.LaunchConfig { GridX = clusterSize, GridY = 1, GridZ = 1, BlockX = block, BlockY = 1, BlockZ = 1, SharedBytes = sharedBytes };
        CuDriver.Check(CuDriver.cuOccupancyMaxActiveClusters(out int n, _function, &config), $"cuOccupancyMaxActiveClusters({_module.Name}:{Name})");
        return n;
    }

    /// <summary>
    /// cuLaunchKernel on <paramref name="stream"/>; <paramref name="args"/> points at each argument's value.
    /// <paramref name="programmatic"/>: launch with programmatic stream serialization (cuLaunchKernelEx), so the kernel
    /// may start before the previous one on the stream has finished. Only for kernels that call griddepcontrol.wait
    /// before touching anything an earlier kernel writes (native-kernels: pdl_wait), and only on sm_90+.
    /// </summary>
    public void Launch(CudaStream stream, (uint X, uint Y, uint Z) grid, uint block, uint sharedBytes, void** args, bool programmatic = false)
    {
        if (grid.X == 0 || grid.Y == 0 || grid.Z == 0) return;
        // A CUfunction of an unloaded module is a dangling handle: refuse instead of launching it.
        ObjectDisposedException.ThrowIf(_module.IsDisposed, _module);
        CudaRuntime.Bind();
        if (!programmatic)
        {
            CuDriver.Check(CuDriver.cuLaunchKernel(_function, grid.X, grid.Y, grid.Z, block, 1, 1, sharedBytes, stream.Handle, args, null),
                $"cuLaunchKernel({_module.Name}:{Name})");
            return;
        }
        CuDriver.LaunchAttribute attr = default;
        attr.Id = CuDriver.LaunchAttrProgrammaticStreamSerialization;
        *(int*)attr.Value = 1;
        var config = new CuDriver.LaunchConfig
        {
            GridX = grid.X, GridY = grid.Y, GridZ = grid.Z, BlockX = block, BlockY = 1, BlockZ = 1, SharedBytes = sharedBytes,
            Stream = stream.Handle, Attrs = &attr, NumAttrs = 1,
        };
        CuDriver.Check(CuDriver.cuLaunchKernelEx(&config, _function, args, null), $"cuLaunchKernelEx({_module.Name}:{Name}, programmatic)");
    }
}
