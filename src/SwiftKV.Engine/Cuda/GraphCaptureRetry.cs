// When a CUDA graph capture fails, the step has already run kernel by kernel, so the request is unharmed; what is lost is
// the replay speed of later steps. A one-off failure (another thread's cuBLAS set-up past CaptureGate's wait, say) must
// not cost a long-lived backend its graphs for good, and one that keeps failing must not be retried every step.
namespace SwiftKV.Engine.Cuda;

/// <summary>Graph captures after a failure: off for the next <see cref="RetryAfter"/> steps, then tried again.</summary>
internal sealed class GraphCaptureRetry
{
    int _wait;

    /// <summary>Steps launched directly after a failed capture before the next attempt (tests shorten it).</summary>
    public int RetryAfter { get; set; } = 1000;

    /// <summary>Why captures are off now (the last failure), or null.</summary>
    public string? Failure { get; private set; }

    /// <summary>Captures that failed so far.</summary>
    public long Failures { get; private set; }

    /// <summary>Whether this step may replay or capture a graph; counts the steps waited after a failure.</summary>
    public bool Allowed() => Failure is null || --_wait <= 0;

    public void Failed(string why)
    {
        Failure = why;
        Failures++;
        _wait = RetryAfter;
    }

    public void Succeeded() => Failure = null;
}
