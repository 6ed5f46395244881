// Graph captures and the CUDA calls that would break them. Creating or destroying a cuBLAS handle on one thread while
// another thread captures a graph invalidates that capture (CUDA_ERROR_STREAM_CAPTURE_INVALIDATED), e.g. when a
// second model loads or unloads while the first serves; on an H100 (CUDA 13, ConcurrentCaptureTests) module loads,
// pinned host memory, device allocations, streams and events on another thread did not, and legacy-stream copies
// stopped doing so once backend streams became non-blocking. Captures hold this gate shared and the breaking calls
// hold it exclusively, so each waits for the other; waiting calls go before new captures. A thread may make such
// calls inside its own capture (relaxed capture mode allows it): the gate lets it through. A capture that is never
// ended (its owner failed without disposing the stream) holds others up for at most MaxWait, not forever.
// Releases (a handle's destroy, which may run on the finalizer thread) never wait: while another thread captures they
// are kept and run once no capture is open, or by the next exclusive call, so finalization is never held up. So a
// disposed cuBLAS handle may outlive its Dispose by a capture's milliseconds, and its destroy (which synchronizes the
// device) then runs on the thread that ended the last capture. Ended by a stream disposed mid-capture (its owner
// failed), the destroy meets that stream still capturing, fails and leaks the handle, as a failed release does.
namespace SwiftKV.Cuda;

internal static class CaptureGate
{
    /// <summary>Longest an exclusive call waits for captures (ours take milliseconds); past it, it goes ahead. Tests shorten it.</summary>
    internal static TimeSpan MaxWait { get; set; } = TimeSpan.FromSeconds(10);

    static readonly object s_sync = new();
    static readonly Dictionary<int, int> s_capturingThreads = [];   // managed thread id -> captures it opened
    static List<Action> s_deferred = [];   // releases asked for while another thread captured
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
        List<Action>? deferred = null;
        lock (s_sync)
        {
            s_captures--;
            if (s_capturingThreads.GetValueOrDefault(thread) <= 1) s_capturingThreads.Remove(thread);
            else s_capturingThreads[thread]--;
            if (s_captures == 0) deferred = TakeDeferred();
            Monitor.PulseAll(s_sync);
        }
        RunDeferred(deferred);
    }

    /// <summary>
    /// Runs <paramref name="release"/> (a destroy that would break other threads' captures) now, holding the gate as an
    /// exclusive call does, when no capture is open or the calling thread is inside its own (as <see cref="Exclusive"/>
    /// lets it through); else keeps it for when the last capture ends. Never waits, so it is safe on the finalizer
    /// thread. Returns the release's result when it ran now, true when kept (the handle is given up either way).
    /// </summary>
    public static bool Release(Func<bool> release)
    {
        lock (s_sync)
        {
            if (s_captures > 0 && !s_capturingThreads.ContainsKey(Environment.CurrentManagedThreadId))
            {
                s_deferred.Add(() => release());
                return true;   // the handle is given up; the destroy runs once the captures end
            }
            s_exclusive++;
        }
        try
        {
            return release();
        }
        finally
        {
            new Scope(true).Dispose();
        }
    }

    /// <summary>Releases kept for later (tests).</summary>
    internal static int DeferredCount
    {
        get { lock (s_sync) return s_deferred.Count; }
    }

    /// <summary>The kept releases, marked as an exclusive call in progress (under the lock; run them with <see cref="RunDeferred"/>).</summary>
    static List<Action>? TakeDeferred()
    {
        if (s_deferred.Count == 0) return null;
        var taken = s_deferred;
        s_deferred = [];
        s_exclusive++;
        return taken;
    }

    /// <summary>Runs kept releases outside the lock (their failures are a destroy's: nothing to report), then ends their exclusive hold.</summary>
    static void RunDeferred(List<Action>? deferred)
    {
        if (deferred is null) return;
        try
        {
            foreach (var release in deferred)
            {
                try { release(); }
                catch (Exception) { }   // a destroy that throws leaks its handle, as a failed ReleaseHandle does
            }
        }
        finally
        {
            new Scope(true).Dispose();
        }
    }

    /// <summary>
    /// Held around a call that would break other threads' captures: waits until none is open (at most
    /// <see cref="MaxWait"/>). A thread inside its own capture passes without waiting.
    /// </summary>
    public static Scope Exclusive()
    {
        List<Action>? deferred;
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
            deferred = TakeDeferred();   // past MaxWait (a capture nobody ends), kept releases go ahead with this call
        }
        RunDeferred(deferred);
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
