// ModelMaker: byte-for-byte reproducible output (independent of thread count and of how the writer blocks a
// tensor), value statistics of each tensor role, a complete checkpoint that loads in both SwiftKV modes, and the
// SplitMix64 stream pinned to the published reference vector.
using System.Security.Cryptography;
using System.Text.Json;
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Model.Tests.Checkpoint;

public sealed class ModelMakerTests : IDisposable
{
    readonly TempDirectory dir = new();

    public void Dispose() => dir.Dispose();

    /// <summary>The tiny preset with a 4096-token vocabulary: embeddings span several random chunks, yet writing takes milliseconds.</summary>
    static LlamaConfig Small(bool swiftKv = false) => ModelPresets.Get("tiny") with
    {
        VocabSize = 4096,
        ModelType = swiftKv ? "llama_swiftkv" : "llama",
        SwiftKv = swiftKv,
        NumKeyValueLayers = swiftKv ? 2 : 0,
        KeyValueGroupSize = swiftKv ? 2 : 1,
    };

    string Make(string name, LlamaConfig config, ModelMakerOptions options)
    {
        string path = dir.File(name);
        ModelMaker.Write(path, config, options);
        return path;
    }

    static Dictionary<string, byte[]> Files(string directory) =>
        Directory.GetFiles(directory).ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes);

    [Fact]
    public void Write_SameSeedTwice_GivesIdenticalFiles()
    {
        var options = new ModelMakerOptions { Seed = 42 };
        var a = Files(Make("a", Small(swiftKv: true), options));
        var b = Files(Make("b", Small(swiftKv: true), options));
        Assert.Equal(["config.json", "generation_config.json", "model.safetensors"], a.Keys.Order());
        foreach (var (name, bytes) in a) Assert.Equal(bytes, b[name]);
    }

    [Fact]
    public void Write_PinnedCase_KeepsItsBytes()
    {
        // A regression pin, not a reference: the engine's parity fixtures (tests/fixtures/parity) were made from
        // ModelMaker output and check it by SHA-256, so changing the generator, the value roles or the file layout
        // invalidates them. If this fails on purpose, regenerate those fixtures too.
        var config = Small(swiftKv: true) with { AttentionBias = true };
        var files = Files(Make("pin", config, new ModelMakerOptions { Seed = 11, Dtype = TensorDtype.F32, InitStd = 0.15f }));
        Assert.Equal("6711cfd881394f58ccec13142b5c02356a5496cd3216921319ad2fea8ba67149", Convert.ToHexStringLower(SHA256.HashData(files["model.safetensors"])));
    }

    [Fact]
    public void Write_DifferentSeed_GivesDifferentWeights()
    {
        var a = Files(Make("a", Small(), new ModelMakerOptions { Seed = 1 }));
        var b = Files(Make("b", Small(), new ModelMakerOptions { Seed = 2 }));
        Assert.Equal(a["config.json"], b["config.json"]);
        Assert.NotEqual(a["model.safetensors"], b["model.safetensors"]);
    }

    [Fact]
    public void Write_OneThreadOrSeveral_GivesIdenticalFiles()
    {
        var one = Files(Make("one", Small(), new ModelMakerOptions { Seed = 7, MaxDegreeOfParallelism = 1, Dtype = TensorDtype.F32 }));
        var three = Files(Make("three", Small(), new ModelMakerOptions { Seed = 7, MaxDegreeOfParallelism = 3, Dtype = TensorDtype.F32 }));
        Assert.Equal(one["model.safetensors"], three["model.safetensors"]);
    }

    [Fact]
    public void Filler_AnyRangesAtOddOffsets_MatchWholeTensor()
    {
        var spec = new TensorSpec("model.embed_tokens.weight", [3, 100_000], "(vocab_size, hidden_size)");
        var fill = ModelMaker.Filler(spec, new ModelMakerOptions { Seed = 3 });
        var whole = new float[300_000];
        fill(0, whole);

        var pieces = new float[300_000];
        int[] cuts = [0, 1, 2, 3, 1000, 65535, 65536, 65537, 131073, 299_999, 300_000];
        for (int i = 0; i + 1 < cuts.Length; i++)
            fill(cuts[i], pieces.AsSpan(cuts[i], cuts[i + 1] - cuts[i]));
        Assert.Equal(whole, pieces);
    }

    [Fact]
    public void Mix_SplitMix64_MatchesReferenceVector()
    {
        // Vigna's splitmix64.c seeded with 1234567: next() adds γ to the state, then mixes.
        ulong state = 1234567;
        ulong[] expected = [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431, 16408922859458223821];
        foreach (ulong e in expected)
        {
            state += 0x9E3779B97F4A7C15;
            Assert.Equal(e, WeightRandom.Mix(state));
        }
    }

    [Fact]
    public void Filler_Matrix_IsUniformWithRequestedStd()
    {
        const float std = 0.02f;
        var spec = new TensorSpec("model.layers.0.mlp.gate_proj.weight", [1024, 1024], "(intermediate_size, hidden_size)");
        var values = new float[1024 * 1024];
        ModelMaker.Filler(spec, new ModelMakerOptions { InitStd = std })(0, values);

        double mean = values.Average(v => (double)v);
        double sd = Math.Sqrt(values.Average(v => (v - mean) * (v - mean)));
        float a = std * MathF.Sqrt(3);
        Assert.InRange(sd, std * 0.95, std * 1.05);
        Assert.InRange(mean, -std * 0.01, std * 0.01);
        Assert.InRange(values.Min(), -a, -a * 0.999f);
        Assert.InRange(values.Max(), a * 0.999f, a);
        // Uniform: each tenth of [-a, a] holds a tenth of the values.
        var deciles = values.GroupBy(v => Math.Clamp((int)((v + a) / (2 * a) * 10), 0, 9)).Select(g => g.Count());
        Assert.All(deciles, n => Assert.InRange(n, values.Length / 10 * 0.98, values.Length / 10 * 1.02));
    }

    [Theory]
    [InlineData("model.layers.3.input_layernorm.weight", 0.8f, 1.2f)]
    [InlineData("model.norm_swiftkv.weight", 0.8f, 1.2f)]
    [InlineData("model.layers.3.self_attn.k_proj.bias", -0.02f, 0.02f)]
    public void Filler_NormsAndBiases_StayInTheirRanges(string name, float low, float high)
    {
        var values = new float[200_000];
        ModelMaker.Filler(new TensorSpec(name, [values.Length], "(test)"), new ModelMakerOptions { InitStd = 0.02f })(0, values);
        Assert.All(values, v => Assert.InRange(v, low, high));
        float width = high - low;
        Assert.InRange(values.Min(), low, low + width * 0.001f);
        Assert.InRange(values.Max(), high - width * 0.001f, high);
    }

    [Fact]
    public void Write_TinySwiftKvCheckpoint_LoadsInBothModesWithPlausibleValues()
    {
        var config = ModelPresets.Get("tiny") with { ModelType = "llama_swiftkv", SwiftKv = true, NumKeyValueLayers = 2, KeyValueGroupSize = 2, AttentionBias = true };
        const float std = 0.05f;
        string path = Make("tiny", config, new ModelMakerOptions { Seed = 9, InitStd = std, MaxShardBytes = 20_000_000 });
        Assert.True(File.Exists(Path.Combine(path, SafetensorsCheckpoint.IndexFileName)));

        var on = LlamaCheckpointLoader.Load(path, swiftKv: true);
        var off = LlamaCheckpointLoader.Load(path, swiftKv: false);
        Assert.True(on.SwiftKvEnabled);
        Assert.NotNull(on.NormSwiftKv);
        Assert.NotNull(on.Layers[3].QProjSwiftKv);
        Assert.Null(on.Layers[3].KProjSwiftKv);
        Assert.NotNull(off.Layers[3].QProj);
        Assert.Equal(on.EmbedTokens, off.EmbedTokens);

        // bf16 rounding moves the std by far less than the 5% allowed.
        double sd = Math.Sqrt(on.EmbedTokens.Average(v => (double)v * v));
        Assert.InRange(sd, std * 0.95, std * 1.05);
        float[][] norms = [on.Norm, on.NormSwiftKv!, on.Layers[0].InputLayernorm, on.Layers[3].PostAttentionLayernorm];
        foreach (var norm in norms)
        {
            // 1 + U(-0.2, 0.2) stored as bf16: rounding may move a value half a bf16 step (2^-8 near 1.2) past the ends.
            Assert.All(norm, v => Assert.InRange(v, 0.8f - 1f / 512, 1.2f + 1f / 256));
            Assert.True(norm.Distinct().Count() > norm.Length / 2, "norm weights should vary");
        }
        Assert.All(on.Layers[0].QBias!, v => Assert.InRange(v, -std, std));
        Assert.NotEqual(on.Layers[0].QProj, on.Layers[1].QProj);
        Assert.NotEqual(off.Layers[2].QProj, on.Layers[2].QProjSwiftKv);
    }

    [Fact]
    public void Write_Options_SetDtypeAndGenerationConfig()
    {
        var config = Small();
        string path = Make("f16", config, new ModelMakerOptions { Dtype = TensorDtype.F16 });
        Assert.Equal("float16", LlamaConfig.Load(path).TorchDtype);
        using (var file = SafetensorsFile.Open(Path.Combine(path, SafetensorsCheckpoint.SingleFileName)))
            Assert.All(file.Tensors, t => Assert.Equal(TensorDtype.F16, t.Dtype));

        using var gen = JsonDocument.Parse(File.ReadAllText(Path.Combine(path, "generation_config.json")));
        Assert.Equal(128000, gen.RootElement.GetProperty("bos_token_id").GetInt32());
        Assert.Equal([128001, 128008, 128009], gen.RootElement.GetProperty("eos_token_id").EnumerateArray().Select(e => e.GetInt32()));
        Assert.False(gen.RootElement.GetProperty("do_sample").GetBoolean());
    }

    [Fact]
    public void Write_InvalidOptions_ThrowNamingTheOption()
    {
        var e = Assert.Throws<ArgumentException>(() => ModelMaker.Write(dir.Path, Small(), new ModelMakerOptions { InitStd = 0 }, cancellationToken: TestContext.Current.CancellationToken));
        Assert.Contains("InitStd", e.Message);
        e = Assert.Throws<ArgumentException>(() => ModelMaker.Write(dir.Path, Small(), new ModelMakerOptions { Dtype = TensorDtype.I8 }, cancellationToken: TestContext.Current.CancellationToken));
        Assert.Contains("Dtype", e.Message);
    }
}
