// SwiftKvConverter against the initialisation rules of the SwiftKV paper, computed here from the source tensors.
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Model.Tests.Checkpoint;

public sealed class SwiftKvConverterTests : IDisposable
{
    readonly TempDirectory dir = new();

    public void Dispose() => dir.Dispose();

    string Source => Path.Combine(dir.Path, "llama");
    string Output => Path.Combine(dir.Path, "swiftkv");

    [Fact]
    public void Convert_AcrossKvGroupOfTwo_InitialisesFromOriginals()
    {
        var v = TinyModels.SaveFull(Source, TinyModels.Config(swiftKv: false, bias: true));

        var config = SwiftKvConverter.Convert(Source, Output, numKeyValueLayers: 2, keyValueGroupSize: 2, TensorDtype.F32, cancellationToken: TestContext.Current.CancellationToken);
        var w = LlamaCheckpointLoader.Load(Output);

        Assert.True(config.SwiftKv && w.SwiftKvEnabled);
        Assert.Equal(v["model.layers.2.input_layernorm.weight"], w.NormSwiftKv);
        Assert.Equal(v["model.layers.3.self_attn.q_proj.weight"], w.Layers[3].QProjSwiftKv);
        Assert.Equal(v["model.layers.3.self_attn.q_proj.bias"], w.Layers[3].QBiasSwiftKv);
        float[] k2 = v["model.layers.2.self_attn.k_proj.weight"], k3 = v["model.layers.3.self_attn.k_proj.weight"];
        Assert.Equal(k2.Zip(k3, (a, b) => (a + b) / 2), w.Layers[2].KProjSwiftKv!);
        float[] vb2 = v["model.layers.2.self_attn.v_proj.bias"], vb3 = v["model.layers.3.self_attn.v_proj.bias"];
        Assert.Equal(vb2.Zip(vb3, (a, b) => (a + b) / 2), w.Layers[2].VBiasSwiftKv!);
        Assert.Null(w.Layers[3].KProjSwiftKv);
    }

    /// <summary>Several groups, and a group of four: each leader's K/V is the mean over its own group only.</summary>
    [Theory]
    [InlineData(8, 4, 2)]   // two groups: layers 4-5 and 6-7
    [InlineData(6, 2, 4)]   // one group of four: layers 2-5
    public void Convert_ManyOrLargeGroups_AverageEachGroupAlone(int layers, int keyValueLayers, int groupSize)
    {
        var v = TinyModels.SaveFull(Source, TinyModels.Config(swiftKv: false, bias: true) with { NumHiddenLayers = layers });
        SwiftKvConverter.Convert(Source, Output, keyValueLayers, groupSize, TensorDtype.F32, cancellationToken: TestContext.Current.CancellationToken);
        var w = LlamaCheckpointLoader.Load(Output);
        for (int leader = keyValueLayers; leader < layers; leader += groupSize)
        {
            foreach (var (proj, get) in new (string, Func<LlamaLayerWeights, float[]?>)[] { ("k_proj.weight", l => l.KProjSwiftKv), ("v_proj.bias", l => l.VBiasSwiftKv) })
            {
                var members = Enumerable.Range(leader, groupSize).Select(j => v[$"model.layers.{j}.self_attn.{proj}"]).ToArray();
                var mean = Enumerable.Range(0, members[0].Length).Select(i => (float)(members.Sum(m => (double)m[i]) / groupSize));
                Assert.Equal(mean, get(w.Layers[leader])!);
            }
            for (int j = leader + 1; j < leader + groupSize; j++) Assert.Null(w.Layers[j].KProjSwiftKv);
        }
    }

    [Fact]
    public void Convert_Output_StillRunsAsTheOriginalLlama()
    {
        var v = TinyModels.SaveFull(Source, TinyModels.Config(swiftKv: false), TensorDtype.BF16);
        SwiftKvConverter.Convert(Source, Output, numKeyValueLayers: 1, cancellationToken: TestContext.Current.CancellationToken);

        var off = LlamaCheckpointLoader.Load(Output, swiftKv: false);
        var original = LlamaCheckpointLoader.Load(Source);
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(original.Layers[i].QProj, off.Layers[i].QProj);
            Assert.Equal(original.Layers[i].KProj, off.Layers[i].KProj);
            Assert.Equal(original.Layers[i].DownProj, off.Layers[i].DownProj);
        }
        Assert.Equal("bfloat16", LlamaConfig.Load(Output).TorchDtype);
        // g = 1: every later layer leads its own group and gets a copy of its k_proj.
        Assert.Equal(v["model.layers.3.self_attn.k_proj.weight"], LlamaCheckpointLoader.Load(Output).Layers[3].KProjSwiftKv);
    }

    [Fact]
    public void Convert_GroupSizeNotDividingLaterLayers_Throws()
    {
        TinyModels.SaveFull(Source, TinyModels.Config(swiftKv: false));
        var e = Assert.Throws<InvalidModelException>(() => SwiftKvConverter.Convert(Source, Output, numKeyValueLayers: 1, keyValueGroupSize: 2, cancellationToken: TestContext.Current.CancellationToken));
        Assert.Contains("key_value_group_size", e.Message);
    }

    [Fact]
    public void Convert_SwiftKvSource_Throws()
    {
        TinyModels.SaveFull(Source, TinyModels.Config());
        Assert.Contains("already a SwiftKV checkpoint", Assert.Throws<InvalidModelException>(() => SwiftKvConverter.Convert(Source, Output, 2, cancellationToken: TestContext.Current.CancellationToken)).Message);
    }

    [Fact]
    public void Convert_OutputIsSource_Throws()
    {
        TinyModels.SaveFull(Source, TinyModels.Config(swiftKv: false));
        Assert.Throws<ArgumentException>(() => SwiftKvConverter.Convert(Source, Source + "/", 2, cancellationToken: TestContext.Current.CancellationToken));
    }

    /// <summary>The companion files are copied from the source: an output inside it would be copied into itself.</summary>
    [Fact]
    public void Convert_OutputInsideSource_Throws()
    {
        TinyModels.SaveFull(Source, TinyModels.Config(swiftKv: false));
        var e = Assert.Throws<ArgumentException>(() => SwiftKvConverter.Convert(Source, Path.Combine(Source, "swift"), 2, cancellationToken: TestContext.Current.CancellationToken));
        Assert.Contains("must not be inside the source", e.Message);
        Assert.False(Directory.Exists(Path.Combine(Source, "swift")));
    }
}
