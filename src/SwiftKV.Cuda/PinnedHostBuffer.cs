// Page-locked host memory (cuMemHostAlloc): the only host memory the GPU's copy engines read at full PCIe speed and
// asynchronously, so weight staging and per-step token uploads overlap with other work instead of blocking on it.
using System.Runtime.InteropServices;
using SwiftKV.Cuda.Native;

namespace SwiftKV.Cuda;

sealed class PinnedHandle() : SafeHandle(0, true)
{
    public override bool IsInvalid => handle == 0;
    public void Set(nint h) => SetHandle(h);
    protected override bool ReleaseHandle() => CudaRuntime.TryBindForRelease() && CuDriver.cuMemFreeHost(handle) == 0;
}

/// <summary>An owned pinned host allocation of <see cref="ByteLength"/> bytes.</summary>
public sealed unsafe class PinnedHostBuffer : IDisposable
{
    readonly PinnedHandle _handle = new();

    public PinnedHostBuffer(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(bytes, 1);
        CudaRuntime.Bind();
        // Flags 0: portable to this context only; not write-combined, because the loader also reads it back never
        // but converts into it with ordinary stores, which write-combining would slow on some CPUs.
        CuDriver.Check(CuDriver.cuMemHostAlloc(out nint p, (nuint)bytes, 0), $"cuMemHostAlloc({bytes} bytes)");
        _handle.Set(p);
        ByteLength = bytes;
    }

    public long ByteLength { get; }

    /// <summary>The first byte; valid until Dispose.</summary>
    public byte* Pointer => _handle.IsClosed ? throw new ObjectDisposedException(nameof(PinnedHostBuffer)) : (byte*)_handle.DangerousGetHandle();

    /// <summary>The buffer viewed as <paramref name="count"/> values of <typeparamref name="T"/>.</summary>
    public Span<T> AsSpan<T>(int count) where T : unmanaged
    {
        if ((long)count * sizeof(T) > ByteLength) throw new ArgumentOutOfRangeException(nameof(count), $"{count} x {sizeof(T)} bytes exceed the pinned buffer's {ByteLength}.");
        return new Span<T>(Pointer, count);
    }

    public void Dispose() => _handle.Dispose();
}
