// Device memory: DeviceBuffer<T> owns an allocation (freed by Dispose or, as a last resort, the finalizer);
// DeviceSpan<T> is a non-owning typed view (address + element count) that kernels and GEMMs take, so a
// launcher can check a shape against the real length and a slice (one row of a batch) costs nothing.
using System.Runtime.InteropServices;
using SwiftKV.Cuda.Native;

namespace SwiftKV.Cuda;

/// <summary>A typed view of device memory: <see cref="Length"/> elements of <typeparamref name="T"/> at <see cref="Address"/>.</summary>
public readonly record struct DeviceSpan<T>(ulong Address, long Length) where T : unmanaged
{
    public static unsafe int ElementSize => sizeof(T);
    public long ByteLength => Length * ElementSize;

    public DeviceSpan<T> Slice(long start, long length)
    {
        if (start < 0 || length < 0 || start + length > Length)
            throw new ArgumentOutOfRangeException(nameof(start), $"slice [{start}, {start + length}) is outside a device span of {Length} elements.");
        return new DeviceSpan<T>(Address + (ulong)(start * ElementSize), length);
    }

    public DeviceSpan<T> Slice(long start) => Slice(start, Length - start);
}

/// <summary>Process-wide count of bytes held by live <see cref="DeviceBuffer{T}"/>s (leak tests read it).</summary>
public static class DeviceMemory
{
    static long _allocated;
    public static long AllocatedBytes => Interlocked.Read(ref _allocated);
    internal static void Add(long bytes) => Interlocked.Add(ref _allocated, bytes);
}

sealed class DevicePointerHandle : SafeHandle
{
    readonly long _bytes;

    public DevicePointerHandle(ulong address, long bytes) : base(0, true)
    {
        SetHandle((nint)address);
        _bytes = bytes;
        DeviceMemory.Add(bytes);
    }

    public override bool IsInvalid => handle == 0;

    protected override bool ReleaseHandle()
    {
        // Counted as freed only when the free succeeded, so the leak checks of the tests see a failed one.
        bool freed = CudaRuntime.TryBindForRelease() && CuDriver.cuMemFree((ulong)handle) == 0;
        if (freed) DeviceMemory.Add(-_bytes);
        return freed;
    }
}

/// <summary>An owned device allocation of <see cref="Length"/> elements (cuMemAlloc_v2 / cuMemFree_v2).</summary>
public sealed unsafe class DeviceBuffer<T> : IDisposable where T : unmanaged
{
    readonly DevicePointerHandle _handle;

    public DeviceBuffer(long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        CudaRuntime.Bind();
        Length = length;
        long bytes = Math.Max(1, length) * sizeof(T);
        CuDriver.Check(CuDriver.cuMemAlloc(out ulong ptr, (nuint)bytes), $"cuMemAlloc_v2({bytes} bytes)");
        _handle = new DevicePointerHandle(ptr, bytes);
    }

    /// <summary>Allocates and copies <paramref name="data"/> to the device.</summary>
    public DeviceBuffer(ReadOnlySpan<T> data) : this(data.Length)
    {
        try
        {
            CopyFrom(data);
        }
        catch
        {
            _handle.Dispose();
            throw;
        }
    }

    public long Length { get; }
    public long ByteLength => Length * sizeof(T);
    public ulong Address => _handle.IsClosed ? throw new ObjectDisposedException(nameof(DeviceBuffer<T>)) : (ulong)_handle.DangerousGetHandle();
    public DeviceSpan<T> Span => new(Address, Length);
    public bool IsDisposed => _handle.IsClosed;

    public static implicit operator DeviceSpan<T>(DeviceBuffer<T> b) => b.Span;

    /// <summary>Synchronous host-to-device copy into the start of the buffer.</summary>
    public void CopyFrom(ReadOnlySpan<T> source, long offset = 0)
    {
        CheckRange(offset, source.Length);
        CudaRuntime.Bind();
        fixed (T* p = source)
            CuDriver.Check(CuDriver.cuMemcpyHtoD(Address + (ulong)(offset * sizeof(T)), p, (nuint)((long)source.Length * sizeof(T))), "cuMemcpyHtoD_v2");
    }

    /// <summary>Synchronous device-to-host copy (waits for earlier work on the legacy stream's device).</summary>
    public void CopyTo(Span<T> destination, long offset = 0)
    {
        CheckRange(offset, destination.Length);
        CudaRuntime.Bind();
        fixed (T* p = destination)
            CuDriver.Check(CuDriver.cuMemcpyDtoH(p, Address + (ulong)(offset * sizeof(T)), (nuint)((long)destination.Length * sizeof(T))), "cuMemcpyDtoH_v2");
    }

    public T[] ToArray()
    {
        var r = new T[Length];
        CopyTo(r);
        return r;
    }

    void CheckRange(long offset, long count)
    {
        if (offset < 0 || offset + count > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"copy of {count} elements at {offset} does not fit a device buffer of {Length}.");
    }

    public void Dispose() => _handle.Dispose();
}
