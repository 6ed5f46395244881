// CaptureGate's rules without a GPU (CI runs these): a call that would break captures waits for captures open on
// other threads, passes inside its own thread's capture, waits at most MaxWait for a capture nobody ends, and new
// captures wait for an exclusive call in progress.
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
}
