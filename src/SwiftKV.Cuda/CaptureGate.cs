// Graph captures and the CUDA calls that would break them. Creating or destroying a cuBLAS handle on one thread while
// another thread captures a graph invalidates that capture (CUDA_ERROR_STREAM_CAPTURE_INVALIDATED), e.g. when a
// second model loads or unloads while the first serves; on an H100 (CUDA 13, ConcurrentCaptureTests) module loads,
// pinned host memory, device allocations, streams and events on another thread did not, and legacy-stream copies
// stopped doing so once backend streams became non-blocking. Captures hold this gate shared and the breaking calls
// hold it exclusively, so each waits for the other; waiting calls go before new captures. A thread may make such
// calls inside its own capture (relaxed capture mode allows it): the gate lets it through.
namespace SwiftKV.Cuda;

internal static class CaptureGate
{
    static readonly object s_sync = new();
    static int s_captures, s_exclusiveWaiting, s_exclusive;
    [ThreadStatic] static int t_captures;

    /// <summary>Called before a stream starts capturing; waits while an exclusive call runs or waits.</summary>
    public static void EnterCapture()
    {
        lock (s_sync)
        {
            while (s_exclusive > 0 || s_exclusiveWaiting > 0) Monitor.Wait(s_sync);
            s_captures++;
        }
        t_captures++;
    }

    /// <summary>Called once a capture has ended or been abandoned.</summary>
    public static void ExitCapture()
    {
        t_captures = Math.Max(0, t_captures - 1);
        lock (s_sync)
        {
            s_captures--;
            Monitor.PulseAll(s_sync);
        }
    }

    /// <summary>
    /// Held around a context-synchronising call: waits until no other thread is capturing. Inside this thread's own
    /// capture it holds nothing.
    /// </summary>
    public static Scope Exclusive()
    {
        if (t_captures > 0) return default;
        lock (s_sync)
        {
            s_exclusiveWaiting++;
            try
            {
                while (s_captures > 0) Monitor.Wait(s_sync);
            }
            finally
            {
                s_exclusiveWaiting--;
            }
            s_exclusive++;
        }
        return new Scope(true);
    }

    public readonly struct Scope(bool held) : IDisposable
    {
        public void Dispose()
        {
            if (!held) return;
            lock (s_sync)
            {
                s_exclusive--;
                Monitor.PulseAll(s_sync);
            }
        }
    }
}
