// One request's trouble stays its own: a constraint or stop set (caller code) that throws anything, a step that fails
// (a transient out-of-memory, or one sequence that a step cannot run), a throwing step observer; and a random mix of
// cancels, preemption and shared prefixes leaves every surviving request equal to its solo run and no block in use.
// From a review of the serving path (2026-11-27); the first two failed every co-batched and queued request before.
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Sampling;
using SwiftKV.Engine.Serving;
using SwiftKV.Model;
using Xunit;

namespace SwiftKV.Engine.Tests.Serving;

public sealed class ServingIsolationTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;
    static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);

    /// <summary>A caller's constraint that throws at its third token.</summary>
    sealed class ThrowsAfter(int after, Func<Exception> make) : ILogitsConstraint
    {
        int _accepted;
        public void Apply(Span<float> logits) { if (_accepted >= after) throw make(); }
        public void Accept(int tokenId) => _accepted++;
    }

    /// <summary>A caller's stop set whose Contains throws.</summary>
    sealed class ThrowingStops : IReadOnlySet<int>
    {
        public int Count => 1;
        public bool Contains(int item) => throw new NotSupportedException("stop set lookup failed");
        public IEnumerator<int> GetEnumerator() { yield return 0; }
        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
        public bool IsProperSubsetOf(IEnumerable<int> other) => false;
        public bool IsProperSupersetOf(IEnumerable<int> other) => false;
        public bool IsSubsetOf(IEnumerable<int> other) => false;
        public bool IsSupersetOf(IEnumerable<int> other) => false;
        public bool Overlaps(IEnumerable<int> other) => false;
        public bool SetEquals(IEnumerable<int> other) => false;
    }

    [Theory]
    [InlineData("NotSupported")]
    [InlineData("OperationCanceled")]
    [InlineData("IndexOutOfRange")]
    [InlineData("StopSet")]
    public async Task CallerCodeThrowingAnything_FailsOnlyItsRequest(string kind)
    {
        using var backend = ServingEngineTests.Backend("llama");
        int vocab = backend.Config.VocabSize;
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 200, MaxRunningSequences = 2 });
        var otherPrompt = TestModels.RandomTokens(9, vocab, 4);
        var waitingPrompt = TestModels.RandomTokens(7, vocab, 5);
        ILogitsConstraint? constraint = kind switch
        {
            "NotSupported" => new ThrowsAfter(2, () => new NotSupportedException("grammar feature X")),
            "OperationCanceled" => new ThrowsAfter(2, () => new OperationCanceledException("the constraint's own token")),
            "IndexOutOfRange" => new ThrowsAfter(2, () => new IndexOutOfRangeException("bug in a grammar")),
            _ => null,
        };
        var victim = constraint is null
            ? engine.Submit(TestModels.RandomTokens(20, vocab, 3), SamplingParams.Greedy, 30, new ThrowingStops(), Ct)
            : engine.Submit(TestModels.RandomTokens(20, vocab, 3), SamplingParams.Greedy, 30, ct: Ct, constraint: constraint);
        var other = ServingEngineTests.Collect(engine.Submit(otherPrompt, SamplingParams.Greedy, 30, ct: Ct));       // same batch
        var waiting = ServingEngineTests.Collect(engine.Submit(waitingPrompt, SamplingParams.Greedy, 5, ct: Ct));    // queued behind
        await Assert.ThrowsAnyAsync<Exception>(() => ServingEngineTests.Collect(victim).WaitAsync(Limit, Ct));
        Assert.Equal(ServingEngineTests.Solo(backend, otherPrompt, SamplingParams.Greedy, 30, new HashSet<int>()), await other.WaitAsync(Limit, Ct));
        Assert.Equal(ServingEngineTests.Solo(backend, waitingPrompt, SamplingParams.Greedy, 5, new HashSet<int>()), await waiting.WaitAsync(Limit, Ct));
    }

    /// <summary>A caller's constraint whose Apply blocks (a deadlock in its code) from its third token on.</summary>
    sealed class BlocksAfter(int after, ManualResetEventSlim release) : ILogitsConstraint
    {
        int _accepted;
        public void Apply(Span<float> logits) { if (_accepted >= after) release.Wait(); }
        public void Accept(int tokenId) => _accepted++;
    }

    /// <summary>
    /// A constraint that never gives its mask fails its own request with a TimeoutException naming
    /// ServingOptions.ConstraintTimeout; a request in the same steps and one queued behind finish as they do alone, and
    /// the engine disposes without waiting for the stuck constraint.
    /// </summary>
    [Fact]
    public async Task ConstraintThatBlocks_FailsOnlyItsRequest_AfterTheTimeout()
    {
        using var backend = ServingEngineTests.Backend("llama");
        int vocab = backend.Config.VocabSize;
        using var release = new ManualResetEventSlim();
        try
        {
            var engine = new ServingEngine(backend, new ServingOptions
            {
                BlockSize = 4, NumKvBlocks = 200, MaxRunningSequences = 2, ConstraintTimeout = TimeSpan.FromMilliseconds(300),
            });
            var otherPrompt = TestModels.RandomTokens(9, vocab, 4);
            var waitingPrompt = TestModels.RandomTokens(7, vocab, 5);
            var victim = engine.Submit(TestModels.RandomTokens(20, vocab, 3), SamplingParams.Greedy, 30, ct: Ct, constraint: new BlocksAfter(2, release));
            var other = ServingEngineTests.Collect(engine.Submit(otherPrompt, SamplingParams.Greedy, 30, ct: Ct));
            var waiting = ServingEngineTests.Collect(engine.Submit(waitingPrompt, SamplingParams.Greedy, 5, ct: Ct));
            var error = await Assert.ThrowsAnyAsync<Exception>(() => ServingEngineTests.Collect(victim).WaitAsync(Limit, Ct));
            Assert.True(error is TimeoutException || error.InnerException is TimeoutException, $"expected a timeout, got {error}");
            Assert.Contains("ConstraintTimeout", (error.InnerException ?? error).Message);
            Assert.Equal(ServingEngineTests.Solo(backend, otherPrompt, SamplingParams.Greedy, 30, new HashSet<int>()), await other.WaitAsync(Limit, Ct));
            Assert.Equal(ServingEngineTests.Solo(backend, waitingPrompt, SamplingParams.Greedy, 5, new HashSet<int>()), await waiting.WaitAsync(Limit, Ct));
            var disposed = Task.Run(engine.Dispose, Ct);
            Assert.Same(disposed, await Task.WhenAny(disposed, Task.Delay(TimeSpan.FromSeconds(20), Ct)));   // not waiting for the stuck constraint
        }
        finally
        {
            release.Set();   // lets the stuck mask task end
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => new ServingEngine(backend, new ServingOptions { ConstraintTimeout = TimeSpan.Zero }));
        // Past what a wait can count (int milliseconds) is refused, not silently turned into "no mask".
        Assert.Throws<ArgumentOutOfRangeException>(() => new ServingEngine(backend, new ServingOptions { ConstraintTimeout = TimeSpan.MaxValue }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new LogitMask(Task.FromResult<bool[]?>(null), TimeSpan.FromDays(30)));
        var slow = new LogitMask(Task.Run(async () => { await Task.Delay(200, Ct); return (bool[]?)[true, false]; }, Ct), LogitMask.MaxTimeout);
        Assert.Equal(new[] { true, false }, slow.WaitBits()!.ToFlags());
        Assert.False(slow.TimedOut);
    }

    /// <summary>A CPU backend passed through, whose batched steps throw when <see cref="FailWhen"/> says so.</summary>
    abstract class Wrapped(CpuBackend inner) : IModelBackend, IBatchedBackend
    {
        public Func<int, BatchSequence[], bool> FailWhen { get; init; } = (_, _) => false;
        int _calls;
        protected CpuBackend Inner => inner;
        /// <summary>Counts a batched step and throws (out of memory, as a workspace growth would) when FailWhen says so.</summary>
        protected void Step(ReadOnlySpan<BatchSequence> batch)
        {
            if (FailWhen(++_calls, batch.ToArray())) throw new OutOfMemoryException("growing the step workspace");
        }
        public string Name => inner.Name;
        public LlamaConfig Config => inner.Config;
        public bool SwiftKvEnabled => inner.SwiftKvEnabled;
        public ISequenceCache CreateCache(int capacity) => inner.CreateCache(capacity);
        public float[] Forward(ISequenceCache cache, ReadOnlySpan<int> tokens, LogitsSelection selection) => inner.Forward(cache, tokens, selection);
        public long KvBytesPerToken => inner.KvBytesPerToken;
        public int MaxSequencesPerStep { get; init; } = int.MaxValue;
        public IPagedKvCache CreatePagedKvCache(int numBlocks, int blockSize) => inner.CreatePagedKvCache(numBlocks, blockSize);
        public virtual float[] ForwardBatch(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch) => inner.ForwardBatch(kv, batch);
        public void Dispose() { }
    }

    /// <summary>A CPU backend whose batched step (logits to the host) can throw.</summary>
    sealed class FailingBackend(CpuBackend inner) : Wrapped(inner)
    {
        public override float[] ForwardBatch(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch)
        {
            Step(batch);
            return Inner.ForwardBatch(kv, batch);
        }
    }

    /// <summary>A CPU backend that picks tokens on the backend (IGreedyBatchedBackend), whose picking steps can throw.</summary>
    sealed class FailingPicker(CpuBackend inner) : Wrapped(inner), IGreedyBatchedBackend
    {
        public int SampledCalls { get; private set; }
        public bool MaskedCallFailed { get; private set; }
        public int BiasedRows { get; private set; }
        public int[] ForwardBatchGreedy(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch)
        {
            Step(batch);
            return Inner.ForwardBatchGreedy(kv, batch);
        }
        public int[] ForwardBatchSample(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch, ReadOnlySpan<RowSampling> sampling)
        {
            SampledCalls++;
            bool masked = false;
            foreach (var p in sampling)
            {
                masked |= p.Mask is not null;
                if (p.Bias is not null) BiasedRows++;
            }
            try
            {
                Step(batch);
            }
            catch when (masked)
            {
                MaskedCallFailed = true;
                throw;
            }
            return Inner.ForwardBatchSample(kv, batch, sampling);
        }
    }

    /// <summary>
    /// Seeded sampled requests picked on the backend through a step that fails mid-run: the engine runs it again in
    /// halves, each half with its own rows' picks drawn before the first try (no request draws twice), so every output
    /// still equals its solo run. One request has a logits constraint, whose mask goes with its picks (the failed step
    /// had it too); another has penalties, which go with its picks as a bias.
    /// </summary>
    [Fact]
    public async Task TransientFailureOfASampledStep_IsRetriedInParts_WithTheSameDraws()
    {
        using var cpu = ServingEngineTests.Backend("llama");
        int failures = 0;   // once, at the first step of several sequences after the prefills
        var backend = new FailingPicker(cpu) { FailWhen = (call, batch) => call >= 6 && batch.Length > 1 && failures++ == 0 };
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 200 });
        int vocab = cpu.Config.VocabSize;
        var prompts = Enumerable.Range(0, 5).Select(i => TestModels.RandomTokens(5 + i, vocab, 70 + (ulong)i)).ToArray();
        SamplingParams Params(int i) => i == 1 ? SamplingParams.Greedy
            : new SamplingParams { Temperature = 0.8f, TopK = 30, TopP = 0.9f, Seed = 900 + (ulong)i, FrequencyPenalty = i == 4 ? 0.5f : 0f };
        int MaxTokens(int i) => i == 3 ? 8 : 16;   // later steps have no masked row
        ILogitsConstraint? Constraint(int i) => i == 3 ? new ServingEngineTests.EvenTokensOnly() : null;
        var got = await Outcomes(prompts.Select((p, i) => engine.Submit(p, Params(i), MaxTokens(i), ct: Ct, constraint: Constraint(i))).ToArray());
        for (int i = 0; i < prompts.Length; i++)
            Assert.Equal(string.Join(",", ServingEngineTests.Solo(cpu, prompts[i], Params(i), MaxTokens(i), new HashSet<int>(), Constraint(i))), got[i]);
        Assert.True(failures > 0, "the injected failure never happened");
        Assert.True(backend.MaskedCallFailed, "the injected failure did not hit a step with a masked row");
        Assert.True(backend.SampledCalls > 8, "the sampled steps did not pick on the backend");
        Assert.True(backend.BiasedRows > 8, "the penalised request's penalties did not reach the backend's picks");
    }

    /// <summary>
    /// A mask that changes at every token: at its n-th token, token t is allowed when (t + salt + n) % 5 == 0. Accept
    /// checks the token against that mask, so a pick made under a stale mask or another request's fails the request.
    /// </summary>
    sealed class Rotating(int salt) : ILogitsConstraint
    {
        int _n;
        public void Apply(Span<float> logits)
        {
            for (int t = 0; t < logits.Length; t++)
                if ((t + salt + _n) % 5 != 0) logits[t] = float.NegativeInfinity;
        }
        public void Accept(int tokenId)
        {
            Assert.Equal(0, (tokenId + salt + _n) % 5);
            _n++;
        }
    }

    /// <summary>
    /// Requests whose masks change at every token and differ from one another's, several a step, picked on the backend
    /// and on the host: each request's tokens are its solo run's, each allowed by its own mask of that step (the engine
    /// reuses a request's mask words from step to step; a stale mask or another request's would show here).
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ChangingMasks_EachRequestPicksUnderItsOwnMaskOfThatStep(bool onHost)
    {
        using var cpu = ServingEngineTests.Backend("llama");
        IModelBackend backend = onHost ? new FailingBackend(cpu) : cpu;
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 200 });
        int vocab = cpu.Config.VocabSize;
        var prompts = Enumerable.Range(0, 6).Select(i => TestModels.RandomTokens(4 + i, vocab, 300 + (ulong)i)).ToArray();
        SamplingParams Params(int i) => i % 2 == 0 ? SamplingParams.Greedy : new SamplingParams { Temperature = 0.9f, TopK = 40, Seed = 500 + (ulong)i };
        var got = await Outcomes(prompts.Select((p, i) => engine.Submit(p, Params(i), 20, ct: Ct, constraint: new Rotating(i))).ToArray());
        for (int i = 0; i < prompts.Length; i++)
            Assert.Equal(string.Join(",", ServingEngineTests.Solo(cpu, prompts[i], Params(i), 20, new HashSet<int>(), new Rotating(i))), got[i]);
    }

    /// <summary>A constraint that signals each Apply, masking odd ids like EvenTokensOnly.</summary>
    sealed class SignallingEvenTokens : ILogitsConstraint
    {
        readonly ServingEngineTests.EvenTokensOnly _inner = new();
        public ManualResetEventSlim Prepared { get; } = new(false);
        public void Apply(Span<float> logits) { _inner.Apply(logits); Prepared.Set(); }
        public void Accept(int tokenId) { Prepared.Reset(); _inner.Accept(tokenId); }
    }

    /// <summary>
    /// A constrained request's mask is computed while the backend computes its step: the backend's step waits (up to
    /// 10 s) for that step's Apply before it returns, which would fail the step if the mask were made only after it.
    /// </summary>
    [Fact]
    public async Task ConstraintMask_IsComputedWhileTheStepRuns()
    {
        using var cpu = ServingEngineTests.Backend("llama");
        var constraint = new SignallingEvenTokens();
        int waited = 0;
        var backend = new FailingBackend(cpu)   // logits to the host: the constrained row's path
        {
            FailWhen = (_, batch) =>
            {
                if (!batch.Any(b => b.NeedsLogits)) return false;
                waited++;
                return !constraint.Prepared.Wait(TimeSpan.FromSeconds(10));
            },
        };
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 200, MaxRunningSequences = 1 });
        var prompt = TestModels.RandomTokens(7, cpu.Config.VocabSize, 61);
        var got = await ServingEngineTests.Collect(engine.Submit(prompt, SamplingParams.Greedy, 6, ct: Ct, constraint: constraint)).WaitAsync(Limit, Ct);
        Assert.Equal(ServingEngineTests.Solo(cpu, prompt, SamplingParams.Greedy, 6, new HashSet<int>(), new ServingEngineTests.EvenTokensOnly()), got);
        Assert.Equal(6, waited);
    }

    static async Task<string[]> Outcomes(IEnumerable<ServingRequest> requests) =>
        await Task.WhenAll(requests.Select(async r =>
        {
            try { return string.Join(",", await ServingEngineTests.Collect(r)); }
            catch (Exception e) { return "failed: " + e.Message; }
        })).WaitAsync(Limit, Ct);

    [Fact]
    public async Task TransientStepFailure_IsRetriedInParts_NoRequestFails()
    {
        using var cpu = ServingEngineTests.Backend("llama");
        var backend = new FailingBackend(cpu) { FailWhen = (call, batch) => call == 10 };   // once, mid-run
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 200 });
        var prompts = Enumerable.Range(0, 4).Select(i => TestModels.RandomTokens(6 + i, cpu.Config.VocabSize, 40 + (ulong)i)).ToArray();
        var got = await Outcomes(prompts.Select(p => engine.Submit(p, SamplingParams.Greedy, 20, ct: Ct)).ToArray());
        for (int i = 0; i < prompts.Length; i++)
            Assert.Equal(string.Join(",", ServingEngineTests.Solo(cpu, prompts[i], SamplingParams.Greedy, 20, new HashSet<int>())), got[i]);
    }

    [Fact]
    public async Task TransientFailureOfALoneSequence_IsRetried()
    {
        using var cpu = ServingEngineTests.Backend("llama");
        var backend = new FailingBackend(cpu) { FailWhen = (call, batch) => call == 1 };   // its prefill, once
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 200 });
        var prompt = TestModels.RandomTokens(9, cpu.Config.VocabSize, 50);
        Assert.Equal(ServingEngineTests.Solo(cpu, prompt, SamplingParams.Greedy, 8, new HashSet<int>()),
            await ServingEngineTests.Collect(engine.Submit(prompt, SamplingParams.Greedy, 8, ct: Ct)).WaitAsync(Limit, Ct));
    }

    [Fact]
    public async Task StepThatCannotRunOneSequence_FailsThatRequestOnly()
    {
        using var cpu = ServingEngineTests.Backend("llama");
        int vocab = cpu.Config.VocabSize;
        var poison = TestModels.RandomTokens(8, vocab, 99);
        // Every step that holds the poisoned prompt's (whole, first) chunk throws, whatever else is in it.
        var backend = new FailingBackend(cpu) { FailWhen = (_, batch) => batch.Any(b => b.StartPosition == 0 && b.Tokens.Span.SequenceEqual(poison)) };
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 200 });
        var prompts = Enumerable.Range(0, 5).Select(i => i == 2 ? poison : TestModels.RandomTokens(6 + i, vocab, 60 + (ulong)i)).ToArray();
        var got = await Outcomes(prompts.Select(p => engine.Submit(p, SamplingParams.Greedy, 12, ct: Ct)).ToArray());
        for (int i = 0; i < prompts.Length; i++)
        {
            if (i == 2) Assert.Contains("the batched forward step failed", got[i]);
            else Assert.Equal(string.Join(",", ServingEngineTests.Solo(cpu, prompts[i], SamplingParams.Greedy, 12, new HashSet<int>())), got[i]);
        }
        for (int k = 0; k < 200 && engine.Metrics.KvBlocksUsed != 0; k++) await Task.Delay(10, Ct);
        Assert.Equal(0, engine.Metrics.KvBlocksUsed);
    }

    [Fact]
    public async Task ThrowingStepObserver_FailsNoRequest()
    {
        using var backend = ServingEngineTests.Backend("llama");
        using var engine = new ServingEngine(backend, new ServingOptions
        {
            BlockSize = 4, NumKvBlocks = 200, StepObserver = _ => throw new InvalidOperationException("metrics sink down"),
        });
        var prompt = TestModels.RandomTokens(9, backend.Config.VocabSize, 7);
        Assert.Equal(ServingEngineTests.Solo(backend, prompt, SamplingParams.Greedy, 10, new HashSet<int>()),
            await ServingEngineTests.Collect(engine.Submit(prompt, SamplingParams.Greedy, 10, ct: Ct)).WaitAsync(Limit, Ct));
    }

    [Fact]
    public void MoreRunningSequencesThanAStepHolds_IsRefusedAtConstruction()
    {
        using var cpu = ServingEngineTests.Backend("llama");
        var backend = new FailingBackend(cpu) { MaxSequencesPerStep = 8 };
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 64, MaxRunningSequences = 9 }));
        Assert.Contains("MaxRunningSequences 9 exceeds the 8 sequences", e.Message);
        using var fits = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 64, MaxRunningSequences = 8 });
    }

    [Theory]
    [InlineData("swiftkv on acrosskv g=2", false, 1)]
    [InlineData("swiftkv on acrosskv g=2", true, 2)]
    [InlineData("llama", false, 3)]
    [InlineData("llama", true, 4)]
    public async Task RandomCancels_Preemption_SharedPrefixes_SurvivorsMatchSolo_NoBlockLeft(string name, bool reserveOutput, ulong seed)
    {
        using var backend = ServingEngineTests.Backend(name);
        int vocab = backend.Config.VocabSize;
        var rng = new TestRng(seed);
        var shared = TestModels.RandomTokens(10, vocab, 77 + seed);
        var sampled = new SamplingParams { Temperature = 0.8f, TopK = 10, Seed = 5, FrequencyPenalty = 0.5f };
        using var engine = new ServingEngine(backend, new ServingOptions
        {
            BlockSize = 2, NumKvBlocks = 40, AdmissionReserveBlocks = 0, MaxBatchTokens = 7, MaxRunningSequences = 6, ReserveOutputBlocks = reserveOutput,
        });
        var jobs = Enumerable.Range(0, 40).Select(i =>
        {
            var own = TestModels.RandomTokens(1 + (int)(rng.NextDouble() * 8), vocab, 500 + (ulong)i + seed * 1000);
            var prompt = i % 2 == 0 ? shared.Concat(own).ToArray() : own;
            var sampling = i % 3 == 0 ? sampled with { Seed = (ulong)i } : SamplingParams.Greedy;
            int cancelAfter = rng.NextDouble() < 0.3 ? (int)(rng.NextDouble() * 6) : -1;
            return (Prompt: prompt, Sampling: sampling, Max: 2 + (int)(rng.NextDouble() * 12), CancelAfter: cancelAfter);
        }).ToArray();
        var requests = jobs.Select(j => engine.Submit(j.Prompt, j.Sampling, j.Max, ct: Ct)).ToArray();
        var outputs = await Task.WhenAll(jobs.Select(async (j, i) =>
        {
            var tokens = new List<int>();
            try
            {
                if (j.CancelAfter == 0) requests[i].Cancel();
                await foreach (int t in requests[i].ReadAllAsync(Ct))
                {
                    tokens.Add(t);
                    if (tokens.Count == j.CancelAfter) requests[i].Cancel();
                }
                return (List<int>?)tokens;
            }
            catch (OperationCanceledException) { return null; }
        })).WaitAsync(Limit, Ct);
        for (int i = 0; i < jobs.Length; i++)
            if (outputs[i] is { } o && jobs[i].CancelAfter < 0)
                Assert.Equal(ServingEngineTests.Solo(backend, jobs[i].Prompt, jobs[i].Sampling, jobs[i].Max, new HashSet<int>()), o);
        for (int k = 0; k < 200 && engine.Metrics.KvBlocksUsed != 0; k++) await Task.Delay(10, Ct);
        Assert.Equal(0, engine.Metrics.KvBlocksUsed);
        Assert.Equal(0, engine.Metrics.RunningSequences);
    }
}
