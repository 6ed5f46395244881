// Parity with independent implementations: logits for every position and greedy continuations computed on the
// GPU machine by Hugging Face transformers (plain Llama) and tests/reference/swiftkv_reference.py (SwiftKV), for
// small seeded checkpoints that ModelMaker rebuilds here byte for byte (checked by SHA-256).
using Xunit;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Generation;
using SwiftKV.Engine.Sampling;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;

namespace SwiftKV.Engine.Tests;

public sealed class ParityTests
{
    static readonly string FixtureDir = Path.Combine(AppContext.BaseDirectory, "fixtures", "parity");

    public static TheoryData<string> Cases()
    {
        var data = new TheoryData<string>();
        if (!Directory.Exists(FixtureDir)) return data;
        foreach (var f in Directory.GetFiles(FixtureDir, "*.json").Order())
            if (Path.GetFileName(f) != "tokenizer.json") data.Add(Path.GetFileNameWithoutExtension(f));
        return data;
    }

    [Fact]
    public void Fixtures_ArePresent()
    {
        // Guards the theory below against passing vacuously when the fixtures are missing from the build.
        var names = Cases().Select(c => c.Data).ToList();
        Assert.Contains(names, n => n.StartsWith("base_", StringComparison.Ordinal));
        Assert.Contains("swiftkv_50_g4", names);
        Assert.True(names.Count >= 8, $"expected 8 parity fixtures, found {names.Count}");
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void CpuLogits_MatchReference(string name)
    {
        var fixture = JsonNode.Parse(File.ReadAllText(Path.Combine(FixtureDir, name + ".json")))!;
        string dir = Path.Combine(Path.GetTempPath(), "swiftkv-parity-" + name + "-" + Guid.NewGuid().ToString("N"));
        try
        {
            var config = LlamaConfig.Parse(fixture["config"]!.ToJsonString());
            ModelMaker.Write(dir, config, FixtureFiles.MakerOptions(fixture["make_model"]!.AsArray().Select(x => x!.GetValue<string>()).ToList()), cancellationToken: TestContext.Current.CancellationToken);
            Assert.Equal(fixture["checkpoint_sha256"]!.GetValue<string>(), FixtureFiles.CheckpointDigest(dir));

            int[] ids = fixture["token_ids"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray();
            int vocab = config.VocabSize;
            float[] expected = FixtureFiles.ReadFloats(Path.Combine(FixtureDir, name + ".logits.f32"));
            Assert.Equal(ids.Length * vocab, expected.Length);

            int[] greedy = fixture["greedy_tokens"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray();
            using var backend = new CpuBackend(LlamaCheckpointLoader.Load(dir, config.SwiftKv));
            AssertMatches(backend, ids, expected, greedy, vocab, name);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// The reference's logits at every position (1e-4), its last row from a real prefill (SwiftKV: only the last token
    /// runs the later layers), and its greedy continuation.
    /// </summary>
    internal static void AssertMatches(CpuBackend backend, int[] ids, float[] expected, int[] greedy, int vocab, string name)
    {
        using (var cache = backend.CreateCache(ids.Length))
        {
            float[] actual = backend.Forward(cache, ids, LogitsSelection.AllTokens);
            for (int p = 0; p < ids.Length; p++)
                Approx.RowRelative(expected.AsSpan(p * vocab, vocab), actual.AsSpan(p * vocab, vocab), 1e-4, $"{name} position {p}");
        }
        using (var cache = backend.CreateCache(ids.Length))
        {
            float[] last = backend.Forward(cache, ids, LogitsSelection.LastToken);
            Approx.RowRelative(expected.AsSpan((ids.Length - 1) * vocab, vocab), last, 1e-4, $"{name} prefill last token");
        }
        using (var cache = backend.CreateCache(ids.Length + greedy.Length + 1))
        {
            var produced = Generator.Generate(backend, cache, ids, SamplingParams.Greedy, greedy.Length, new HashSet<int>(),
                new GenerationStats(), TestContext.Current.CancellationToken).ToArray();
            Assert.Equal(greedy, produced);
        }
    }
}
