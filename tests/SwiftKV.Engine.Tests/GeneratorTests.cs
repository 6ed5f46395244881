// Generator: the loop's contract on a scripted backend (next token = last token + 1, so the expected stream is
// known), and greedy generation on a real SwiftKV model against argmax of the reference model recomputed per step.
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Generation;
using SwiftKV.Engine.Sampling;
using SwiftKV.Model;
using Xunit;

namespace SwiftKV.Engine.Tests;

public class GeneratorTests
{
    /// <summary>Predicts (last token + 1) % vocab with certainty and records every call.</summary>
    sealed class CountingBackend(int vocab = 32) : IModelBackend
    {
        public List<(int Tokens, LogitsSelection Selection)> Calls { get; } = [];
        public string Name => "counting";
        public LlamaConfig Config { get; } = new ModelSpec(Vocab: vocab, MaxPositions: 64).Config();
        public bool SwiftKvEnabled => false;
        public ISequenceCache CreateCache(int capacity) => new Cache(capacity);

        public float[] Forward(ISequenceCache cache, ReadOnlySpan<int> tokens, LogitsSelection selection)
        {
            var c = (Cache)cache;
            if (c.Length + tokens.Length > c.Capacity) throw new ArgumentException("overflow");
            Calls.Add((tokens.Length, selection));
            c.Length += tokens.Length;
            var logits = new float[Config.VocabSize];
            logits[(tokens[^1] + 1) % Config.VocabSize] = 10;
            return logits;
        }

        public void Dispose() { }

        sealed class Cache(int capacity) : ISequenceCache
        {
            public int Length { get; set; }
            public int Capacity => capacity;
            public long KvBytes => 0;
            public void Dispose() { }
        }
    }

    static readonly IReadOnlySet<int> NoStop = new HashSet<int>();
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public void Generate_PrefillChunk_SplitsThePromptAndChecksCancellationBetweenChunks()
    {
        var backend = new CountingBackend();
        var prompt = Enumerable.Range(0, 23).ToArray();

        var chunked = Generator.Generate(backend, backend.CreateCache(64), prompt, SamplingParams.Greedy, 2, NoStop, new GenerationStats(), Ct,
            prefillChunk: 10).ToList();
        Assert.Equal([(10, LogitsSelection.LastToken), (10, LogitsSelection.LastToken), (3, LogitsSelection.LastToken), (1, LogitsSelection.LastToken)],
            backend.Calls);
        Assert.Equal([23, 24], chunked);   // the last chunk's logits start decoding, as one pass would

        // Cancelled while the second chunk runs: the third never starts.
        using var cts = new CancellationTokenSource();
        var cancelling = new CancelOnCall(backend, cts, call: 2);
        Assert.Throws<OperationCanceledException>(() =>
            Generator.Generate(cancelling, cancelling.CreateCache(64), prompt, SamplingParams.Greedy, 2, NoStop, new GenerationStats(), cts.Token,
                prefillChunk: 10).ToList());
        Assert.Equal(2, cancelling.Calls);
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            Generator.Generate(backend, backend.CreateCache(64), prompt, SamplingParams.Greedy, 2, NoStop, new GenerationStats(), Ct, prefillChunk: -1));
    }

    /// <summary>Cancels the token during its <c>call</c>-th forward pass (as a caller would while a prefill runs).</summary>
    sealed class CancelOnCall(IModelBackend inner, CancellationTokenSource cts, int call) : IModelBackend
    {
        public int Calls { get; private set; }
        public string Name => inner.Name;
        public LlamaConfig Config => inner.Config;
        public bool SwiftKvEnabled => inner.SwiftKvEnabled;
        public ISequenceCache CreateCache(int capacity) => inner.CreateCache(capacity);

        public float[] Forward(ISequenceCache cache, ReadOnlySpan<int> tokens, LogitsSelection selection)
        {
            if (++Calls == call) cts.Cancel();
            return inner.Forward(cache, tokens, selection);
        }

        public void Dispose() { }
    }

    [Fact]
    public void Generate_StopsOnStopTokenWithoutYieldingIt()
    {
        var backend = new CountingBackend();
        var cache = backend.CreateCache(32);
        var stats = new GenerationStats();

        var output = Generator.Generate(backend, cache, [1, 2, 5], SamplingParams.Greedy, 100, new HashSet<int> { 9 }, stats, Ct).ToList();

        Assert.Equal([6, 7, 8], output);
        Assert.Equal(FinishReason.Stop, stats.FinishReason);
        Assert.Equal((3, 3), (stats.PromptTokens, stats.OutputTokens));
        Assert.Equal((3, LogitsSelection.LastToken), backend.Calls[0]);
        Assert.All(backend.Calls.Skip(1), c => Assert.Equal((1, LogitsSelection.LastToken), c));
        Assert.Equal(4, backend.Calls.Count);
        Assert.NotNull(stats.TimeToFirstToken);
    }

    [Fact]
    public void Generate_StopsAtMaxNewTokens()
    {
        var backend = new CountingBackend();
        var stats = new GenerationStats();

        var output = Generator.Generate(backend, backend.CreateCache(32), [3], SamplingParams.Greedy, 4, NoStop, stats, Ct).ToList();

        Assert.Equal([4, 5, 6, 7], output);
        Assert.Equal(FinishReason.Length, stats.FinishReason);
        Assert.Equal(4, backend.Calls.Count);
    }

    [Fact]
    public void Generate_StopsWhenTheCacheIsFull()
    {
        var backend = new CountingBackend();
        var cache = backend.CreateCache(6);
        var stats = new GenerationStats();

        var output = Generator.Generate(backend, cache, [1, 2, 3], SamplingParams.Greedy, 100, NoStop, stats, Ct).ToList();

        // 3 prompt tokens + 3 decoded tokens fill the cache; the 4th sampled token needs no slot.
        Assert.Equal([4, 5, 6, 7], output);
        Assert.Equal(6, cache.Length);
        Assert.Equal(FinishReason.Length, stats.FinishReason);
    }

    [Fact]
    public void Generate_ThrowsWhenCancelledBetweenSteps()
    {
        var backend = new CountingBackend();
        using var cts = new CancellationTokenSource();
        var seen = new List<int>();

        Assert.Throws<OperationCanceledException>(() =>
        {
            foreach (int t in Generator.Generate(backend, backend.CreateCache(32), [1], SamplingParams.Greedy, 10, NoStop, new GenerationStats(), cts.Token))
            {
                seen.Add(t);
                cts.Cancel();
            }
        });
        Assert.Equal([2], seen);
        Assert.Single(backend.Calls);
    }

    [Fact]
    public void Generate_RejectsPromptThatDoesNotFitBeforeAnyWork()
    {
        var backend = new CountingBackend();
        var ex = Assert.Throws<ArgumentException>(() =>
            Generator.Generate(backend, backend.CreateCache(8), [1, 2, 3, 4, 5, 6, 7, 8], SamplingParams.Greedy, 4, NoStop, new GenerationStats(), Ct));
        Assert.StartsWith("prompt of 8 tokens does not fit the context of 8 tokens", ex.Message);
        Assert.Empty(backend.Calls);
        Assert.Throws<ArgumentException>(() =>
            Generator.Generate(backend, backend.CreateCache(8), [], SamplingParams.Greedy, 4, NoStop, new GenerationStats(), Ct));
    }

    [Fact]
    public void Generate_RejectsNonPositiveMaxNewTokens()
    {
        var backend = new CountingBackend();
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() =>
            Generator.Generate(backend, backend.CreateCache(8), [1], SamplingParams.Greedy, 0, NoStop, new GenerationStats(), Ct));
        Assert.Equal("maxNewTokens", ex.ParamName);
    }

    [Fact]
    public void Generate_GreedyOnSwiftKvModelMatchesReferenceArgmax()
    {
        var w = TestModels.Build(new ModelSpec(Layers: 4, SwiftKvLayers: 2, GroupSize: 2, Vocab: 61, RopeScaling: true, Seed: 21));
        int[] prompt = TestModels.RandomTokens(5, 61, 22);
        var expected = new List<int>();
        var sequence = prompt.ToList();
        for (int i = 0; i < 6; i++)
        {
            var last = ReferenceModel.Forward(w, sequence.ToArray())[^1];
            int next = Array.IndexOf(last, last.Max());
            expected.Add(next);
            sequence.Add(next);
        }
        using var backend = new CpuBackend(w);
        using var cache = backend.CreateCache(32);
        var stats = new GenerationStats();

        var output = Generator.Generate(backend, cache, prompt, SamplingParams.Greedy, 6, NoStop, stats, Ct).ToList();

        Assert.Equal(expected, output);
        Assert.Equal(prompt.Length + 5, cache.Length);
        Assert.True(stats.PrefillTime > TimeSpan.Zero);
    }

    [Fact]
    public void Generate_SameSeedSameStreamOnRealModel()
    {
        var w = TestModels.Build(new ModelSpec(SwiftKvLayers: 2, Seed: 23));
        using var backend = new CpuBackend(w);
        var p = new SamplingParams { Temperature = 1f, TopP = 0.9f, Seed = 99 };
        List<int> Run()
        {
            using var cache = backend.CreateCache(40);
            return Generator.Generate(backend, cache, [1, 2, 3], p, 20, NoStop, new GenerationStats(), Ct).ToList();
        }
        Assert.Equal(Run(), Run());
    }
}
