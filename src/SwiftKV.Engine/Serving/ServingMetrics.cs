// A point-in-time view of an engine, plus the rolling latency window it is computed from.
namespace SwiftKV.Engine.Serving;

/// <summary>Engine metrics at one moment. Latencies cover the most recent finished requests (a rolling window).</summary>
public sealed record ServingMetrics
{
    public int QueueLength { get; init; }
    public int RunningSequences { get; init; }
    public int KvBlocksTotal { get; init; }
    /// <summary>Blocks referenced by a queued-for-compute or running sequence.</summary>
    public int KvBlocksUsed { get; init; }
    /// <summary>Blocks allocatable now (including cached, unreferenced ones).</summary>
    public int KvBlocksFree { get; init; }
    /// <summary>Free blocks still holding a reusable prefix.</summary>
    public int KvBlocksCached { get; init; }
    public long KvBytesPerBlock { get; init; }
    public long PrefixCacheQueriedTokens { get; init; }
    public long PrefixCacheHitTokens { get; init; }
    /// <summary>Hit tokens over queried tokens (0 when nothing was queried).</summary>
    public double PrefixCacheHitRate => PrefixCacheQueriedTokens == 0 ? 0 : (double)PrefixCacheHitTokens / PrefixCacheQueriedTokens;
    public long PrefixCacheEvictions { get; init; }
    public long Preemptions { get; init; }
    public long Steps { get; init; }
    public long ComputedTokens { get; init; }
    public long OutputTokens { get; init; }
    public long FinishedRequests { get; init; }
    public long CancelledRequests { get; init; }
    public TimeSpan TimeToFirstTokenP50 { get; init; }
    public TimeSpan TimeToFirstTokenP99 { get; init; }
    public TimeSpan TimePerOutputTokenP50 { get; init; }
    public TimeSpan TimePerOutputTokenP99 { get; init; }
}

/// <summary>The last N samples of a latency, for percentiles.</summary>
internal sealed class LatencyWindow(int capacity)
{
    readonly double[] _samples = new double[capacity];
    int _count, _next;

    public void Add(TimeSpan t)
    {
        _samples[_next] = t.TotalMilliseconds;
        _next = (_next + 1) % _samples.Length;
        _count = Math.Min(_count + 1, _samples.Length);
    }

    public TimeSpan Percentile(double p)
    {
        if (_count == 0) return TimeSpan.Zero;
        var sorted = _samples.AsSpan(0, _count).ToArray();
        Array.Sort(sorted);
        int i = (int)Math.Ceiling(p * _count) - 1;
        return TimeSpan.FromMilliseconds(sorted[Math.Clamp(i, 0, _count - 1)]);
    }
}

/// <summary>
/// One engine step as the loop saw it: its shape and where its wall time went on the host. Schedule = planning
/// (Scheduler.Schedule), Forward = the backend call (host encoding + GPU work + result copy, synchronous), Post =
/// sampling, streaming and bookkeeping of the results. HostRows = logits rows copied to the host to be picked there
/// (every row on a backend that cannot pick; none on one that can).
/// </summary>
public readonly record struct ServingStepTrace(int Sequences, int Tokens, int DecodeTokens, int LogitsRows, int HostRows,
    double ScheduleMs, double ForwardMs, double PostMs);
