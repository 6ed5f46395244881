// The paper's construction, checked through real files: a Llama checkpoint transformed into SwiftKV
// (SwiftKvConverter) and run with SwiftKV OFF is exactly the model it came from (the teacher of distillation),
// and with SwiftKV ON at l = L-1 it is exactly the base model too (layer l's K/V come from its own input norm).
using Xunit;
using SwiftKV.Engine.Cpu;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;

namespace SwiftKV.Engine.Tests;

public sealed class TransformInvariantTests : IDisposable
{
    readonly string _root = Path.Combine(Path.GetTempPath(), "swiftkv-transform-" + Guid.NewGuid().ToString("N"));

    static readonly int[] Tokens = [5, 17, 99, 3, 250, 42, 7, 7, 180, 64, 2, 311];

    float[] Logits(string dir, bool swiftKv)
    {
        using var backend = new CpuBackend(LlamaCheckpointLoader.Load(dir, swiftKv));
        using var cache = backend.CreateCache(Tokens.Length);
        return backend.Forward(cache, Tokens, LogitsSelection.AllTokens);
    }

    string MakeBase(bool bias)
    {
        string dir = Path.Combine(_root, "base" + bias);
        var config = ModelPresets.Get("tiny") with { VocabSize = 320, NumHiddenLayers = 4, AttentionBias = bias };
        ModelMaker.Write(dir, config.Validate(), new ModelMakerOptions { Seed = 5, Dtype = TensorDtype.F32, InitStd = 0.15f });
        return dir;
    }

    [Theory]
    [InlineData(2, 1, false)]
    [InlineData(2, 2, true)]
    [InlineData(1, 3, false)]
    public void Transformed_WithSwiftKvOff_EqualsBase(int l, int g, bool bias)
    {
        string baseDir = MakeBase(bias), swiftDir = Path.Combine(_root, $"skv{l}{g}{bias}");
        SwiftKvConverter.Convert(baseDir, swiftDir, l, g, cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(LlamaConfig.Load(swiftDir).SwiftKv);
        Assert.Equal(Logits(baseDir, false), Logits(swiftDir, false));
    }

    [Fact]
    public void Transform_WritesTheDtypeTheTensorsAreStoredIn_NotConfigs()
    {
        // fp32 weights under a config that says bfloat16 (or says nothing, which reads as bfloat16) stay fp32.
        string baseDir = MakeBase(bias: false), swiftDir = Path.Combine(_root, "skv-dtype");
        string configPath = Path.Combine(baseDir, "config.json");
        File.WriteAllText(configPath, File.ReadAllText(configPath).Replace("\"float32\"", "\"bfloat16\"", StringComparison.Ordinal));
        SwiftKvConverter.Convert(baseDir, swiftDir, 2, 1, cancellationToken: TestContext.Current.CancellationToken);
        using var checkpoint = SafetensorsCheckpoint.Open(swiftDir);
        Assert.True(checkpoint.TryGet(LlamaTensorNames.EmbedTokens, out var info, out _));
        Assert.Equal(TensorDtype.F32, info.Dtype);
        Assert.Equal(Logits(baseDir, false), Logits(swiftDir, false));
    }

    [Fact]
    public void Transformed_LastLayerOnly_WithSwiftKvOn_EqualsBase()
    {
        string baseDir = MakeBase(bias: true), swiftDir = Path.Combine(_root, "skv-last");
        SwiftKvConverter.Convert(baseDir, swiftDir, numKeyValueLayers: 3, keyValueGroupSize: 1, cancellationToken: TestContext.Current.CancellationToken);
        float[] expected = Logits(baseDir, false), actual = Logits(swiftDir, true);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-5f * (1 + Math.Abs(expected[i])), $"logit {i}: {expected[i]} vs {actual[i]}");
    }

    [Fact]
    public void Transformed_HalfLayers_WithSwiftKvOn_DiffersFromBase()
    {
        // Undistilled SwiftKV at 50% is a different model: the test guards against a path that ignores SwiftKV.
        string baseDir = MakeBase(bias: false), swiftDir = Path.Combine(_root, "skv-half");
        SwiftKvConverter.Convert(baseDir, swiftDir, numKeyValueLayers: 2, keyValueGroupSize: 1, cancellationToken: TestContext.Current.CancellationToken);
        float[] a = Logits(baseDir, false), b = Logits(swiftDir, true);
        Assert.True(a.Zip(b).Max(p => Math.Abs(p.First - p.Second)) > 1e-3f);
    }

    public void Dispose()
    {
        if (Directory.Exists(_root)) Directory.Delete(_root, recursive: true);
    }
}
