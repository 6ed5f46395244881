// A CPU throughput measurement, not a correctness test (explicit: run with `-explicit only -class *ServingThroughputBench`).
// A small Llama-shaped model, a prompt-heavy workload (256-token prompts, 32 output tokens): the batching engine
// with SwiftKV off, on (50%), and on with AcrossKV g=2, against one-request-at-a-time Generator runs.
using System.Diagnostics;
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Sampling;
using SwiftKV.Engine.Serving;
using Xunit;

namespace SwiftKV.Engine.Tests.Serving;

public class ServingThroughputBench
{
    const int Requests = 32, Prompt = 256, Output = 32;

    [Fact(Explicit = true)]
    public async Task Throughput_CpuEngineVsSequential()
    {
        var ct = TestContext.Current.CancellationToken;
        var log = TestContext.Current.TestOutputHelper!;
        foreach (var (name, spec, swift) in new[]
        {
            ("SwiftKV off", new ModelSpec(Hidden: 256, Layers: 8, Heads: 8, KvHeads: 2, HeadDim: 32, Intermediate: 688, Vocab: 1000, SwiftKvLayers: 4, GroupSize: 2, MaxPositions: 512), false),
            ("SwiftKV on g=1", new ModelSpec(Hidden: 256, Layers: 8, Heads: 8, KvHeads: 2, HeadDim: 32, Intermediate: 688, Vocab: 1000, SwiftKvLayers: 4, GroupSize: 1, MaxPositions: 512), true),
            ("SwiftKV on g=2", new ModelSpec(Hidden: 256, Layers: 8, Heads: 8, KvHeads: 2, HeadDim: 32, Intermediate: 688, Vocab: 1000, SwiftKvLayers: 4, GroupSize: 2, MaxPositions: 512), true),
        })
        {
            using var backend = new CpuBackend(TestModels.Build(spec, swift));
            var prompts = Enumerable.Range(0, Requests).Select(i => TestModels.RandomTokens(Prompt, 1000, (ulong)i + 1)).ToArray();
            var none = new HashSet<int>();

            ServingEngineTests.Solo(backend, prompts[0], SamplingParams.Greedy, 4, none);   // JIT warm-up
            var seq = Stopwatch.StartNew();
            foreach (var p in prompts.Take(8)) ServingEngineTests.Solo(backend, p, SamplingParams.Greedy, Output, none);
            double seqTps = 8.0 * (Prompt + Output) / seq.Elapsed.TotalSeconds;

            using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 16, MaxBatchTokens = 512, MaxRunningSequences = Requests });
            var clock = Stopwatch.StartNew();
            var reqs = prompts.Select(p => engine.Submit(p, SamplingParams.Greedy, Output, none, ct)).ToArray();
            await Task.WhenAll(reqs.Select(r => r.Completion));
            double engTps = (double)Requests * (Prompt + Output) / clock.Elapsed.TotalSeconds;
            var m = engine.Metrics;
            log.WriteLine($"{name}: engine {engTps:F0} total tok/s ({Requests} requests, TTFT p50 {m.TimeToFirstTokenP50.TotalMilliseconds:F0} ms, " +
                $"TPOT p50 {m.TimePerOutputTokenP50.TotalMilliseconds:F1} ms, KV {m.KvBytesPerBlock / 16} B/token); sequential {seqTps:F0} tok/s");
        }
    }
}
