// LlamaTensorNames against published parameter counts and names written out from the SwiftKV checkpoint format.
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Model.Tests.Checkpoint;

public sealed class LlamaTensorNamesTests
{
    static LlamaConfig Llama31(int hidden, int ffn, int layers, int heads) => new LlamaConfig
    {
        HiddenSize = hidden, IntermediateSize = ffn, NumHiddenLayers = layers, NumAttentionHeads = heads,
        NumKeyValueHeads = 8, HeadDim = 128, VocabSize = 128256,
    }.Validate();

    [Fact]
    public void ForCheckpoint_Llama31_8B_MatchesPublishedParameterCount() =>
        Assert.Equal(8_030_261_248L, LlamaTensorNames.ForCheckpoint(Llama31(4096, 14336, 32, 32)).Sum(s => s.ElementCount));

    [Fact]
    public void ForCheckpoint_Llama31_70B_MatchesPublishedParameterCount() =>
        Assert.Equal(70_553_706_496L, LlamaTensorNames.ForCheckpoint(Llama31(8192, 28672, 80, 64)).Sum(s => s.ElementCount));

    [Fact]
    public void ForCheckpoint_SwiftKv8B_AddsNormAndSixteenLayersOfQkv()
    {
        // Llama-3.1-SwiftKV-8B-Instruct: l = 16 of 32, g = 1; its model card lists 8.43B parameters.
        var config = Llama31(4096, 14336, 32, 32) with { ModelType = "llama_swiftkv", SwiftKv = true, NumKeyValueLayers = 16 };
        long qkv = 4096L * 4096 + 2 * 1024L * 4096;
        Assert.Equal(8_030_261_248L + 4096 + 16 * qkv, LlamaTensorNames.ForCheckpoint(config).Sum(s => s.ElementCount));
        // Running it with SwiftKV on swaps the later layers' q/k/v for the _swiftkv ones: only norm_swiftkv is extra.
        Assert.Equal(8_030_261_248L + 4096, LlamaTensorNames.ForModel(config, swiftKvEnabled: true).Sum(s => s.ElementCount));
    }

    [Fact]
    public void ForModel_TinyAcrossKv_ListsSwiftKvTensorsOfLeadersOnly()
    {
        var names = LlamaTensorNames.ForModel(TinyModels.Config(groupSize: 2), swiftKvEnabled: true).Select(s => s.Name).ToHashSet();
        string[] expected =
        [
            "model.norm_swiftkv.weight",
            "model.layers.2.self_attn.q_proj_swiftkv.weight", "model.layers.2.self_attn.k_proj_swiftkv.weight", "model.layers.2.self_attn.v_proj_swiftkv.weight",
            "model.layers.3.self_attn.q_proj_swiftkv.weight",
        ];
        Assert.Equal(expected.Order(), names.Where(n => n.Contains("swiftkv")).Order());
        Assert.Contains("model.layers.1.self_attn.k_proj.weight", names);
        Assert.DoesNotContain("model.layers.2.self_attn.q_proj.weight", names);
        Assert.DoesNotContain("model.layers.3.self_attn.k_proj.weight", names);
        Assert.Equal([24L, 16L], LlamaTensorNames.ForModel(TinyModels.Config(), true).Single(s => s.Name == "model.layers.0.mlp.gate_proj.weight").Shape);
        Assert.Equal([8L, 16L], LlamaTensorNames.ForModel(TinyModels.Config(), true).Single(s => s.Name == "model.layers.2.self_attn.k_proj_swiftkv.weight").Shape);
    }

    [Fact]
    public void ForModel_TiedAndBiased_DropsLmHeadAndAddsBiases()
    {
        var names = LlamaTensorNames.ForModel(TinyModels.Config(swiftKv: false, tied: true, bias: true), false).Select(s => s.Name).ToList();
        Assert.DoesNotContain("lm_head.weight", names);
        Assert.Contains("model.layers.0.self_attn.q_proj.bias", names);
        Assert.Contains("model.layers.0.self_attn.o_proj.bias", names);
        Assert.Equal(names.Count, names.Distinct().Count());
    }

    [Fact]
    public void ForModel_SwiftKvOnPlainLlama_Throws() =>
        Assert.Throws<InvalidModelException>(() => LlamaTensorNames.ForModel(TinyModels.Config(swiftKv: false), swiftKvEnabled: true));
}
