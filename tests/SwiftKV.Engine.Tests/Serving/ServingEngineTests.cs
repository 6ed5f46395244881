// ServingEngine end to end on tiny CPU models. The reference for every output is the single-sequence path
// (Generator over CpuBackend.Forward with a contiguous cache), which is independent of paging, batching,
// chunking, prefix sharing and preemption; greedy and seeded outputs must match it token for token.
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Generation;
using SwiftKV.Engine.Sampling;
using SwiftKV.Engine.Serving;
using Xunit;

namespace SwiftKV.Engine.Tests.Serving;

public class ServingEngineTests
{
    internal static readonly Dictionary<string, (ModelSpec Spec, bool SwiftKv)> Models = new()
    {
        ["swiftkv on acrosskv g=2"] = (new ModelSpec(SwiftKvLayers: 2, GroupSize: 2, Seed: 21, RopeScaling: true), true),
        ["swiftkv off (same checkpoint)"] = (new ModelSpec(SwiftKvLayers: 2, GroupSize: 2, Seed: 21, RopeScaling: true), false),
        ["llama"] = (new ModelSpec(Seed: 22, Bias: true), false),
    };

    public static TheoryData<string> ModelNames => new(Models.Keys);

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    internal static CpuBackend Backend(string name) => new(TestModels.Build(Models[name].Spec, Models[name].SwiftKv));

    internal static List<int> Solo(IModelBackend backend, int[] prompt, SamplingParams sampling, int maxTokens, IReadOnlySet<int> stops,
        ILogitsConstraint? constraint = null)
    {
        using var cache = backend.CreateCache(prompt.Length + maxTokens + 1);
        return Generator.Generate(backend, cache, prompt, sampling, maxTokens, stops, new GenerationStats(), constraint: constraint).ToList();
    }

    /// <summary>Allows only even token ids: a stateless constraint (its mask goes with the row's pick).</summary>
    internal sealed class EvenTokensOnly : ILogitsConstraint
    {
        public void Apply(Span<float> logits) { for (int i = 1; i < logits.Length; i += 2) logits[i] = float.NegativeInfinity; }
        public void Accept(int tokenId) => Assert.Equal(0, tokenId % 2);
    }

    internal static async Task<List<int>> Collect(ServingRequest r)
    {
        var list = new List<int>();
        await foreach (int t in r.ReadAllAsync(Ct)) list.Add(t);
        return list;
    }

    static async Task Eventually(Func<bool> condition)
    {
        for (int i = 0; i < 500 && !condition(); i++) await Task.Delay(10, Ct);
        Assert.True(condition());
    }

    [Theory]
    [MemberData(nameof(ModelNames))]
    public async Task Submit_64OthersInFlight_GreedyOutputEqualsSolo(string name)
    {
        using var backend = Backend(name);
        int vocab = backend.Config.VocabSize;
        var shared = TestModels.RandomTokens(12, vocab, 5);   // a common "system prompt" for a third of them
        var stops = new HashSet<int> { 3 };
        var rng = new TestRng(9);
        var jobs = Enumerable.Range(0, 65).Select(i =>
        {
            var own = TestModels.RandomTokens(1 + rng.Next(30), vocab, 1000 + (ulong)i);
            var prompt = i % 3 == 0 ? shared.Concat(own).ToArray() : own;
            return (Prompt: prompt, Max: 1 + rng.Next(14));
        }).ToArray();

        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, MaxBatchTokens = 48, MaxRunningSequences = 65, NumKvBlocks = 1200 });
        var requests = jobs.Select(j => engine.Submit(j.Prompt, SamplingParams.Greedy, j.Max, stops, ct: Ct)).ToArray();
        var outputs = await Task.WhenAll(requests.Select(Collect)).WaitAsync(TimeSpan.FromSeconds(60), Ct);

        for (int i = 0; i < jobs.Length; i++)
            Assert.Equal(Solo(backend, jobs[i].Prompt, SamplingParams.Greedy, jobs[i].Max, stops), outputs[i]);
        await Eventually(() => engine.Metrics.KvBlocksUsed == 0);
        var m = engine.Metrics;
        Assert.Equal(65, m.FinishedRequests);
        Assert.True(m.ComputedTokens > 3 * m.Steps, $"expected batched steps, got {m.ComputedTokens} tokens in {m.Steps} steps");
        Assert.True(m.PrefixCacheHitTokens > 0, "the shared 12-token prefix should hit after its first computation");
    }

    /// <summary>A pool whose byte size would wrap a long is refused, not allocated tiny and then overrun by the kernels.</summary>
    [Fact]
    public void Pool_TooLargeToAddress_IsRefused()
    {
        using var backend = Backend("swiftkv on acrosskv g=2");
        var e = Assert.Throws<ArgumentException>(() => new ServingEngine(backend, new ServingOptions { BlockSize = 1 << 24, NumKvBlocks = 1 << 30, MaxBatchTokens = 16 }));
        Assert.Contains("too large to address", e.Message);
    }

    [Fact]
    public async Task Submit_PoolTooSmall_PreemptsAndRecomputes_OutputsUnchanged()
    {
        using var backend = Backend("swiftkv on acrosskv g=2");
        int vocab = backend.Config.VocabSize;
        var sampled = new SamplingParams { Temperature = 0.9f, TopK = 20, Seed = 77 };
        var jobs = Enumerable.Range(0, 8).Select(i => (Prompt: TestModels.RandomTokens(5 + i, vocab, 300 + (ulong)i),
            Sampling: i % 2 == 0 ? SamplingParams.Greedy : sampled with { Seed = (ulong)i }, Max: 14)).ToArray();

        // 16 blocks of 2 positions; each request grows to ~12 blocks: they cannot all fit, so decodes preempt.
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 2, NumKvBlocks = 16, AdmissionReserveBlocks = 0, MaxBatchTokens = 16 });
        var requests = jobs.Select(j => engine.Submit(j.Prompt, j.Sampling, j.Max, ct: Ct)).ToArray();
        var outputs = await Task.WhenAll(requests.Select(Collect)).WaitAsync(TimeSpan.FromSeconds(60), Ct);

        for (int i = 0; i < jobs.Length; i++)
            Assert.Equal(Solo(backend, jobs[i].Prompt, jobs[i].Sampling, jobs[i].Max, new HashSet<int>()), outputs[i]);
        var outcomes = await Task.WhenAll(requests.Select(r => r.Completion));
        Assert.True(engine.Metrics.Preemptions > 0, "the pool was sized to force preemption");
        Assert.Equal(engine.Metrics.Preemptions, outcomes.Sum(o => o.Preemptions));
        await Eventually(() => engine.Metrics.KvBlocksUsed == 0);
    }

    [Fact]
    public async Task Submit_ReserveOutputBlocks_NeverPreempts_OutputsUnchanged_StepsTraced()
    {
        // The preemption test's workload and pool, admission reserving each request's whole length instead.
        using var backend = Backend("swiftkv on acrosskv g=2");
        int vocab = backend.Config.VocabSize;
        var sampled = new SamplingParams { Temperature = 0.9f, TopK = 20, Seed = 77 };
        var jobs = Enumerable.Range(0, 8).Select(i => (Prompt: TestModels.RandomTokens(5 + i, vocab, 300 + (ulong)i),
            Sampling: i % 2 == 0 ? SamplingParams.Greedy : sampled with { Seed = (ulong)i }, Max: 14)).ToArray();
        var traces = new System.Collections.Concurrent.ConcurrentQueue<ServingStepTrace>();
        using var engine = new ServingEngine(backend, new ServingOptions
        {
            BlockSize = 2, NumKvBlocks = 16, MaxBatchTokens = 16, ReserveOutputBlocks = true, StepObserver = traces.Enqueue,
        });
        var requests = jobs.Select(j => engine.Submit(j.Prompt, j.Sampling, j.Max, ct: Ct)).ToArray();
        var outputs = await Task.WhenAll(requests.Select(Collect)).WaitAsync(TimeSpan.FromSeconds(60), Ct);

        for (int i = 0; i < jobs.Length; i++)
            Assert.Equal(Solo(backend, jobs[i].Prompt, jobs[i].Sampling, jobs[i].Max, new HashSet<int>()), outputs[i]);
        Assert.Equal(0, engine.Metrics.Preemptions);
        await Eventually(() => engine.Metrics.KvBlocksUsed == 0);
        await Eventually(() => traces.Count == engine.Metrics.Steps);   // the observer runs at the end of each step
        Assert.Equal(engine.Metrics.ComputedTokens, traces.Sum(t => (long)t.Tokens));
        Assert.All(traces, t => Assert.True(t.Tokens <= 16 && t.DecodeTokens <= t.LogitsRows && t.ForwardMs >= 0));
    }

    [Fact]
    public async Task Cancel_MidStream_FreesBlocksAndLeavesOthersUntouched()
    {
        using var backend = Backend("swiftkv on acrosskv g=2");
        int vocab = backend.Config.VocabSize;
        var victimPrompt = TestModels.RandomTokens(40, vocab, 1);
        var otherPrompt = TestModels.RandomTokens(9, vocab, 2);
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 200 });

        var victim = engine.Submit(victimPrompt, SamplingParams.Greedy, 200, ct: Ct);
        var other = engine.Submit(otherPrompt, SamplingParams.Greedy, 60, ct: Ct);
        var otherTask = Collect(other);
        int seen = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (int _ in victim.ReadAllAsync(Ct))
                if (++seen == 3) victim.Cancel();
        });
        Assert.Equal(3, seen);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => victim.Completion);

        Assert.Equal(Solo(backend, otherPrompt, SamplingParams.Greedy, 60, new HashSet<int>()), await otherTask.WaitAsync(TimeSpan.FromSeconds(30), Ct));
        await Eventually(() => engine.Metrics.KvBlocksUsed == 0);
        Assert.Equal(1, engine.Metrics.CancelledRequests);
    }

    /// <summary>Masks every token after <c>after</c> accepted ones: the row has nothing left to sample.</summary>
    sealed class MaskAllAfter(int after) : ILogitsConstraint
    {
        int _accepted;
        public void Apply(Span<float> logits) { if (_accepted >= after) logits.Fill(float.NegativeInfinity); }
        public void Accept(int tokenId) => _accepted++;
    }

    /// <summary>
    /// A request whose logits row leaves nothing to sample (here its constraint masks every token at its third token)
    /// fails alone with an error that says so; the request beside it finishes as if alone and the blocks come back.
    /// </summary>
    [Fact]
    public async Task Submit_NothingLeftToSample_FailsThatRequestOnly()
    {
        using var backend = Backend("llama");
        int vocab = backend.Config.VocabSize;
        var victimPrompt = TestModels.RandomTokens(20, vocab, 3);
        var otherPrompt = TestModels.RandomTokens(9, vocab, 4);
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 200 });
        var victim = engine.Submit(victimPrompt, SamplingParams.Greedy, 30, ct: Ct, constraint: new MaskAllAfter(2));
        var other = engine.Submit(otherPrompt, SamplingParams.Greedy, 30, ct: Ct);
        var otherTask = Collect(other);
        var e = await Assert.ThrowsAsync<NoFiniteLogitsException>(() => Collect(victim).WaitAsync(TimeSpan.FromSeconds(30), Ct));
        Assert.Contains("at token 3", e.Message);
        Assert.Contains("NaN or -inf", e.Message);
        Assert.Equal(Solo(backend, otherPrompt, SamplingParams.Greedy, 30, new HashSet<int>()), await otherTask.WaitAsync(TimeSpan.FromSeconds(30), Ct));
        await Eventually(() => engine.Metrics.KvBlocksUsed == 0);
    }

    /// <summary>
    /// A CPU KV pool larger than this process may use is refused up front, naming the option to lower (Linux would
    /// otherwise grant the allocation and kill the process when the pages are touched).
    /// </summary>
    [Fact]
    public void CpuPool_LargerThanMemory_IsRefusedNamingKvCacheBytes()
    {
        using var backend = Backend("llama");
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => backend.CreatePagedKvCache(int.MaxValue, 16));
        Assert.Contains("lower KvCacheBytes", e.Message);
        using var pool = backend.CreatePagedKvCache(64, 16);   // a small one still works
    }

    [Fact]
    public async Task Cancel_ByTokenOrWalkingAway_FreesBlocks()
    {
        using var backend = Backend("llama");
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 200 });
        using var cts = new CancellationTokenSource();
        var a = engine.Submit(TestModels.RandomTokens(20, 97, 3), SamplingParams.Greedy, 150, ct: cts.Token);
        var b = engine.Submit(TestModels.RandomTokens(20, 97, 4), SamplingParams.Greedy, 150, ct: Ct);
        await a.Tokens.ReadAsync(Ct);
        cts.Cancel();
        await foreach (int _ in b.ReadAllAsync(Ct)) break;   // leaving the stream cancels the request
        // The caller's token is the one the exceptions carry, so `catch ... when (e.CancellationToken == token)` works.
        Assert.Equal(cts.Token, (await Assert.ThrowsAnyAsync<OperationCanceledException>(() => a.Completion)).CancellationToken);
        Assert.Equal(cts.Token, (await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => { await foreach (int _ in a.ReadAllAsync(Ct)) { } })).CancellationToken);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => b.Completion);
        Assert.Equal(0, engine.Metrics.KvBlocksUsed);
        Assert.Equal(0, engine.Metrics.RunningSequences);
    }

    [Fact]
    public async Task Submit_ChatHistoryResent_HitsPrefixCacheForFullBlocks()
    {
        using var backend = Backend("swiftkv on acrosskv g=2");
        int vocab = backend.Config.VocabSize;
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 8, NumKvBlocks = 100 });
        var turn1 = TestModels.RandomTokens(37, vocab, 8);
        var first = engine.Submit(turn1, SamplingParams.Greedy, 6, ct: Ct);
        var answer = await Collect(first);
        Assert.Equal(6, answer.Count);
        Assert.Equal(0, (await first.Completion).CachedPromptTokens);

        // The caller resends the whole history plus a new turn. K/V exist for 37 + 6 - 1 = 42 tokens (the last
        // sampled token was never fed back), so full blocks 0..4 (40 tokens) are reused.
        var turn2 = turn1.Concat(answer).Concat(TestModels.RandomTokens(5, vocab, 9)).ToArray();
        var second = engine.Submit(turn2, SamplingParams.Greedy, 6, ct: Ct);
        var answer2 = await Collect(second);
        var outcome = await second.Completion;
        Assert.Equal(40, outcome.CachedPromptTokens);
        Assert.Equal(48, outcome.PromptTokens);
        Assert.Equal(Solo(backend, turn2, SamplingParams.Greedy, 6, new HashSet<int>()), answer2);
        var m = engine.Metrics;
        Assert.Equal(40, m.PrefixCacheHitTokens);
        Assert.Equal(37 + 48, m.PrefixCacheQueriedTokens);
        Assert.Equal(40.0 / 85, m.PrefixCacheHitRate, 9);
    }

    [Fact]
    public async Task Metrics_ReportQueueBlocksAndLatencies()
    {
        using var backend = Backend("llama");
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 64, MaxRunningSequences = 2 });
        var reqs = Enumerable.Range(0, 5).Select(i => engine.Submit(TestModels.RandomTokens(6, 97, (ulong)i), SamplingParams.Greedy, 8, ct: Ct)).ToArray();
        await Task.WhenAll(reqs.Select(Collect));
        await Task.WhenAll(reqs.Select(r => r.Completion));
        var m = engine.Metrics;
        Assert.Equal(5, m.FinishedRequests);
        Assert.Equal(0, m.QueueLength);
        Assert.Equal(64, m.KvBlocksTotal);
        Assert.Equal(64, m.KvBlocksFree);
        Assert.Equal(40, m.OutputTokens);
        Assert.True(m.TimeToFirstTokenP50 > TimeSpan.Zero && m.TimeToFirstTokenP99 >= m.TimeToFirstTokenP50);
        Assert.True(m.TimePerOutputTokenP50 > TimeSpan.Zero);
        Assert.Equal(backend.KvBytesPerToken * 4, m.KvBytesPerBlock);
    }

    [Fact]
    public void Submit_BadArguments_NameTheProblem()
    {
        using var backend = Backend("llama");
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 10, AdmissionReserveBlocks = 1 });
        Assert.Equal(36, engine.MaxSequenceLength);
        Assert.Contains("empty", Assert.Throws<ArgumentException>(() => engine.Submit([], SamplingParams.Greedy, 4, ct: Ct)).Message);
        Assert.Contains("token id 97", Assert.Throws<ArgumentException>(() => engine.Submit([1, 97], SamplingParams.Greedy, 4, ct: Ct)).Message);
        Assert.Contains("sequence limit of 36", Assert.Throws<ArgumentException>(() => engine.Submit(new int[30], SamplingParams.Greedy, 7, ct: Ct)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => engine.Submit([1], SamplingParams.Greedy, 0, ct: Ct));
        Assert.Throws<ArgumentOutOfRangeException>(() => new ServingEngine(backend, new ServingOptions { BlockSize = 0 }));
        Assert.Contains("MaxBatchTokens", Assert.Throws<ArgumentOutOfRangeException>(() => new ServingEngine(backend, new ServingOptions { MaxBatchTokens = 0 })).Message);
    }

    /// <summary>
    /// A model whose context reaches int.MaxValue (no options to cap the sequence) still gets a pool sized by its budget:
    /// the blocks per sequence were counted in int, wrapped negative, and the error blamed the KV budget.
    /// </summary>
    [Fact]
    public void Engine_OverTheLongestContext_SizesItsPoolByTheBudget()
    {
        using var backend = new CpuBackend(TestModels.Build(new ModelSpec(MaxPositions: int.MaxValue), swiftKvEnabled: false));
        long budget = 64L << 20;
        using var engine = new ServingEngine(backend, new ServingOptions { KvCacheBytes = budget });
        var m = engine.Metrics;
        Assert.Equal(budget / m.KvBytesPerBlock, m.KvBlocksTotal);
        Assert.InRange(engine.MaxSequenceLength, 1, m.KvBlocksTotal * (m.KvBytesPerBlock / backend.KvBytesPerToken));
    }

    /// <summary>
    /// Options that leave the step shape open take the backend's preference (the CPU's: 16-position blocks, 512 tokens
    /// per step); set ones win. The scheduler really honours the resolved budget: no step computes more tokens.
    /// </summary>
    [Fact]
    public async Task StepShape_DefaultsComeFromTheBackend_SetOptionsWin()
    {
        using var backend = Backend("llama");
        var prompt = TestModels.RandomTokens(40, backend.Config.VocabSize, 77);
        var expected = Solo(backend, prompt, SamplingParams.Greedy, 4, new HashSet<int>());
        using (var engine = new ServingEngine(backend, new ServingOptions { NumKvBlocks = 8 }))
        {
            Assert.Equal((16, 512, 64), (engine.BlockSize, engine.MaxBatchTokens, engine.MaxRunningSequences));
            Assert.Equal((16, 512), (((IBatchedBackend)backend).PreferredBlockSize(KvCacheDtype.Bf16), ((IBatchedBackend)backend).PreferredMaxBatchTokens));
            Assert.Null(engine.Options.BlockSize);
            // 8 blocks of 16 positions, one held back for admission.
            Assert.Equal(Math.Min(backend.Config.MaxPositionEmbeddings, 7 * 16), engine.MaxSequenceLength);
            Assert.Equal(expected, await Collect(engine.Submit(prompt, SamplingParams.Greedy, 4, ct: Ct)));
        }
        using (var engine = new ServingEngine(backend, new ServingOptions()))
        {
            // The CPU's KV budget is 1 GiB, capped at the fewest blocks that hold MaxRunningSequences full-length
            // sequences beside the admission reserve (1% of the pool, at least one block).
            long block = 16 * ((IBatchedBackend)backend).KvBytesPerToken;
            long need = (backend.Config.MaxPositionEmbeddings + 15) / 16 * (long)engine.MaxRunningSequences;
            static long Reserve(long blocks) => Math.Max(1, blocks / 100);
            long blocks = engine.KvCacheBytes / block;
            Assert.Equal(blocks * block, engine.KvCacheBytes);
            Assert.True(blocks - Reserve(blocks) >= need && blocks - 1 - Reserve(blocks - 1) < need, $"{blocks} blocks for {need} needed");
            Assert.True(blocks * block <= 1L << 30);
        }
        var steps = new System.Collections.Concurrent.ConcurrentQueue<ServingStepTrace>();
        using (var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, MaxBatchTokens = 12, NumKvBlocks = 40, StepObserver = steps.Enqueue }))
        {
            Assert.Equal((4, 12), (engine.BlockSize, engine.MaxBatchTokens));
            Assert.Equal(expected, await Collect(engine.Submit(prompt, SamplingParams.Greedy, 4, ct: Ct)));
        }
        Assert.True(steps.Count >= 4, $"a 40-token prompt in steps of <= 12 tokens takes at least 4 steps; saw {steps.Count}");
        Assert.All(steps, s => Assert.InRange(s.Tokens, 1, 12));
    }

    /// <summary>
    /// Submit racing Dispose: every request Submit returns must complete (succeed or fail as disposed), never hang. A
    /// request enqueued after the loop's last drain used to stay open forever (56 of 500 rounds in the review).
    /// </summary>
    [Fact]
    public async Task SubmitRacingDispose_EveryRequestCompletes()
    {
        using var backend = Backend("llama");
        for (int round = 0; round < 300; round++)
        {
            var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 64 });
            var returned = new System.Collections.Concurrent.ConcurrentBag<ServingRequest>();
            using var go = new ManualResetEventSlim();
            var submitter = new Thread(() =>
            {
                go.Wait();
                while (true)
                {
                    try { returned.Add(engine.Submit([1, 2, 3], SamplingParams.Greedy, 2)); }
                    catch (ObjectDisposedException) { return; }
                }
            });
            submitter.Start();
            go.Set();
            Thread.Sleep(1 + round % 3);
            engine.Dispose();
            submitter.Join();
            foreach (var r in returned)
                Assert.True(await Task.WhenAny(r.Completion, Task.Delay(2000, Ct)) == r.Completion, $"round {round}: a submitted request never completed");
        }
    }

    [Fact]
    public async Task Dispose_WithRequestsInFlight_StopsAndFailsThem()
    {
        using var backend = Backend("llama");
        var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 200 });
        var r = engine.Submit(TestModels.RandomTokens(10, 97, 1), SamplingParams.Greedy, 200, ct: Ct);
        await r.Tokens.ReadAsync(Ct);
        engine.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => r.Completion.WaitAsync(TimeSpan.FromSeconds(10), Ct));
        Assert.Throws<ObjectDisposedException>(() => engine.Submit([1], SamplingParams.Greedy, 1, ct: Ct));
        engine.Dispose();
    }

    /// <summary>
    /// A pool sized by memory is capped at what MaxRunningSequences whole sequences need beside the admission reserve:
    /// with one running sequence and memory to spare, that sequence reaches the model's full context (it was 240 of 256
    /// positions, the reserve taken out of the cap, and the chat client's error then advised raising KvCacheBytes).
    /// </summary>
    [Theory]
    [InlineData(1, false)]
    [InlineData(3, false)]
    [InlineData(1, true)]
    public void PoolFromMemory_CoversWholeSequencesBesideTheReserve(int running, bool reserveOutputs)
    {
        using var backend = Backend("llama");   // max_position_embeddings 256
        using var engine = new ServingEngine(backend, new ServingOptions
        {
            BlockSize = 16, MaxRunningSequences = running, KvCacheBytes = 1L << 30, ReserveOutputBlocks = reserveOutputs,
        });
        Assert.Equal(256, engine.MaxSequenceLength);
        var m = engine.Metrics;
        int reserve = reserveOutputs ? 0 : Math.Max(1, m.KvBlocksTotal / 100);
        Assert.True(m.KvBlocksTotal - reserve >= running * 256 / 16, $"{m.KvBlocksTotal} blocks, reserve {reserve}");
        Assert.True(m.KvBlocksTotal <= running * 256 / 16 + reserve + 1, $"{m.KvBlocksTotal} blocks: the cap grew past the need");
    }

    /// <summary>
    /// Preemption readmits a sequence (prompt and generated tokens) through the prefix cache: those lookups are recompute,
    /// not prompts, so the metrics count each prompt once, at first admission (they counted 138 queried tokens for 45).
    /// </summary>
    [Fact]
    public async Task Preemption_DoesNotInflatePrefixCacheCounts()
    {
        using var backend = Backend("llama");
        int vocab = backend.Config.VocabSize;
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 2, NumKvBlocks = 16, AdmissionReserveBlocks = 0, MaxBatchTokens = 16 });
        var prompts = Enumerable.Range(0, 6).Select(i => TestModels.RandomTokens(5 + i, vocab, 300 + (ulong)i)).ToArray();
        var requests = prompts.Select(p => engine.Submit(p, SamplingParams.Greedy, 14, ct: Ct)).ToArray();
        var outputs = await Task.WhenAll(requests.Select(Collect));
        var m = engine.Metrics;
        Assert.True(m.Preemptions > 0, "the pool was meant to force preemption");
        Assert.Equal(prompts.Sum(p => p.Length), m.PrefixCacheQueriedTokens);
        long cached = 0;
        foreach (var r in requests) cached += (await r.Completion).CachedPromptTokens;
        Assert.Equal(cached, m.PrefixCacheHitTokens);
        for (int i = 0; i < prompts.Length; i++)
            Assert.Equal(Solo(backend, prompts[i], SamplingParams.Greedy, 14, new HashSet<int>()), outputs[i]);
    }

    [Fact]
    public async Task PrefixCachingOff_CountsNoLookups()
    {
        using var backend = Backend("llama");
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 40, EnablePrefixCaching = false });
        var r = engine.Submit(TestModels.RandomTokens(9, backend.Config.VocabSize, 4), SamplingParams.Greedy, 3, ct: Ct);
        await r.Completion;
        Assert.Equal(0, engine.Metrics.PrefixCacheQueriedTokens);
    }

    /// <summary>
    /// A Cancel or Stop after the request finished (a cleanup finally, a linked timeout firing late) changes nothing: its
    /// stream still delivers every token and it does not read as cancelled.
    /// </summary>
    [Fact]
    public async Task CancelOrStopAfterSuccess_LeavesTheAnswerWhole()
    {
        using var backend = Backend("llama");
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 40 });
        var prompt = TestModels.RandomTokens(5, backend.Config.VocabSize, 6);
        foreach (var late in new Action<ServingRequest>[] { r => r.Cancel(), r => r.Stop() })
        {
            var r = engine.Submit(prompt, SamplingParams.Greedy, 5, ct: Ct);
            var outcome = await r.Completion;
            late(r);
            Assert.False(r.IsCancellationRequested);
            Assert.False(r.IsStoppedByCaller);
            Assert.Equal(5, outcome.OutputTokens);
            Assert.Equal(Solo(backend, prompt, SamplingParams.Greedy, 5, new HashSet<int>()), await Collect(r));
        }
        Assert.Equal(0, engine.Metrics.CancelledRequests);
    }

    /// <summary>
    /// Dispose called on the engine's own loop thread (here from a step observer) used to join that thread and hang
    /// forever; now the loop stops after the step, fails what is in flight and releases the pool itself.
    /// </summary>
    [Fact]
    public async Task Dispose_FromTheLoopThread_StopsAndFailsInFlight()
    {
        using var cpu = Backend("llama");
        var backend = new ReleaseCounting(cpu);
        ServingEngine? engine = null;
        engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 40, StepObserver = _ => engine!.Dispose() });
        var r = engine.Submit([1, 2, 3], SamplingParams.Greedy, 5, ct: Ct);
        var finished = await Task.WhenAny(r.Completion, Task.Delay(10_000, Ct));
        Assert.Same(r.Completion, finished);
        await Assert.ThrowsAsync<ObjectDisposedException>(() => r.Completion);
        Assert.Throws<ObjectDisposedException>(() => engine.Submit([1], SamplingParams.Greedy, 1, ct: Ct));
        // The loop released the step workspace and the pool on its way out, once.
        await Eventually(() => Volatile.Read(ref backend.Released) == 1);
        Assert.Equal(1, Volatile.Read(ref backend.PoolsDisposed));
        engine.Dispose();   // a second Dispose, from this thread, returns and releases nothing again
        Assert.Equal(1, Volatile.Read(ref backend.Released));
    }

    /// <summary>A CPU backend passed through that counts released step workspaces and disposed KV pools.</summary>
    sealed class ReleaseCounting(CpuBackend inner) : IModelBackend, IBatchedBackend
    {
        public int Released, PoolsDisposed;
        public string Name => inner.Name;
        public SwiftKV.Model.LlamaConfig Config => inner.Config;
        public bool SwiftKvEnabled => inner.SwiftKvEnabled;
        public ISequenceCache CreateCache(int capacity) => inner.CreateCache(capacity);
        public float[] Forward(ISequenceCache cache, ReadOnlySpan<int> tokens, LogitsSelection selection) => inner.Forward(cache, tokens, selection);
        public long KvBytesPerToken => inner.KvBytesPerToken;
        public int MaxSequencesPerStep => int.MaxValue;
        public IPagedKvCache CreatePagedKvCache(int numBlocks, int blockSize) => new Pool(inner.CreatePagedKvCache(numBlocks, blockSize), this);
        public float[] ForwardBatch(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch) => inner.ForwardBatch(((Pool)kv).Inner, batch);
        public void ReleaseStepWorkspace(int maxBatchTokens, int maxSequences) => Interlocked.Increment(ref Released);
        public void Dispose() { }

        sealed class Pool(IPagedKvCache inner, ReleaseCounting owner) : IPagedKvCache
        {
            public IPagedKvCache Inner => inner;
            public int NumBlocks => inner.NumBlocks;
            public int BlockSize => inner.BlockSize;
            public int NumCaches => inner.NumCaches;
            public long BytesPerBlock => inner.BytesPerBlock;
            public void Dispose()
            {
                Interlocked.Increment(ref owner.PoolsDisposed);
                inner.Dispose();
            }
        }
    }
}
