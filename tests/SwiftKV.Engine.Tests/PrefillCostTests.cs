// PrefillCost against the numbers of docs/PERFORMANCE.md for Llama-3.1-8B and a hand count on a toy config.
using SwiftKV.Model;
using Xunit;

namespace SwiftKV.Engine.Tests;

public class PrefillCostTests
{
    static readonly LlamaConfig Llama8B = new LlamaConfig
    {
        HiddenSize = 4096, IntermediateSize = 14336, NumHiddenLayers = 32, NumAttentionHeads = 32, NumKeyValueHeads = 8,
        HeadDim = 128, VocabSize = 128256, SwiftKv = true, NumKeyValueLayers = 16, KeyValueGroupSize = 1,
    }.Validate();

    static void Near(double expected, double actual, double relTol) =>
        Assert.True(Math.Abs(actual - expected) <= relTol * Math.Abs(expected), $"expected {expected:E4}, got {actual:E4}");

    [Fact]
    public void Estimate_Llama8BMatchesPerformanceDoc()
    {
        foreach (int s in new[] { 1, 2048, 8192 })
        {
            var f = PrefillCost.Estimate(Llama8B, s, swiftKv: false);
            Near(1.396e10 * s + 1.05e9 + 2.62e5 * (double)s * s, f.Total, 0.005);
        }
        Near(6.98e9, PrefillCost.LinearParamsPerPromptToken(Llama8B, false), 0.002);
    }

    [Fact]
    public void Estimate_Llama8BSwiftKv50CutsLinearFlopsBy48Percent()
    {
        double on = PrefillCost.LinearParamsPerPromptToken(Llama8B, true);
        double off = PrefillCost.LinearParamsPerPromptToken(Llama8B, false);
        Near(3.62e9, on, 0.005);
        Assert.Equal(0.48, 1 - on / off, 2);

        var withKv = PrefillCost.Estimate(Llama8B, 2048, true);
        var without = PrefillCost.Estimate(Llama8B, 2048, false);
        Assert.True(withKv.Total < 0.55 * without.Total);
        Assert.Equal(without.LmHead, withKv.LmHead);
        Assert.Equal(without.Attention / 2, withKv.Attention, 0.01 * without.Attention);
    }

    [Fact]
    public void Estimate_ToyConfigByHand()
    {
        // hidden 8, inter 16, 4 layers, 2 q heads / 1 kv head of dim 4, vocab 10, SwiftKV l = 2, g = 2.
        var c = new LlamaConfig
        {
            HiddenSize = 8, IntermediateSize = 16, NumHiddenLayers = 4, NumAttentionHeads = 2, NumKeyValueHeads = 1,
            HeadDim = 4, VocabSize = 10, SwiftKv = true, NumKeyValueLayers = 2, KeyValueGroupSize = 2,
        }.Validate();
        // per layer: q 64 + k 32 + v 32 + o 64 + mlp 384 = 576 params.
        var off = PrefillCost.Estimate(c, 3, false);
        Assert.Equal(2.0 * 576 * 3 * 4, off.Linear);
        Assert.Equal(2.0 * 9 * 4 * 2 * 4, off.Attention);
        Assert.Equal(2.0 * 8 * 10, off.LmHead);

        var on = PrefillCost.Estimate(c, 3, true);
        // 3 tokens x (2 layers x 576 + 1 leader x 64) + the last token through 2 layers' q, o, MLP (512 each).
        Assert.Equal(2.0 * 3 * (2 * 576 + 64) + 2.0 * 2 * 512, on.Linear);
        // 2 full layers causal + 2 later layers where one query sees 3 keys.
        Assert.Equal(2.0 * 9 * 4 * 2 * 2 + 4.0 * 3 * 4 * 2 * 2, on.Attention);
    }

    [Fact]
    public void Estimate_SwiftKvNeedsSwiftKvConfig()
    {
        var plain = Llama8B with { SwiftKv = false, NumKeyValueLayers = 0 };
        Assert.Throws<ArgumentException>(() => PrefillCost.Estimate(plain, 10, true));
        Assert.Throws<ArgumentOutOfRangeException>(() => PrefillCost.Estimate(plain, 0, false));
    }
}
