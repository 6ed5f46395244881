// Process-wide CUDA state: the driver initialised once, device 0 and its primary context (the same context the
// CUDA runtime inside cuBLAS uses, so driver-API memory and cuBLAS calls mix freely). Threads bind the context
// lazily (Bind) before any driver call; the context never changes, so a thread-static flag is enough.
using System.Runtime.InteropServices;
using SwiftKV.Cuda.Native;

namespace SwiftKV.Cuda;

/// <summary>What the process found: the GPU, its compute capability and the driver/NVRTC versions.</summary>
public sealed record CudaDeviceInfo(int Ordinal, string Name, int ComputeMajor, int ComputeMinor, int MultiprocessorCount,
    long TotalMemoryBytes, int DriverVersion, string NvrtcVersion, int MaxSharedBytesPerBlockOptin = 48 * 1024)
{
    /// <summary>NVRTC target: sm_XY, with the "a" (architecture-specific) suffix on Hopper so wgmma is available.</summary>
    public string Arch => ComputeMajor == 9 && ComputeMinor == 0 ? "sm_90a" : $"sm_{ComputeMajor}{ComputeMinor}";
    public override string ToString() => $"{Name} (sm_{ComputeMajor}{ComputeMinor}, {MultiprocessorCount} SMs, {TotalMemoryBytes >> 20} MiB, driver {DriverVersion}, NVRTC {NvrtcVersion})";
}

/// <summary>Initialises CUDA on first use; <see cref="TryInitialize"/> answers whether this machine can run the CUDA backend.</summary>
public static class CudaRuntime
{
    static readonly object Gate = new();
    static CudaDeviceInfo? _device;
    static string? _failure;
    static nint _context;
    [ThreadStatic] static bool _bound;
    static int _deviceCount;

    /// <summary>GPUs the driver shows this process (CUDA_VISIBLE_DEVICES applies); the process uses the first.</summary>
    public static int DeviceCount => Device is not null ? _deviceCount : 0;

    /// <summary>
    /// True when the driver, a GPU, NVRTC and cuBLAS are all usable; otherwise false with a reason that says
    /// what is missing. Never throws. The result is remembered for the process.
    /// </summary>
    public static bool TryInitialize(out string reason)
    {
        lock (Gate)
        {
            if (_device is not null) { reason = ""; return true; }
            if (_failure is not null) { reason = _failure; return false; }
            try
            {
                _device = Start();
                reason = "";
                return true;
            }
            // IO and access errors come from library discovery (an unreadable CUDA_HOME/lib64): CUDA is then not usable
            // either, and Auto must fall back to the CPU rather than throw.
            catch (Exception e) when (e is CudaException or DllNotFoundException or EntryPointNotFoundException or IOException or UnauthorizedAccessException)
            {
                reason = e.Message;
                // A GPU busy in exclusive-process mode, or out of memory for the context, may be free on the next try:
                // only lasting causes (a missing library, no device, an old driver) are remembered for the process.
                if (e is not CudaException { Status: CuDriver.ErrorOutOfMemory or ErrorDeviceUnavailable }) _failure = reason;
                return false;
            }
        }
    }

    const int ErrorDeviceUnavailable = 46;   // CUDA_ERROR_DEVICE_UNAVAILABLE: exclusive-process mode, another process holds it

    /// <summary>The device, initialising CUDA if needed; throws <see cref="CudaException"/> with the reason when it cannot.</summary>
    public static CudaDeviceInfo Device
    {
        get
        {
            if (_device is { } d) return d;
            if (!TryInitialize(out var reason)) throw new CudaException("CUDA is not available: " + reason);
            return _device!;
        }
    }

    static unsafe CudaDeviceInfo Start()
    {
        foreach (var lib in new[] { CudaLibraries.Driver, CudaLibraries.Nvrtc, CudaLibraries.Cublas, CudaLibraries.CublasLt })
            if (!CudaLibraries.TryLoad(lib, out _, out var why)) throw new CudaException(why);
        CuDriver.Check(CuDriver.cuInit(0), "cuInit");
        CuDriver.Check(CuDriver.cuDeviceGetCount(out int count), "cuDeviceGetCount");
        if (count < 1) throw new CudaException("cuDeviceGetCount: the driver sees no CUDA device.");
        _deviceCount = count;
        CuDriver.Check(CuDriver.cuDeviceGet(out int dev, 0), "cuDeviceGet");
        byte* name = stackalloc byte[256];
        CuDriver.Check(CuDriver.cuDeviceGetName(name, 256, dev), "cuDeviceGetName");
        CuDriver.Check(CuDriver.cuDeviceGetAttribute(out int major, CuDriver.AttrComputeCapabilityMajor, dev), "cuDeviceGetAttribute");
        CuDriver.Check(CuDriver.cuDeviceGetAttribute(out int minor, CuDriver.AttrComputeCapabilityMinor, dev), "cuDeviceGetAttribute");
        CuDriver.Check(CuDriver.cuDeviceGetAttribute(out int sms, CuDriver.AttrMultiprocessorCount, dev), "cuDeviceGetAttribute");
        CuDriver.Check(CuDriver.cuDeviceGetAttribute(out int sharedOptin, CuDriver.AttrMaxSharedMemoryPerBlockOptin, dev), "cuDeviceGetAttribute");
        CuDriver.Check(CuDriver.cuDeviceTotalMem(out nuint total, dev), "cuDeviceTotalMem_v2");
        CuDriver.Check(CuDriver.cuDriverGetVersion(out int driver), "cuDriverGetVersion");
        NvrtcNative.Check(NvrtcNative.nvrtcVersion(out int nvMajor, out int nvMinor), "nvrtcVersion");
        CheckDriverSupports(driver, nvMajor, nvMinor);
        // NOTE: the primary context is retained for the life of the process and never released: cuBLAS handles
        // and buffers may outlive any one backend, and releasing it would invalidate them.
        CuDriver.Check(CuDriver.cuDevicePrimaryCtxRetain(out _context, dev), "cuDevicePrimaryCtxRetain");
        CuDriver.Check(CuDriver.cuCtxSetCurrent(_context), "cuCtxSetCurrent");
        _bound = true;
        return new CudaDeviceInfo(dev, Marshal.PtrToStringUTF8((nint)name) ?? "GPU", major, minor, sms, (long)total, driver, $"{nvMajor}.{nvMinor}", sharedOptin);
    }

    /// <summary>
    /// A driver older than the toolkit libraries' major version cannot load what they make (NVRTC's code, cuBLAS's
    /// kernels): said here, at start, with what to do, instead of as an obscure status from the first GEMM or module
    /// load. Within a major version CUDA's minor-version compatibility lets an older driver run newer libraries.
    /// </summary>
    internal static void CheckDriverSupports(int driverVersion, int nvrtcMajor, int nvrtcMinor)
    {
        int driverMajor = driverVersion / 1000;
        if (driverMajor >= nvrtcMajor) return;
        throw new CudaException($"the NVIDIA driver supports CUDA up to {driverMajor}.{driverVersion % 1000 / 10}, older than the CUDA {nvrtcMajor}.{nvrtcMinor} " +
            $"libraries found (NVRTC, cuBLAS): update the NVIDIA driver to one for CUDA {nvrtcMajor}, or point CUDA_HOME at a CUDA {driverMajor}.x toolkit.");
    }

    /// <summary>Makes the device's context current on the calling thread (cheap after the first call per thread).</summary>
    public static void Bind()
    {
        if (_bound) return;
        _ = Device;
        CuDriver.Check(CuDriver.cuCtxSetCurrent(_context), "cuCtxSetCurrent");
        _bound = true;
    }

    /// <summary>Free and total device memory in bytes (cuMemGetInfo).</summary>
    public static (long Free, long Total) MemoryInfo()
    {
        Bind();
        CuDriver.Check(CuDriver.cuMemGetInfo(out nuint free, out nuint total), "cuMemGetInfo_v2");
        return ((long)free, (long)total);
    }

    /// <summary>Waits for all work on the device.</summary>
    public static void Synchronize()
    {
        Bind();
        CuDriver.Check(CuDriver.cuCtxSynchronize(), "cuCtxSynchronize");
    }

    /// <summary>Binds for a release that may run on the finalizer thread; never throws.</summary>
    internal static bool TryBindForRelease() => _context != 0 && (_bound || CuDriver.cuCtxSetCurrent(_context) == 0);
}
