// Frequency and presence penalties with OpenAI semantics: logit -= count * frequency + (count > 0) * presence over
// the tokens this sampler generated, checked against the formula applied by hand.
using SwiftKV.Engine.Sampling;
using Xunit;

namespace SwiftKV.Engine.Tests;

public class SamplerPenaltyTests
{
    [Fact]
    public void FrequencyPenalty_GreedyMovesOffARepeatedToken()
    {
        // Token 0 leads token 1 by 1.0. With frequency 0.4: after 3 picks of 0 its logit is 3 - 1.2 = 1.8 < 2.0 - 0.
        float[] logits = [3f, 2f, 0f];
        var s = new Sampler(new SamplingParams { FrequencyPenalty = 0.4f });
        var picks = Enumerable.Range(0, 4).Select(_ => s.Sample(logits)).ToArray();
        Assert.Equal([0, 0, 0, 1], picks);
        Assert.Equal([3f, 2f, 0f], logits); // the caller's row is untouched
    }

    [Fact]
    public void PresencePenalty_IsAppliedOnce()
    {
        // Presence 0.9: after one pick, token 0 is 3 - 0.9 = 2.1 > 2 and stays there however often it repeats.
        float[] logits = [3f, 2f, 0f];
        var s = new Sampler(new SamplingParams { PresencePenalty = 0.9f });
        Assert.All(Enumerable.Range(0, 5).Select(_ => s.Sample(logits)), t => Assert.Equal(0, t));
        // Presence 1.1: token 0 drops to 1.9 < 2, token 1 is picked and drops to 0.9, then 0 wins for good.
        var s2 = new Sampler(new SamplingParams { PresencePenalty = 1.1f });
        Assert.Equal([0, 1, 0, 0, 0], Enumerable.Range(0, 5).Select(_ => s2.Sample(logits)).ToArray());
    }

    [Fact]
    public void NegativePenalty_EncouragesRepetition()
    {
        float[] first = [1f, 1.5f];
        float[] later = [1f, 0.5f];
        var s = new Sampler(new SamplingParams { FrequencyPenalty = -1f });
        Assert.Equal(1, s.Sample(first));
        Assert.Equal(1, s.Sample(later)); // 0.5 + 1 = 1.5 > 1
    }

    [Theory]
    [InlineData(2.01f, 0f)]
    [InlineData(0f, -2.5f)]
    [InlineData(float.NaN, 0f)]
    public void Penalties_OutsideRange_Throw(float frequency, float presence)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new SamplingParams { FrequencyPenalty = frequency, PresencePenalty = presence });
        Assert.Contains("[-2, 2]", e.Message);
    }
}
