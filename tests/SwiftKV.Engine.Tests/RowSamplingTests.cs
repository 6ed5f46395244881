// RowSampling: the pick rule shared by the Sampler, the CPU backend's ForwardBatchSample and the GPU sampler.
// Reference: the kept set and probabilities written out directly (softmax of logits / T over the k most likely tokens,
// then the smallest most-likely prefix whose probability reaches top_p, renormalised). The rule walks the kept tokens
// in vocabulary order, so over an even grid of N uniforms each token must come up its probability x N times, +-1.
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Sampling;
using SwiftKV.Engine.Serving;
using SwiftKV.Engine.Tests.Serving;
using Xunit;

namespace SwiftKV.Engine.Tests;

public class RowSamplingTests
{
    static double[] Expected(float[] logits, float temperature, int topK, float topP)
    {
        int n = logits.Length;
        var order = Enumerable.Range(0, n).OrderByDescending(i => logits[i]).ToArray();
        int keep = topK > 0 ? Math.Min(topK, n) : n;
        double max = logits[order[0]];
        var p = new double[n];
        double sum = 0;
        for (int r = 0; r < keep; r++) sum += p[order[r]] = Math.Exp((logits[order[r]] - max) / temperature);
        if (topP < 1)
        {
            double run = 0;
            int cut = 0;
            while (cut < keep && run < topP * sum) run += p[order[cut++]];
            for (int r = cut; r < keep; r++) p[order[r]] = 0;
            sum = run;
        }
        for (int i = 0; i < n; i++) p[i] /= sum;
        return p;
    }

    [Theory]
    [InlineData(1f, 0, 1f)]
    [InlineData(0.7f, 50, 1f)]
    [InlineData(1.3f, 0, 0.8f)]
    [InlineData(1f, 40, 0.6f)]
    [InlineData(2f, 1, 1f)]
    public void Pick_OverAnEvenGridOfUniforms_FollowsTheDistribution(float temperature, int topK, float topP)
    {
        var rng = new Random(5);
        var logits = Enumerable.Range(0, 1001).Select(_ => (float)(rng.NextDouble() * 6 - 3)).ToArray();
        var expected = Expected(logits, temperature, topK, topP);
        const int draws = 20000;
        var counts = new int[logits.Length];
        for (int i = 0; i < draws; i++) counts[RowSampling.Pick(logits, new RowSampling(temperature, topK, topP, (i + 0.5f) / draws))]++;
        for (int t = 0; t < logits.Length; t++)
            Assert.True(Math.Abs(counts[t] - expected[t] * draws) <= 1.5,
                $"T={temperature} k={topK} p={topP}: token {t} came up {counts[t]} times in {draws}, expected {expected[t] * draws:F1}");
    }

    /// <summary>
    /// The rule written the plain way (sort every finite z, most likely first; k-th value; walk to the nucleus; pick in
    /// vocabulary order), against Pick's selection and histogram on rows with and without ties (integer logits), short
    /// and long, over random temperatures, filters and uniforms. Fixed seeds: the same rows every run.
    /// </summary>
    [Fact]
    public void Pick_EqualsTheSortedWalk()
    {
        static int Plain(float[] logits, RowSampling s)
        {
            float max = logits.Where(x => !float.IsNaN(x)).Max();
            double invT = 1f / s.Temperature;
            var z = logits.Select(x => float.IsNaN(x) ? double.NegativeInfinity : (x - max) * invT).ToArray();
            var sorted = z.Where(v => v > double.NegativeInfinity).OrderByDescending(v => v).ToArray();
            double threshold = double.NegativeInfinity;
            int kept = sorted.Length;
            if (s.TopK > 0 && s.TopK < kept)
            {
                threshold = sorted[s.TopK - 1];
                while (sorted[kept - 1] < threshold) kept--;
            }
            if (s.TopP < 1)
            {
                double mass = sorted.Take(kept).Sum(Math.Exp), run = 0;
                for (int i = 0; i < kept; i++)
                {
                    run += Math.Exp(sorted[i]);
                    if (run >= s.TopP * mass && (i + 1 == kept || sorted[i + 1] < sorted[i])) { threshold = sorted[i]; break; }
                }
            }
            double total = z.Where(v => v >= threshold && v > double.NegativeInfinity).Sum(Math.Exp), acc = 0;
            int last = -1;
            for (int i = 0; i < z.Length; i++)
            {
                if (!(z[i] >= threshold) || z[i] == double.NegativeInfinity) continue;
                last = i;
                acc += Math.Exp(z[i]);
                if (acc > s.U * total) return i;
            }
            return last;
        }
        var rng = new Random(17);
        int differ = 0;
        for (int row = 0; row < 400; row++)
        {
            int n = row % 4 == 0 ? 128256 / 8 : 1 + rng.Next(3000);
            bool ties = row % 2 == 0;
            var logits = Enumerable.Range(0, n).Select(_ => ties ? (float)rng.Next(-20, 8) : (float)(rng.NextDouble() * 30 - 20)).ToArray();
            var s = new RowSampling((float)(0.2 + rng.NextDouble() * 1.5), rng.Next(3) == 0 ? 0 : 1 + rng.Next(200),
                rng.Next(3) == 0 ? 1f : (float)(0.05 + rng.NextDouble() * 0.9), (float)rng.NextDouble());
            if (RowSampling.Pick(logits, s) != Plain(logits, s)) differ++;
        }
        Assert.Equal(0, differ);
    }

    [Fact]
    public void Pick_EdgeCases()
    {
        float ninf = float.NegativeInfinity, nan = float.NaN, inf = float.PositiveInfinity;
        Assert.Equal(2, RowSampling.Pick([1, nan, 3, 3], RowSampling.Greedy));
        Assert.Equal(-1, RowSampling.Pick([nan, ninf], new RowSampling(1, 0, 1, 0.5f)));
        Assert.Equal(1, RowSampling.Pick([0, inf, 2, inf], new RowSampling(1, 0, 1, 0.9f)));
        // top-k keeps ties at its threshold: k = 2 over {5, 4, 4} keeps all three (u near 1 reaches the last one).
        Assert.Equal(3, RowSampling.Pick([0, 5, 4, 4], new RowSampling(100, 2, 1, 0.999f)));
        // NaN and -inf are never picked.
        for (int i = 0; i < 50; i++)
            Assert.Contains(RowSampling.Pick([nan, 1, ninf, 2], new RowSampling(1, 0, 1, (i + 0.5f) / 50)), new[] { 1, 3 });
        Assert.Throws<ArgumentException>(() => new RowSampling(-1, 0, 1, 0).Validate("row"));
        Assert.Throws<ArgumentException>(() => new RowSampling(1, -1, 1, 0).Validate("row"));
        Assert.Throws<ArgumentException>(() => new RowSampling(1, 0, 0, 0).Validate("row"));
        Assert.Throws<ArgumentException>(() => new RowSampling(1, 0, 1, 1).Validate("row"));
        Assert.Throws<ArgumentException>(() => new RowSampling(1e-39f, 0, 1, 0.5f).Validate("row"));
        // A temperature whose inverse overflows is the argmax, its limit (the Sampler asks for no draw then).
        Assert.Equal(2, RowSampling.Pick([1, 0, 3, 2], new RowSampling(1e-39f, 0, 1, 0.99f)));
        var tiny = new Sampler(new SamplingParams { Temperature = 1e-39f, Seed = 1 });
        Assert.Equal(RowSampling.Greedy, tiny.NextRowSampling());
        Assert.Equal(2, tiny.Sample([1, 0, 3, 2]));
    }

    /// <summary>
    /// The Sampler and a backend's pick follow one rule and one generator: NextRowSampling takes the draw Sample would
    /// take, and Sample picks by RowSampling.Pick with it.
    /// </summary>
    [Fact]
    public void Sampler_NextRowSampling_TakesTheDrawSampleWouldTake()
    {
        var rng = new Random(8);
        var row = Enumerable.Range(0, 300).Select(_ => (float)(rng.NextDouble() * 8 - 4)).ToArray();
        var p = new SamplingParams { Temperature = 0.8f, TopK = 40, TopP = 0.9f, Seed = 77 };
        var a = new Sampler(p);
        var b = new Sampler(p);
        for (int i = 0; i < 20; i++)
        {
            var pick = a.NextRowSampling();
            Assert.Equal((0.8f, 40, 0.9f), (pick.Temperature, pick.TopK, pick.TopP));
            Assert.Equal(RowSampling.Pick(row, pick), b.Sample(row));
        }
        Assert.Equal(RowSampling.Greedy, new Sampler(SamplingParams.Greedy).NextRowSampling());
    }

    /// <summary>
    /// Penalties travel as the pick's bias over the tokens accepted so far: a backend's pick (NextRowSampling, then
    /// Accept of its token) and Sample give the tokens of picking, with the same uniform, from a copy of the row
    /// penalised by hand (logit -= count * frequency + presence), greedy and sampled.
    /// </summary>
    [Theory]
    [InlineData(0f)]
    [InlineData(0.8f)]
    public void Sampler_Penalties_AreThePicksBias(float temperature)
    {
        var rng = new Random(9);
        var row = Enumerable.Range(0, 300).Select(_ => (float)(rng.NextDouble() * 3)).ToArray();
        var plain = new SamplingParams { Temperature = temperature, TopK = 0, TopP = 0.95f, Seed = 78 };
        var p = plain with { FrequencyPenalty = 0.7f, PresencePenalty = 0.3f };
        var backendSide = new Sampler(p);
        var hostSide = new Sampler(p);
        var draws = new Sampler(plain);   // the same generator without penalties: the uniforms
        var counts = new Dictionary<int, int>();
        for (int i = 0; i < 40; i++)
        {
            var penalised = (float[])row.Clone();
            foreach (var (id, n) in counts) penalised[id] -= n * 0.7f + 0.3f;
            int expected = RowSampling.Pick(penalised, draws.NextRowSampling());
            var pick = backendSide.NextRowSampling();
            Assert.Equal(counts.Count, pick.Bias?.Tokens.Length ?? 0);
            int got = RowSampling.Pick(row, pick);
            backendSide.Accept(got);
            Assert.Equal(expected, got);
            Assert.Equal(expected, hostSide.Sample(row));
            counts[expected] = counts.GetValueOrDefault(expected) + 1;
        }
        Assert.True(counts.Count > 3, "the penalties never moved the pick");
    }

    /// <summary>A bias is checked: one delta per token, each token once, finite deltas, tokens inside the row.</summary>
    [Fact]
    public void LogitBias_Invalid_IsRefused()
    {
        var row = new float[10];
        foreach (var bias in new[] { new LogitBias([1, 2], [0.5f]), new LogitBias([1, 1], [0.5f, 0.5f]), new LogitBias([3], [float.NaN]),
            new LogitBias([-1], [1f]), new LogitBias([10], [1f]) })
            Assert.Throws<ArgumentException>(() => RowSampling.Pick(row, RowSampling.Greedy with { Bias = bias }));
        Assert.Equal(7, RowSampling.Pick(row, RowSampling.Greedy with { Bias = new LogitBias([7, 2], [2f, 1f]) }));
    }

    /// <summary>
    /// The CPU backend's ForwardBatchSample: each row's token is RowSampling.Pick of that row's ForwardBatch logits; a
    /// wrong number of picks, or an invalid one, is refused before the step runs (the cache does not advance).
    /// </summary>
    [Fact]
    public void CpuBackend_ForwardBatchSample_PicksEachRowAndRefusesBadPicksBeforeTheStep()
    {
        var spec = new ModelSpec(Seed: 31);
        using var sampled = new CpuBackend(TestModels.Build(spec));
        using var reference = new CpuBackend(TestModels.Build(spec));
        using var poolS = sampled.CreatePagedKvCache(16, 4);
        using var poolR = reference.CreatePagedKvCache(16, 4);
        var a = TestModels.RandomTokens(6, spec.Vocab, 1);
        var b = TestModels.RandomTokens(3, spec.Vocab, 2);
        BatchSequence[] batch = [new(a, 0, new[] { 0, 1 }, true), new(b, 0, new[] { 2 }, false), new(b.AsMemory(0, 2), 0, new[] { 3 }, true)];
        RowSampling[] picks = [new(0.9f, 5, 0.95f, 0.3f), RowSampling.Greedy];
        Assert.Throws<ArgumentException>(() => sampled.ForwardBatchSample(poolS, batch, picks[..1]));
        Assert.Throws<ArgumentException>(() => sampled.ForwardBatchSample(poolS, batch, [picks[0], new RowSampling(1, 0, 2, 0.5f)]));
        var ids = sampled.ForwardBatchSample(poolS, batch, picks);
        var logits = reference.ForwardBatch(poolR, batch);
        int vocab = spec.Vocab;
        Assert.Equal(RowSampling.Pick(logits.AsSpan(0, vocab), picks[0]), ids[0]);
        Assert.Equal(Sampler.Greedy(logits.AsSpan(vocab, vocab)), ids[1]);
        // The refused calls left nothing behind: a next step matches the reference's.
        BatchSequence[] next = [new(new[] { ids[0] }, 6, new[] { 0, 1 }, true)];
        Assert.Equal(reference.ForwardBatch(poolR, next), sampled.ForwardBatch(poolS, next));
    }

    /// <summary>
    /// A row's mask (a constraint's allowed tokens): the pick is RowSampling.Pick of the row with the other tokens at
    /// -inf, greedy and sampled, mask and bias together; a mask that fails to compute leaves the row unmasked (the engine
    /// fails the request from the mask's own task); a mask of the wrong length is refused.
    /// </summary>
    [Fact]
    public void Pick_WithAMask_PicksOnlyAllowedTokens()
    {
        var rng = new Random(12);
        var row = Enumerable.Range(0, 257).Select(_ => (float)(rng.NextDouble() * 6)).ToArray();
        var allowed = Enumerable.Range(0, 257).Select(i => i % 5 == 2).ToArray();
        var masked = row.Select((x, i) => allowed[i] ? x : float.NegativeInfinity).ToArray();
        var mask = new LogitMask(Task.FromResult<bool[]?>(allowed));
        var bias = new LogitBias([7, 12, 17], [3f, -2f, 1f]);
        for (int k = 0; k < 50; k++)
        {
            var pick = (k % 2 == 0 ? RowSampling.Greedy : new RowSampling(0.9f, k % 3 == 0 ? 10 : 0, 0.85f, (float)rng.NextDouble())) with { Bias = k % 4 < 2 ? bias : null };
            int got = RowSampling.Pick(row, pick with { Mask = mask });
            Assert.True(allowed[got], $"pick {k}: token {got} is masked");
            Assert.Equal(RowSampling.Pick(masked, pick), got);
        }
        var failed = new LogitMask(Task.FromException<bool[]?>(new InvalidOperationException("grammar bug")));
        Assert.Equal(RowSampling.Pick(row, RowSampling.Greedy), RowSampling.Pick(row, RowSampling.Greedy with { Mask = failed }));
        Assert.Throws<ArgumentException>(() => RowSampling.Pick(row, RowSampling.Greedy with { Mask = new LogitMask(Task.FromResult<bool[]?>(new bool[256])) }));
    }

    /// <summary>LogitMask.Of: the tokens a constraint's Apply sets to -inf on a row of zeros; null when it masks none.</summary>
    [Fact]
    public void LogitMask_Of_IsTheConstraintsMask()
    {
        var even = LogitMask.Of(new ServingEngineTests.EvenTokensOnly(), 9).WaitBits()?.ToFlags();
        Assert.Equal([true, false, true, false, true, false, true, false, true], even!);
        Assert.Null(LogitMask.Of(new AllowAll(), 9).WaitBits());
    }

    sealed class AllowAll : ILogitsConstraint
    {
        public void Apply(Span<float> logits) { }
        public void Accept(int tokenId) { }
    }

    /// <summary>
    /// LogitMask.Of makes its mask as bits: token i is allowed exactly when the constraint left it above -inf (tried one by
    /// one; NaN and +inf allow, as the flags' `!= -inf` read them), at lengths around a 32-token word and at Llama 3's
    /// vocabulary, with the bits past the row clear (the GPU copies whole words). A CPU pick with that mask, greedy and
    /// sampled, is the pick of the row with the disallowed tokens set to -inf by hand. Words given to reuse are rewritten whole.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(31)]
    [InlineData(32)]
    [InlineData(33)]
    [InlineData(257)]
    [InlineData(128256)]
    public void LogitMask_Of_BitsAreTheConstraintsMask(int vocab)
    {
        var rng = new Random(vocab);
        var applied = new float[vocab];
        for (int i = 0; i < vocab; i++)
            applied[i] = rng.Next(8) switch { < 4 => float.NegativeInfinity, 4 => float.NaN, 5 => float.PositiveInfinity, 6 => -1e30f, _ => 0f };
        applied[0] = float.NegativeInfinity;   // one token masked at least, so the mask is not null
        if (vocab >= 96)
        {
            applied.AsSpan(32, 32).Fill(0f);                          // a whole word allowed
            applied.AsSpan(64, 32).Fill(float.NegativeInfinity);      // and one masked
        }
        var bits = LogitMask.Of(new Fixed(applied), vocab).WaitBits();
        Assert.NotNull(bits);
        Assert.Equal(vocab, bits.Length);
        int words = SwiftKV.Cuda.Kernels.SamplingKernel.MaskWords(vocab);
        for (int i = 0; i < 32 * words; i++)
        {
            bool set = ((bits.Words[i >> 5] >> (i & 31)) & 1) != 0;
            Assert.True(set == (i < vocab && applied[i] != float.NegativeInfinity), $"token {i} of {vocab}: bit {set}, applied {(i < vocab ? applied[i] : float.NaN)}");
        }
        // Words given to reuse (the engine passes a request's own from step to step): every word is rewritten.
        var reused = Enumerable.Repeat(0xdeadbeefu, words).ToArray();
        Assert.Same(reused, LogitMask.Of(new Fixed(applied), vocab, words: reused).WaitBits()!.Words);
        Assert.Equal(bits.Words, reused);
        Assert.Throws<ArgumentException>(() => LogitMask.Of(new Fixed(applied), vocab, words: new uint[words - 1]));

        var row = Enumerable.Range(0, vocab).Select(_ => (float)(rng.NextDouble() * 8 - 4)).ToArray();
        var masked = row.Select((x, i) => applied[i] != float.NegativeInfinity ? x : float.NegativeInfinity).ToArray();
        var mask = LogitMask.Of(new Fixed(applied), vocab);
        for (int k = 0; k < 12; k++)
        {
            var pick = k % 3 == 0 ? RowSampling.Greedy : new RowSampling(0.8f, k % 2 == 0 ? 20 : 0, k % 4 == 1 ? 0.9f : 1f, (float)rng.NextDouble());
            Assert.Equal(RowSampling.Pick(masked, pick), RowSampling.Pick(row, pick with { Mask = mask }));
        }
    }

    /// <summary>A constraint whose Apply writes the same values each time.</summary>
    sealed class Fixed(float[] values) : ILogitsConstraint
    {
        public void Apply(Span<float> logits) => values.CopyTo(logits);
        public void Accept(int tokenId) { }
    }

    /// <summary>
    /// Seeded sampled requests through the serving engine on the CPU backend (whose steps pick on the backend) give the
    /// tokens of the single-sequence path (Generator: Forward + the Sampler), with other requests, greedy and sampled,
    /// in the same steps; a request with penalties is picked on the backend with them as its bias, and one with a
    /// logits constraint with the constraint's mask, by the same rule.
    /// </summary>
    [Fact]
    public async Task ServingEngine_SeededSampledRequests_EqualTheSoloPath()
    {
        using var backend = ServingEngineTests.Backend("swiftkv on acrosskv g=2");
        int vocab = backend.Config.VocabSize;
        var jobs = Enumerable.Range(0, 9).Select(i => (
            Prompt: TestModels.RandomTokens(3 + 4 * i, vocab, 40 + (ulong)i),
            Sampling: i % 3 == 0 ? SamplingParams.Greedy
                : new SamplingParams { Temperature = 0.6f + 0.1f * i, TopK = i % 2 == 0 ? 0 : 20, TopP = i % 4 == 1 ? 0.8f : 1f, Seed = 100 + (ulong)i,
                    FrequencyPenalty = i == 7 ? 0.4f : 0f })).ToArray();
        var none = new HashSet<int>();
        using var engine = new ServingEngine(backend, new ServingOptions { BlockSize = 4, NumKvBlocks = 128, MaxBatchTokens = 32 });
        ILogitsConstraint? Constraint(int i) => i == 5 ? new ServingEngineTests.EvenTokensOnly() : null;
        var requests = jobs.Select((j, i) => engine.Submit(j.Prompt, j.Sampling, 12, ct: TestContext.Current.CancellationToken, constraint: Constraint(i))).ToArray();
        var outputs = await Task.WhenAll(requests.Select(ServingEngineTests.Collect)).WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
        for (int i = 0; i < jobs.Length; i++)
            Assert.Equal(ServingEngineTests.Solo(backend, jobs[i].Prompt, jobs[i].Sampling, 12, none, Constraint(i)), outputs[i]);
    }
}
