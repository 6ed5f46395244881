// Sampler and SamplingParams: determinism, filters that must collapse to greedy, empirical distributions against
// softmax probabilities computed here, and option validation.
using SwiftKV.Engine.Sampling;
using Xunit;

namespace SwiftKV.Engine.Tests;

public class SamplerTests
{
    static float[] RandomLogits(int n, ulong seed)
    {
        var rng = new TestRng(seed);
        return Enumerable.Range(0, n).Select(_ => rng.Uniform(4)).ToArray();
    }

    static double[] Softmax(double[] logits, double temperature)
    {
        var e = logits.Select(v => Math.Exp(v / temperature)).ToArray();
        return e.Select(v => v / e.Sum()).ToArray();
    }

    static double[] Frequencies(Sampler sampler, float[] logits, int draws)
    {
        var counts = new double[logits.Length];
        for (int i = 0; i < draws; i++) counts[sampler.Sample(logits)]++;
        return counts.Select(c => c / draws).ToArray();
    }

    /// <summary>The rule the chat client and the CLI share: greedy unless top-p or top-k ask for sampling, a given temperature wins.</summary>
    [Theory]
    [InlineData(null, null, null, 0f)]
    [InlineData(null, 1f, 0, 0f)]
    [InlineData(null, 1f, 1, 0f)]      // top-k 1 is greedy anyway
    [InlineData(null, 0.9f, null, 1f)]
    [InlineData(null, null, 40, 1f)]
    [InlineData(0.3f, 0.9f, 40, 0.3f)]
    [InlineData(0f, 0.9f, null, 0f)]
    public void DefaultTemperature_SamplesOnlyWhenAskedFor(float? temperature, float? topP, int? topK, float expected) =>
        Assert.Equal(expected, SamplingParams.DefaultTemperature(temperature, topP, topK));

    [Fact]
    public void Xoshiro256_MatchesIndependentImplementation()
    {
        // Values from a separate Python implementation of SplitMix64 seeding + xoshiro256**, seed 12345.
        var rng = new Xoshiro256(12345);
        Assert.Equal(0xbe6a36374160d49bUL, rng.NextUInt64());
        Assert.Equal(0x214aaa0637a688c6UL, rng.NextUInt64());
        Assert.Equal(0xf69d16de9954d388UL, rng.NextUInt64());
        Assert.Equal(0x0c60048c4e96e033UL, rng.NextUInt64());
    }

    [Fact]
    public void Sample_SameSeedGivesSameTokens()
    {
        var p = new SamplingParams { Temperature = 1.2f, TopK = 20, TopP = 0.95f, Seed = 7 };
        var a = new Sampler(p);
        var b = new Sampler(p);
        var c = new Sampler(p with { Seed = 8 });
        var rows = Enumerable.Range(0, 100).Select(i => RandomLogits(50, (ulong)i)).ToArray();

        var ta = rows.Select(r => a.Sample(r)).ToArray();
        var tb = rows.Select(r => b.Sample(r)).ToArray();
        var tc = rows.Select(r => c.Sample(r)).ToArray();

        Assert.Equal(ta, tb);
        Assert.NotEqual(ta, tc);
    }

    [Fact]
    public void Sample_TemperatureZeroIsArgmaxWithLowestIndexOnTies()
    {
        var s = new Sampler(SamplingParams.Greedy);
        Assert.Equal(1, s.Sample([0f, 3f, 3f, -1f]));
        Assert.Equal(2, Sampler.Greedy([float.NaN, 1f, 2f]));
    }

    /// <summary>
    /// Non-finite logits: +inf holds all the softmax mass (the first +inf token is taken, at any temperature and top-k),
    /// NaN counts as -inf and is never drawn, and a row with nothing above -inf is an error, not token 0 or n-1.
    /// </summary>
    [Fact]
    public void Sample_NonFiniteLogits_InfWinsNaNNeverDrawnNothingFiniteThrows()
    {
        float inf = float.PositiveInfinity, nan = float.NaN;
        foreach (var p in new[] { new SamplingParams { Temperature = 1f, Seed = 1 }, new SamplingParams { Temperature = 0.3f, TopK = 3, Seed = 2 },
                     new SamplingParams { Temperature = 2f, TopP = 0.5f, Seed = 3 } })
        {
            var s = new Sampler(p);
            for (int i = 0; i < 200; i++) Assert.Equal(2, s.Sample([0f, 5f, inf, 1f, -3f, inf]));
        }
        Assert.Equal(2, Sampler.Greedy([0f, 5f, inf, 1f]));
        var freq = Frequencies(new Sampler(new SamplingParams { Temperature = 1f, Seed = 5 }), [nan, 0f, nan, 0f], 20_000);
        Assert.Equal(0, freq[0] + freq[2]);
        Assert.True(Math.Abs(freq[1] - 0.5) < 0.02, $"{freq[1]}");
        float[] none = [nan, float.NegativeInfinity, nan];
        Assert.Contains("NaN or -inf", Assert.Throws<NoFiniteLogitsException>(() => Sampler.Greedy(none)).Message);
        Assert.Equal(-1, Sampler.GreedyOrNone(none));
        Assert.Throws<NoFiniteLogitsException>(() => new Sampler(new SamplingParams { Temperature = 1f, Seed = 6 }).Sample(none));
        Assert.Throws<NoFiniteLogitsException>(() => new Sampler(SamplingParams.Greedy).Sample(none));
    }

    [Fact]
    public void Sample_TopK1EqualsGreedy()
    {
        var s = new Sampler(new SamplingParams { Temperature = 2f, TopK = 1, Seed = 3 });
        for (int i = 0; i < 50; i++)
        {
            var logits = RandomLogits(64, (ulong)(100 + i));
            Assert.Equal(Sampler.Greedy(logits), s.Sample(logits));
        }
    }

    [Fact]
    public void Sample_TinyTopPEqualsGreedy()
    {
        var s = new Sampler(new SamplingParams { Temperature = 1.5f, TopP = 1e-6f, Seed = 4 });
        for (int i = 0; i < 50; i++)
        {
            var logits = RandomLogits(64, (ulong)(200 + i));
            Assert.Equal(Sampler.Greedy(logits), s.Sample(logits));
        }
    }

    [Fact]
    public void Sample_FrequenciesFollowTemperatureSoftmax()
    {
        double[] logits = [1.0, 2.0, 0.5, -1.0, 1.5];
        var expected = Softmax(logits, 0.7);
        var freq = Frequencies(new Sampler(new SamplingParams { Temperature = 0.7f, Seed = 11 }),
            logits.Select(v => (float)v).ToArray(), 100_000);
        for (int i = 0; i < 5; i++) Assert.True(Math.Abs(freq[i] - expected[i]) < 0.006, $"token {i}: {freq[i]} vs {expected[i]}");
    }

    [Fact]
    public void Sample_TopKRenormalizesOverTheKBest()
    {
        double[] logits = [1.0, 2.0, 0.5, -1.0, 1.5];
        var freq = Frequencies(new Sampler(new SamplingParams { Temperature = 1f, TopK = 2, Seed = 12 }),
            logits.Select(v => (float)v).ToArray(), 50_000);
        double p1 = Math.Exp(2.0) / (Math.Exp(2.0) + Math.Exp(1.5));
        Assert.Equal(0, freq[0] + freq[2] + freq[3]);
        Assert.True(Math.Abs(freq[1] - p1) < 0.01, $"{freq[1]} vs {p1}");
    }

    [Fact]
    public void Sample_TopPKeepsTheSmallestSetReachingP()
    {
        // probabilities 0.5, 0.3, 0.2: TopP 0.6 keeps {0, 1} (0.5 alone does not reach 0.6).
        float[] logits = [MathF.Log(0.5f), MathF.Log(0.3f), MathF.Log(0.2f)];
        var freq = Frequencies(new Sampler(new SamplingParams { Temperature = 1f, TopP = 0.6f, Seed = 13 }), logits, 50_000);
        Assert.Equal(0, freq[2]);
        Assert.True(Math.Abs(freq[0] - 0.625) < 0.01, $"{freq[0]}");
    }

    [Theory]
    [InlineData("Temperature")]
    [InlineData("TopK")]
    [InlineData("TopP")]
    public void SamplingParams_RejectsOutOfRangeOptions(string option)
    {
        Action[] bad = option switch
        {
            "Temperature" => [() => _ = new SamplingParams { Temperature = -0.1f }, () => _ = new SamplingParams { Temperature = float.NaN }],
            "TopK" => [() => _ = new SamplingParams { TopK = -1 }],
            _ => [() => _ = new SamplingParams { TopP = 0f }, () => _ = new SamplingParams { TopP = 1.01f }],
        };
        foreach (var a in bad) Assert.Equal(option, Assert.Throws<ArgumentOutOfRangeException>(a).ParamName);
    }

    [Fact]
    public void SamplingParams_DefaultsAreGreedyWithFiltersOff()
    {
        var p = new SamplingParams();
        Assert.Equal((0f, 0, 1f, (ulong?)null), (p.Temperature, p.TopK, p.TopP, p.Seed));
    }
}
