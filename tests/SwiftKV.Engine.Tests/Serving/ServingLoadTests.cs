// A bounded load test of the engine on a tiny SwiftKV model (AcrossKV g=2): many concurrent callers, short and long
// prompts (a third behind a shared system prompt, many resubmitted verbatim), streaming and non-streaming reads,
// greedy and seeded sampling, 10% cancelled mid-stream, and a KV pool small enough to force preemption (about
// 50 preemptions per run on the 2-core dev box; not asserted, it depends on timing).
// Checks: no unexpected exception, no hang (hard timeout), every completed output equals its solo run, every
// cancelled stream is a prefix of it, and afterwards no KV block is referenced and nothing is queued or running.
using System.Diagnostics;
using SwiftKV.Engine.Sampling;
using SwiftKV.Engine.Serving;
using Xunit;

namespace SwiftKV.Engine.Tests.Serving;

public class ServingLoadTests
{
    const int Requests = 1000;
    const int Callers = 48;

    [Fact]
    public async Task Submit_1000MixedRequestsFromConcurrentCallers_AllCorrectAndBlocksReturned()
    {
        var ct = TestContext.Current.CancellationToken;
        using var backend = ServingEngineTests.Backend("swiftkv on acrosskv g=2");
        int vocab = backend.Config.VocabSize;
        var system = TestModels.RandomTokens(32, vocab, 1);
        var stops = new HashSet<int> { 5 };
        var rng = new TestRng(2024);
        var jobs = Enumerable.Range(0, 60).Select(i =>
        {
            int length = i % 4 == 0 ? 40 + rng.Next(80) : 1 + rng.Next(12);
            var own = TestModels.RandomTokens(length, vocab, 500 + (ulong)i);
            var prompt = i % 3 == 0 ? system.Concat(own).ToArray() : own;
            var sampling = i % 5 == 0 ? new SamplingParams { Temperature = 0.8f, TopP = 0.9f, Seed = (ulong)i } : SamplingParams.Greedy;
            return (Prompt: prompt, Sampling: sampling, Max: 1 + rng.Next(24));
        }).ToArray();
        var solo = jobs.Select(j => ServingEngineTests.Solo(backend, j.Prompt, j.Sampling, j.Max, stops)).ToArray();
        // Requests picked for cancellation ask for more tokens, so most are still streaming when they are cancelled.
        const int CancelExtra = 24;
        var soloLong = jobs.Select(j => ServingEngineTests.Solo(backend, j.Prompt, j.Sampling, j.Max + CancelExtra, stops)).ToArray();

        using var engine = new ServingEngine(backend, new ServingOptions
        {
            BlockSize = 8, NumKvBlocks = 100, AdmissionReserveBlocks = 0, MaxBatchTokens = 256, MaxRunningSequences = 64,
        });
        int completed = 0, cancelled = 0;
        var clock = Stopwatch.StartNew();

        async Task Caller(int caller)
        {
            for (int i = caller; i < Requests; i += Callers)
            {
                var job = jobs[i % jobs.Length];
                bool cancel = i % 10 == 7;
                var expected = cancel ? soloLong[i % jobs.Length] : solo[i % jobs.Length];
                var r = engine.Submit(job.Prompt, job.Sampling, job.Max + (cancel ? CancelExtra : 0), stops, ct);
                var got = new List<int>();
                if (cancel)
                {
                    int cancelAfter = 1 + i % 3;
                    try
                    {
                        await foreach (int t in r.ReadAllAsync(ct))
                        {
                            got.Add(t);
                            if (got.Count == cancelAfter) r.Cancel();
                        }
                        Interlocked.Increment(ref completed);   // finished before reaching the cancel point
                        Assert.Equal(expected, got);
                    }
                    catch (OperationCanceledException) when (!ct.IsCancellationRequested)
                    {
                        Interlocked.Increment(ref cancelled);
                        Assert.Equal(expected.Take(got.Count), got);
                    }
                    continue;
                }
                if (i % 4 == 1)
                {
                    var outcome = await r.Completion;
                    while (r.Tokens.TryRead(out int t)) got.Add(t);
                    Assert.Equal(got.Count, outcome.OutputTokens);
                }
                else
                {
                    await foreach (int t in r.ReadAllAsync(ct)) got.Add(t);
                }
                Assert.Equal(expected, got);
                Interlocked.Increment(ref completed);
            }
        }

        await Task.WhenAll(Enumerable.Range(0, Callers).Select(c => Task.Run(() => Caller(c), ct))).WaitAsync(TimeSpan.FromSeconds(120), ct);
        clock.Stop();

        Assert.Equal(Requests, completed + cancelled);
        Assert.True(cancelled >= 80, $"only {cancelled} requests were cancelled mid-stream");
        for (int i = 0; i < 200 && engine.Metrics.KvBlocksUsed != 0; i++) await Task.Delay(10, ct);
        var m = engine.Metrics;
        Assert.Equal(0, m.KvBlocksUsed);
        Assert.Equal(0, m.RunningSequences);
        Assert.Equal(0, m.QueueLength);
        Assert.Equal(Requests, m.FinishedRequests + m.CancelledRequests);
        Assert.True(m.PrefixCacheHitRate > 0.2, $"prefix hit rate {m.PrefixCacheHitRate:P1}");
        TestContext.Current.TestOutputHelper?.WriteLine(
            $"{Requests} requests in {clock.Elapsed.TotalSeconds:F1} s: {m.Steps} steps, {m.ComputedTokens} computed tokens, " +
            $"{m.OutputTokens} output tokens, {cancelled} cancelled, {m.Preemptions} preemptions, prefix hit rate {m.PrefixCacheHitRate:P1}, " +
            $"TTFT p50 {m.TimeToFirstTokenP50.TotalMilliseconds:F1} ms p99 {m.TimeToFirstTokenP99.TotalMilliseconds:F1} ms, " +
            $"TPOT p50 {m.TimePerOutputTokenP50.TotalMilliseconds:F2} ms p99 {m.TimePerOutputTokenP99.TotalMilliseconds:F2} ms");
    }
}
