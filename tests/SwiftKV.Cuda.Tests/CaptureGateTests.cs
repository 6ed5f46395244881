// CaptureGate's rules without a GPU (CI runs these): a call that would break captures waits for captures open on
// other threads, passes inside its own thread's capture, waits at most MaxWait for a capture nobody ends, and new
// captures wait for an exclusive call in progress. Releases (a handle's destroy, perhaps on the finalizer thread) never
// wait: they are kept while another thread captures and run once none does.
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class CaptureGateTests
{
    const int Capturer = -7;   // a thread id no managed thread has: the capture belongs to "another thread"
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Runs <paramref name="work"/> on its own thread; the event is set when it returns.</summary>
    static ManualResetEventSlim OnThread(Action work)
    {
        var done = new ManualResetEventSlim();
        new Thread(() => { work(); done.Set(); }) { IsBackground = true }.Start();
        return done;
    }

    [Fact]
    public void Exclusive_WaitsForAnOpenCaptureOfAnotherThread()
    {
        CaptureGate.EnterCapture(Capturer);
        ManualResetEventSlim exclusive;
        try
        {
            exclusive = OnThread(() => { using (CaptureGate.Exclusive()) { } });
            Assert.False(exclusive.Wait(300, Ct), "the exclusive call ran while a capture was open");
        }
        finally
        {
            CaptureGate.ExitCapture(Capturer);
        }
        Assert.True(exclusive.Wait(5000, Ct), "the exclusive call did not run once the capture ended");
    }

    [Fact]
    public void Exclusive_InsideTheThreadsOwnCapture_Passes()
    {
        int me = Environment.CurrentManagedThreadId;
        CaptureGate.EnterCapture(me);
        CaptureGate.EnterCapture(Capturer);   // another thread's capture too: the own-capture rule still lets it pass
        try
        {
            var start = DateTime.UtcNow;
            using (CaptureGate.Exclusive()) { }
            Assert.True(DateTime.UtcNow - start < CaptureGate.MaxWait / 2);
        }
        finally
        {
            CaptureGate.ExitCapture(Capturer);
            CaptureGate.ExitCapture(me);
        }
    }

    [Fact]
    public void CaptureNeverEnded_HoldsOthersUpOnlyForMaxWait()
    {
        var saved = CaptureGate.MaxWait;
        CaptureGate.MaxWait = TimeSpan.FromMilliseconds(200);
        CaptureGate.EnterCapture(Capturer);
        try
        {
            var exclusive = OnThread(() => { using (CaptureGate.Exclusive()) { } });
            Assert.True(exclusive.Wait(5000, Ct), "the exclusive call waited past MaxWait");
        }
        finally
        {
            CaptureGate.ExitCapture(Capturer);
            CaptureGate.MaxWait = saved;
        }
    }

    [Fact]
    public void NewCaptures_WaitForAnExclusiveCall()
    {
        using var inside = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var exclusive = OnThread(() =>
        {
            using (CaptureGate.Exclusive())
            {
                inside.Set();
                release.Wait();
            }
        });
        Assert.True(inside.Wait(5000, Ct));
        var capture = OnThread(() => { CaptureGate.EnterCapture(Capturer); CaptureGate.ExitCapture(Capturer); });
        Assert.False(capture.Wait(300, Ct), "a capture started during an exclusive call");
        release.Set();
        Assert.True(capture.Wait(5000, Ct));
        Assert.True(exclusive.Wait(5000, Ct));
    }

    [Fact]
    public void Release_WithNoCaptureOpen_RunsAtOnce()
    {
        int ran = 0;
        Assert.True(CaptureGate.Release(() => { ran++; return true; }));
        Assert.Equal(1, ran);
        Assert.False(CaptureGate.Release(() => false), "a destroy's failure is reported when it ran at once");
    }

    [Fact]
    public void Release_DuringAnotherThreadsCapture_DoesNotWait_AndRunsWhenTheCaptureEnds()
    {
        int ran = 0;
        CaptureGate.EnterCapture(Capturer);
        try
        {
            var release = OnThread(() => CaptureGate.Release(() => { Interlocked.Increment(ref ran); return true; }));
            Assert.True(release.Wait(CaptureGate.MaxWait / 4, Ct), "the release waited for the capture");
            Assert.Equal(0, Volatile.Read(ref ran));
            Assert.Equal(1, CaptureGate.DeferredCount);
        }
        finally
        {
            CaptureGate.ExitCapture(Capturer);
        }
        Assert.Equal(1, Volatile.Read(ref ran));
        Assert.Equal(0, CaptureGate.DeferredCount);
    }

    [Fact]
    public void Release_InsideTheThreadsOwnCapture_RunsAtOnce()
    {
        int me = Environment.CurrentManagedThreadId, ran = 0;
        CaptureGate.EnterCapture(me);
        try
        {
            CaptureGate.Release(() => { ran++; return true; });
            Assert.Equal(1, ran);
        }
        finally
        {
            CaptureGate.ExitCapture(me);
        }
    }

    [Fact]
    public void Release_KeptForACaptureNeverEnded_RunsWithTheNextExclusiveCallPastMaxWait()
    {
        var saved = CaptureGate.MaxWait;
        CaptureGate.MaxWait = TimeSpan.FromMilliseconds(200);
        int ran = 0;
        CaptureGate.EnterCapture(Capturer);
        try
        {
            CaptureGate.Release(() => { Interlocked.Increment(ref ran); return true; });
            Assert.Equal(0, Volatile.Read(ref ran));
            var exclusive = OnThread(() => { using (CaptureGate.Exclusive()) { } });
            Assert.True(exclusive.Wait(5000, Ct));
            Assert.Equal(1, Volatile.Read(ref ran));
        }
        finally
        {
            CaptureGate.ExitCapture(Capturer);
            CaptureGate.MaxWait = saved;
        }
    }

    [Fact]
    public void Captures_WaitForKeptReleasesRunning()
    {
        using var inside = new ManualResetEventSlim();
        using var proceed = new ManualResetEventSlim();
        CaptureGate.EnterCapture(Capturer);
        CaptureGate.Release(() => { inside.Set(); proceed.Wait(); return true; });
        var ender = OnThread(() => CaptureGate.ExitCapture(Capturer));   // runs the kept release
        Assert.True(inside.Wait(5000, Ct));
        var capture = OnThread(() => { CaptureGate.EnterCapture(Capturer); CaptureGate.ExitCapture(Capturer); });
        Assert.False(capture.Wait(300, Ct), "a capture started while a kept release ran");
        proceed.Set();
        Assert.True(ender.Wait(5000, Ct));
        Assert.True(capture.Wait(5000, Ct));
    }

    [Fact]
    public void Release_RunningAtOnce_HoldsNewCapturesOff()
    {
        using var inside = new ManualResetEventSlim();
        using var proceed = new ManualResetEventSlim();
        var release = OnThread(() => CaptureGate.Release(() => { inside.Set(); proceed.Wait(); return true; }));
        Assert.True(inside.Wait(5000, Ct));
        var capture = OnThread(() => { CaptureGate.EnterCapture(Capturer); CaptureGate.ExitCapture(Capturer); });
        Assert.False(capture.Wait(300, Ct), "a capture started while a release ran");
        proceed.Set();
        Assert.True(release.Wait(5000, Ct));
        Assert.True(capture.Wait(5000, Ct));
    }

    [Fact]
    public void Release_KeptWhileTwoCapturesAreOpen_RunsOnlyWhenTheLastEnds()
    {
        const int Other = -8;
        int ran = 0;
        CaptureGate.EnterCapture(Capturer);
        CaptureGate.EnterCapture(Other);
        try
        {
            CaptureGate.Release(() => { Interlocked.Increment(ref ran); return true; });
            CaptureGate.ExitCapture(Capturer);
            Assert.Equal(0, Volatile.Read(ref ran));
        }
        finally
        {
            CaptureGate.ExitCapture(Other);
        }
        Assert.Equal(1, Volatile.Read(ref ran));
    }
}
