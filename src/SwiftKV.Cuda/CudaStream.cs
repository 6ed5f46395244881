// A CUDA stream and timing events. NOTE: streams are blocking by default, so the synchronous cuMemcpy* calls on the
// legacy stream that DeviceBuffer makes stay ordered with the work queued here (tests rely on that). A backend's
// stream is non-blocking: legacy-stream work elsewhere in the process (another model's test code, a user's CUDA)
// then never joins it, which would be an error while the backend captures a graph on it.
using System.Runtime.InteropServices;
using SwiftKV.Cuda.Native;

namespace SwiftKV.Cuda;

sealed class StreamHandle() : SafeHandle(0, true)
{
    public override bool IsInvalid => handle == 0;
    public void Set(nint h) => SetHandle(h);
    protected override bool ReleaseHandle() => CudaRuntime.TryBindForRelease() && CuDriver.cuStreamDestroy(handle) == 0;
}

sealed class EventHandle() : SafeHandle(0, true)
{
    public override bool IsInvalid => handle == 0;
    public void Set(nint h) => SetHandle(h);
    protected override bool ReleaseHandle() => CudaRuntime.TryBindForRelease() && CuDriver.cuEventDestroy(handle) == 0;
}

/// <summary>An owned CUstream.</summary>
public sealed unsafe class CudaStream : IDisposable
{
    readonly StreamHandle _handle = new();

    /// <param name="nonBlocking">
    /// True: no implicit synchronisation with the legacy default stream (CU_STREAM_NON_BLOCKING), so DeviceBuffer's
    /// synchronous copies are not ordered with this stream's work: its owner must use only this stream's copies.
    /// </param>
    public CudaStream(bool nonBlocking = false)
    {
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuStreamCreate(out nint s, nonBlocking ? CuDriver.StreamNonBlocking : 0u), "cuStreamCreate");
        _handle.Set(s);
    }

    int _captureThread;   // managed thread id whose capture on this stream holds CaptureGate; 0: none

    /// <summary>
    /// Takes <see cref="CaptureGate"/> for a capture on this stream (once, however often a capture restarts); false when
    /// the stream already held it, so a failed second begin must not give back the gate the open capture holds.
    /// </summary>
    internal bool EnterCaptureGate()
    {
        if (Volatile.Read(ref _captureThread) != 0) return false;
        int me = Environment.CurrentManagedThreadId;
        CaptureGate.EnterCapture(me);
        Volatile.Write(ref _captureThread, me);
        return true;
    }

    /// <summary>Gives the gate back (any thread, once).</summary>
    internal void ExitCaptureGate()
    {
        int thread = Interlocked.Exchange(ref _captureThread, 0);
        if (thread != 0) CaptureGate.ExitCapture(thread);
    }

    public nint Handle => _handle.IsClosed ? throw new ObjectDisposedException(nameof(CudaStream)) : _handle.DangerousGetHandle();

    public void Synchronize()
    {
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuStreamSynchronize(Handle), "cuStreamSynchronize");
    }

    /// <summary>Queues setting every element of <paramref name="destination"/> to <paramref name="value"/>.</summary>
    public void FillAsync(DeviceSpan<int> destination, int value)
    {
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuMemsetD32Async(destination.Address, unchecked((uint)value), (nuint)destination.Length, Handle), "cuMemsetD32Async");
    }

    /// <summary>Queues a host-to-device copy; the source must stay alive and unchanged until the stream reaches it.</summary>
    public void CopyAsync<T>(DeviceSpan<T> destination, T* source, long count) where T : unmanaged
    {
        if (count > destination.Length) throw new ArgumentOutOfRangeException(nameof(count), $"{count} elements do not fit a device span of {destination.Length}.");
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuMemcpyHtoDAsync(destination.Address, source, (nuint)((long)count * sizeof(T)), Handle), "cuMemcpyHtoDAsync_v2");
    }

    /// <summary>Queues a host-to-device copy of raw bytes (pinned source: truly asynchronous).</summary>
    public void CopyBytesAsync(ulong destination, void* source, long bytes)
    {
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuMemcpyHtoDAsync(destination, source, (nuint)bytes, Handle), "cuMemcpyHtoDAsync_v2");
    }

    /// <summary>Queues a device-to-device copy of <paramref name="bytes"/> bytes.</summary>
    public void CopyDeviceAsync(ulong destination, ulong source, long bytes)
    {
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuMemcpyDtoDAsync(destination, source, (nuint)bytes, Handle), "cuMemcpyDtoDAsync_v2");
    }

    /// <summary>Queues a device-to-host copy without waiting (pinned destination: read it after the stream passes an event).</summary>
    public void DownloadAsync<T>(DeviceSpan<T> source, T* destination, long count) where T : unmanaged
    {
        if (count > source.Length) throw new ArgumentOutOfRangeException(nameof(count), $"{count} elements requested from a device span of {source.Length}.");
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuMemcpyDtoHAsync(destination, source.Address, (nuint)((long)count * sizeof(T)), Handle), "cuMemcpyDtoHAsync_v2");
    }

    /// <summary>Makes later work on this stream wait for <paramref name="e"/>.</summary>
    public void Wait(CudaEvent e)
    {
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuStreamWaitEvent(Handle, e.Handle, 0), "cuStreamWaitEvent");
    }

    /// <summary>Copies host memory to the device on this stream and waits for it (and everything queued before it).</summary>
    public void Upload<T>(ReadOnlySpan<T> source, DeviceSpan<T> destination) where T : unmanaged
    {
        fixed (T* p = source)
        {
            CopyAsync(destination, p, source.Length);
            Synchronize();   // pageable source: the copy must be done before the span can move
        }
    }

    /// <summary>Copies device memory to the host and waits for it (and everything queued before it).</summary>
    public void Download<T>(DeviceSpan<T> source, Span<T> destination) where T : unmanaged
    {
        if (destination.Length > source.Length) throw new ArgumentOutOfRangeException(nameof(destination), $"{destination.Length} elements requested from a device span of {source.Length}.");
        CudaRuntime.Bind();
        fixed (T* p = destination)
        {
            CuDriver.Check(CuDriver.cuMemcpyDtoHAsync(p, source.Address, (nuint)((long)destination.Length * sizeof(T)), Handle), "cuMemcpyDtoHAsync_v2");
            Synchronize();
        }
    }

    public void Dispose()
    {
        ExitCaptureGate();   // a capture left open (its owner failed) must not hold other threads up
        _handle.Dispose();
    }
}

/// <summary>A CUevent for timing work on a stream.</summary>
public sealed class CudaEvent : IDisposable
{
    readonly EventHandle _handle = new();

    public CudaEvent()
    {
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuEventCreate(out nint e, 0), "cuEventCreate");
        _handle.Set(e);
    }

    internal nint Handle => _handle.IsClosed ? throw new ObjectDisposedException(nameof(CudaEvent)) : _handle.DangerousGetHandle();

    public void Record(CudaStream stream)
    {
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuEventRecord(Handle, stream.Handle), "cuEventRecord");
    }

    /// <summary>Waits on the host until the work before the last Record has finished.</summary>
    public void Synchronize()
    {
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuEventSynchronize(Handle), "cuEventSynchronize");
    }

    /// <summary>Milliseconds between two recorded events (waits for <paramref name="end"/>).</summary>
    public static float ElapsedMs(CudaEvent start, CudaEvent end)
    {
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuEventSynchronize(end.Handle), "cuEventSynchronize");
        CuDriver.Check(CuDriver.cuEventElapsedTime(out float ms, start.Handle, end.Handle), "cuEventElapsedTime");
        return ms;
    }

    public void Dispose() => _handle.Dispose();
}
