// Graph captures and the CUDA calls that would break them. Creating or destroying a cuBLAS handle on one thread while
// another thread captures a graph invalidates that capture (CUDA_ERROR_STREAM_CAPTURE_INVALIDATED), e.g. when a
// second model loads or unloads while the first serves; on an H100 (CUDA 13, ConcurrentCaptureTests) module loads,
// pinned host memory, device allocations, streams and events on another thread did not, and legacy-stream copies
// stopped doing so once backend streams became non-blocking. Captures hold this gate shared and the breaking calls
// hold it exclusively, so each waits for the other; waiting calls go before new captures. A thread may make such
// calls inside its own capture (relaxed capture mode allows it): the gate lets it through. A capture that is never
// ended (its owner failed without disposing the stream) holds others up for at most MaxWait, not forever.
namespace SwiftKV.Cuda;

internal static class CaptureGate
{
    /// <summary>Longest an exclusive call waits for captures (ours take milliseconds); past it, it goes ahead. Tests shorten it.</summary>
    internal static TimeSpan MaxWait { get; set; } = TimeSpan.FromSeconds(10);

    static readonly object s_sync = new();
    static readonly Dictionary<int, int> s_capturingThreads = [];   // managed thread id -> captures it opened
    static int s_captures, s_exclusiveWaiting, s_exclusive;

    /// <summary>Called by <paramref name="thread"/> before a stream starts capturing; waits while an exclusive call runs or waits.</summary>
    public static void EnterCapture(int thread)
    {
        lock (s_sync)
        {
            long deadline = Environment.TickCount64 + (long)MaxWait.TotalMilliseconds;
            while ((s_exclusive > 0 || s_exclusiveWaiting > 0) && Wait(deadline)) { }
            s_captures++;
            s_capturingThreads[thread] = s_capturingThreads.GetValueOrDefault(thread) + 1;
        }
    }

    /// <summary>Called once the capture <paramref name="thread"/> opened has ended or been abandoned (on any thread).</summary>
    public static void ExitCapture(int thread)
    {
        lock (s_sync)
        {
            s_captures--;
            if (s_capturingThreads.GetValueOrDefault(thread) <= 1) s_capturingThreads.Remove(thread);
            else s_capturingThreads[thread]--;
            Monitor.PulseAll(s_sync);
        }
    }

    /// <summary>
    /// Held around a call that would break other threads' captures: waits until none is open (at most
    /// <see cref="MaxWait"/>). A thread inside its own capture passes without waiting.
    /// </summary>
    public static Scope Exclusive()
    {
        lock (s_sync)
        {
            if (s_capturingThreads.ContainsKey(Environment.CurrentManagedThreadId)) return default;
            s_exclusiveWaiting++;
            try
            {
                long deadline = Environment.TickCount64 + (long)MaxWait.TotalMilliseconds;
                while (s_captures > 0 && Wait(deadline)) { }
            }
            finally
            {
                s_exclusiveWaiting--;
            }
            s_exclusive++;
        }
        return new Scope(true);
    }

    /// <summary>Waits on the gate until pulsed or the deadline (a monotonic tick count); false once it has passed.</summary>
    static bool Wait(long deadline)
    {
        long left = deadline - Environment.TickCount64;
        return left > 0 && (Monitor.Wait(s_sync, (int)Math.Min(left, int.MaxValue)) || Environment.TickCount64 < deadline);
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
