// One case of tests/fixtures/distill (made by tests/reference/make_distill_fixtures.py with PyTorch autograd in float64
// over the independent swiftkv_reference.py): the parity checkpoint rebuilt byte for byte, the batch, and the expected
// loss, gradients and tensors after Adam. Shared by the CPU trainer's tests and the GPU trainer's (SwiftKV.Cuda.Tests).
using System.Text.Json.Nodes;
using Xunit;
using SwiftKV.Engine.Distillation;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;

namespace SwiftKV.Engine.Tests.Distillation;

public sealed class DistillationFixture : IDisposable
{
    public static readonly string FixtureDir = Path.Combine(AppContext.BaseDirectory, "fixtures", "distill");

    public static TheoryData<string> Cases()
    {
        var data = new TheoryData<string>();
        if (Directory.Exists(FixtureDir))
            foreach (var f in Directory.GetFiles(FixtureDir, "*.json").Order()) data.Add(Path.GetFileNameWithoutExtension(f));
        return data;
    }

    public required string Name { get; init; }
    public required string CheckpointDir { get; init; }
    public required LlamaConfig Config { get; init; }
    public required IReadOnlyList<DistillationSequence> Batch { get; init; }
    public required IReadOnlyList<string> TensorNames { get; init; }
    public required float Temperature { get; init; }
    public required float HiddenLossWeight { get; init; }
    public required double LearningRate { get; init; }
    public required int Steps { get; init; }
    /// <summary>The first batch's mean loss per scored position.</summary>
    public required double Loss { get; init; }
    /// <summary>Every trainable tensor's gradient, then its value after <see cref="Steps"/> Adam steps, in SwiftKvTensors.Named order.</summary>
    public float[] Gradients => FixtureFiles.ReadFloats(Path.Combine(FixtureDir, Name + ".grads.f32"));
    public float[] After => FixtureFiles.ReadFloats(Path.Combine(FixtureDir, Name + ".after.f32"));

    /// <summary>Rebuilds case <paramref name="name"/>'s checkpoint in a temporary folder (removed by Dispose).</summary>
    public static DistillationFixture Open(string name)
    {
        var fixture = JsonNode.Parse(File.ReadAllText(Path.Combine(FixtureDir, name + ".json")))!;
        string dir = Path.Combine(Path.GetTempPath(), "swiftkv-distill-parity-" + name + "-" + Guid.NewGuid().ToString("N"));
        var config = LlamaConfig.Parse(fixture["config"]!.ToJsonString());
        ModelMaker.Write(dir, config, FixtureFiles.MakerOptions(fixture["make_model"]!.AsArray().Select(x => x!.GetValue<string>()).ToList()));
        Assert.Equal(fixture["checkpoint_sha256"]!.GetValue<string>(), FixtureFiles.CheckpointDigest(dir));
        return new DistillationFixture
        {
            Name = name,
            CheckpointDir = dir,
            Config = config,
            Batch = fixture["sequences"]!.AsArray().Select(s => new DistillationSequence(
                s!["token_ids"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray(),
                s["loss_mask"]!.AsArray().Select(x => x!.GetValue<bool>()).ToArray())).ToList(),
            TensorNames = fixture["tensors"]!.AsArray().Select(t => t!["name"]!.GetValue<string>()).ToList(),
            Temperature = fixture["temperature"]!.GetValue<float>(),
            HiddenLossWeight = fixture["hidden_loss_weight"]!.GetValue<float>(),
            LearningRate = fixture["learning_rate"]!.GetValue<double>(),
            Steps = fixture["steps"]!.GetValue<int>(),
            Loss = fixture["loss"]!.GetValue<double>(),
        };
    }

    /// <summary>Teacher and student of the rebuilt checkpoint.</summary>
    public (LlamaWeights Teacher, LlamaWeights Student) Load()
    {
        using var checkpoint = SafetensorsCheckpoint.Open(CheckpointDir);
        return Distiller.LoadTeacherAndStudent(CheckpointDir, Config, checkpoint);
    }

    /// <summary>Each tensor within a relative L2 error of the reference's.</summary>
    public static void AssertTensors(float[] expected, SwiftKvTensors actual, double tolerance, string what, Action<string>? log = null)
    {
        int at = 0;
        double worst = 0;
        foreach (var (name, values) in actual.Named())
        {
            double diff = 0, norm = 0;
            for (int i = 0; i < values.Length; i++)
            {
                double e = expected[at + i];
                diff += (values[i] - e) * (values[i] - e);
                norm += e * e;
            }
            at += values.Length;
            double relative = Math.Sqrt(diff / Math.Max(norm, 1e-300));
            worst = Math.Max(worst, relative);
            Assert.True(Math.Sqrt(diff) <= tolerance * Math.Sqrt(norm) + 1e-9, $"{what} of {name}: relative error {relative:E2}");
        }
        Assert.Equal(expected.Length, at);
        log?.Invoke($"{what}: worst relative L2 error {worst:E2} (tolerance {tolerance:E0})");
    }

    public void Dispose()
    {
        if (Directory.Exists(CheckpointDir)) Directory.Delete(CheckpointDir, recursive: true);
    }
}
