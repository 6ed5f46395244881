// The presets against the published config.json values and parameter counts (Meta's model cards: 8B has
// 8,030,261,248 parameters, 70B 70,553,706,496, Llama 3.2 1B 1,235,814,400).
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Model.Tests.Checkpoint;

public sealed class ModelPresetsTests
{
    [Fact]
    public void Names_AllPresets_GiveValidPlainLlamaConfigs()
    {
        Assert.Equal(["tiny", "demo", "llama-3.2-1b", "llama-3.1-8b", "llama-3.1-70b"], ModelPresets.Names);
        foreach (string name in ModelPresets.Names)
        {
            var c = ModelPresets.Get(name);
            Assert.Same(c, c.Validate());
            Assert.False(c.SwiftKv);
            Assert.Equal(128256, c.VocabSize);
            Assert.Equal(128000, c.BosTokenId);
            Assert.Equal([128001, 128008, 128009], c.EosTokenIds);
            Assert.Equal(500000, c.RopeTheta);
            Assert.Equal("bfloat16", c.TorchDtype);
        }
    }

    [Theory]
    [InlineData("llama-3.2-1b", 1_235_814_400L)]
    [InlineData("llama-3.1-8b", 8_030_261_248L)]
    [InlineData("llama-3.1-70b", 70_553_706_496L)]
    public void Get_PublishedShapes_HavePublishedParameterCounts(string name, long parameters)
    {
        Assert.Equal(parameters, ShapeManifest.ParameterCount(ModelPresets.Get(name)));
    }

    [Fact]
    public void Get_Tiny_MatchesBrief()
    {
        var c = ModelPresets.Get("tiny");
        Assert.Equal((64, 176, 4, 4, 2, 16), (c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim));
        Assert.Equal(new Llama3RopeScaling(8, 1, 4, 8192), c.RopeScaling);
        Assert.Equal(131072, c.MaxPositionEmbeddings);
        Assert.Equal(1e-5, c.RmsNormEps);
        Assert.False(c.TieWordEmbeddings);
    }

    [Fact]
    public void Get_Llama32And8B_TieAndRopeFactorAsPublished()
    {
        var small = ModelPresets.Get("llama-3.2-1b");
        Assert.True(small.TieWordEmbeddings);
        Assert.Equal(32, small.RopeScaling!.Factor);
        var demo = ModelPresets.Get("demo");
        Assert.True(demo.TieWordEmbeddings);
        Assert.Equal((384, 1024, 8, 6, 2, 64), (demo.HiddenSize, demo.IntermediateSize, demo.NumHiddenLayers, demo.NumAttentionHeads, demo.NumKeyValueHeads, demo.HeadDim));
        var big = ModelPresets.Get("llama-3.1-70b");
        Assert.False(big.TieWordEmbeddings);
        Assert.Equal(8, big.RopeScaling!.Factor);
    }

    [Fact]
    public void Get_UnknownName_ListsValidNames()
    {
        var e = Assert.Throws<ArgumentException>(() => ModelPresets.Get("llama-9b"));
        Assert.Contains("'llama-9b'", e.Message);
        foreach (string name in ModelPresets.Names) Assert.Contains(name, e.Message);
    }
}
