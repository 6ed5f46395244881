// CpuBackend against the independent double-precision ReferenceModel, plus invariants that need no reference:
// incremental decode == one full pass, SwiftKV LastToken == AllTokens last row, the paper's transform construction,
// AcrossKV memory, and input validation.
using SwiftKV.Engine.Cpu;
using SwiftKV.Model;
using Xunit;

namespace SwiftKV.Engine.Tests;

public class CpuBackendTests
{
    const double Tol = 2e-4;

    public static TheoryData<string> Specs => new(SpecTable.Keys);

    static readonly Dictionary<string, ModelSpec> SpecTable = new()
    {
        ["base gqa2"] = new(),
        ["base mha (gqa1)"] = new(Heads: 4, KvHeads: 4, Seed: 2),
        ["base gqa4 rope-llama3"] = new(Heads: 8, KvHeads: 2, HeadDim: 8, Hidden: 64, RopeScaling: true, Seed: 3),
        ["base bias tied"] = new(Bias: true, Tied: true, Vocab: 150, Seed: 4),
        ["swiftkv 25% (l=3 of 4)"] = new(SwiftKvLayers: 3, Seed: 5),
        ["swiftkv 50%"] = new(SwiftKvLayers: 2, Seed: 6, Vocab: 300),
        ["swiftkv 50% acrosskv g=2"] = new(SwiftKvLayers: 2, GroupSize: 2, Seed: 7, RopeScaling: true),
        ["swiftkv 50% acrosskv g=4 L=8"] = new(Layers: 6, SwiftKvLayers: 2, GroupSize: 4, Seed: 8, Hidden: 32, HeadDim: 16, Heads: 4, KvHeads: 1),
        ["swiftkv bias tied gqa4"] = new(Heads: 8, KvHeads: 2, HeadDim: 8, Hidden: 64, Bias: true, Tied: true, SwiftKvLayers: 1, Layers: 3, Seed: 9),
    };

    [Theory]
    [MemberData(nameof(Specs))]
    public void Forward_AllTokensMatchesReference(string name)
    {
        var w = TestModels.Build(SpecTable[name]);
        var tokens = TestModels.RandomTokens(11, w.Config.VocabSize, 42);
        var expected = ReferenceModel.Forward(w, tokens);
        using var backend = new CpuBackend(w);
        using var cache = backend.CreateCache(32);

        var logits = backend.Forward(cache, tokens, LogitsSelection.AllTokens);

        Approx.Rows(logits, expected, Tol, name);
        Assert.Equal(tokens.Length, cache.Length);
    }

    [Theory]
    [MemberData(nameof(Specs))]
    public void Forward_PrefillThenDecodeMatchesReference(string name)
    {
        var w = TestModels.Build(SpecTable[name]);
        var tokens = TestModels.RandomTokens(10, w.Config.VocabSize, 43);
        var expected = ReferenceModel.Forward(w, tokens);
        using var backend = new CpuBackend(w);
        using var cache = backend.CreateCache(16);

        var prefill = backend.Forward(cache, tokens.AsSpan(0, 6), LogitsSelection.LastToken);
        Approx.Row(prefill, expected[5], Tol, $"{name} prefill");
        for (int t = 6; t < tokens.Length; t++)
            Approx.Row(backend.Forward(cache, tokens.AsSpan(t, 1), LogitsSelection.LastToken), expected[t], Tol, $"{name} decode {t}");
    }

    [Theory]
    [MemberData(nameof(Specs))]
    public void Forward_TokenByTokenEqualsFullPass(string name)
    {
        var w = TestModels.Build(SpecTable[name]);
        var tokens = TestModels.RandomTokens(9, w.Config.VocabSize, 44);
        int vocab = w.Config.VocabSize;
        using var backend = new CpuBackend(w);
        using var full = backend.CreateCache(9);
        using var steps = backend.CreateCache(9);

        var all = backend.Forward(full, tokens, LogitsSelection.AllTokens);
        for (int t = 0; t < tokens.Length; t++)
        {
            var row = backend.Forward(steps, tokens.AsSpan(t, 1), LogitsSelection.AllTokens);
            Approx.Same(row, all.AsSpan(t * vocab, vocab).ToArray(), 1e-5, $"{name} token {t}");
        }
    }

    [Theory]
    [MemberData(nameof(Specs))]
    public void Forward_LastTokenEqualsAllTokensLastRow(string name)
    {
        var w = TestModels.Build(SpecTable[name]);
        var tokens = TestModels.RandomTokens(12, w.Config.VocabSize, 45);
        int vocab = w.Config.VocabSize;
        using var backend = new CpuBackend(w);
        using var a = backend.CreateCache(12);
        using var b = backend.CreateCache(12);

        var last = backend.Forward(a, tokens, LogitsSelection.LastToken);
        var all = backend.Forward(b, tokens, LogitsSelection.AllTokens);

        Assert.Equal(vocab, last.Length);
        Approx.Same(last, all.AsSpan((tokens.Length - 1) * vocab, vocab).ToArray(), 1e-5, name);
        Assert.Equal(tokens.Length, a.Length);
    }

    // Big enough that Linear and Attention take their Parallel.For paths (the small specs run serially).
    [Fact]
    public void Forward_ParallelKernelsMatchReference()
    {
        var w = TestModels.Build(new ModelSpec(Hidden: 128, Heads: 8, KvHeads: 2, HeadDim: 16, Intermediate: 256, Layers: 3,
            SwiftKvLayers: 1, GroupSize: 2, Vocab: 211, RopeScaling: true, Seed: 10));
        var tokens = TestModels.RandomTokens(40, w.Config.VocabSize, 50);
        var expected = ReferenceModel.Forward(w, tokens);
        using var backend = new CpuBackend(w);
        using var cache = backend.CreateCache(48);

        Approx.Rows(backend.Forward(cache, tokens.AsSpan(0, 39), LogitsSelection.AllTokens), expected[..39], Tol, "parallel prefill");
        Approx.Row(backend.Forward(cache, tokens.AsSpan(39), LogitsSelection.LastToken), expected[39], Tol, "parallel decode");
    }

    [Fact]
    public void Forward_SwiftKvCheckpointWithSwiftKvOffIsTheOriginalLlama()
    {
        var full = TestModels.Checkpoint(new ModelSpec(SwiftKvLayers: 2, GroupSize: 2, Seed: 11));
        var off = TestModels.View(full, swiftKvEnabled: false);
        var tokens = TestModels.RandomTokens(8, 97, 46);
        using var backend = new CpuBackend(off);
        using var cache = backend.CreateCache(8);

        Assert.False(backend.SwiftKvEnabled);
        Approx.Rows(backend.Forward(cache, tokens, LogitsSelection.AllTokens), ReferenceModel.Forward(off, tokens), Tol, "swiftkv off");
        Assert.Equal(backend.CreateCache(8).KvBytes, cache.KvBytes);
        Assert.Equal(2L * 4 * 8 * off.Config.KeyValueDim * sizeof(float), cache.KvBytes);
    }

    // The transform (norm_swiftkv = input_layernorm_l, q_swiftkv = q, k/v_swiftkv = k/v) reproduces layer l exactly:
    // its K/V come from input_layernorm_l(x_l), as in the base model. When l = L-1 that is the whole SwiftKV part, so
    // the logits are identical bit for bit. Layers after l would differ (their K/V now come from x_l, not x_j:
    // that gap is what distillation closes), so for l < L-1 the test checks the caches of layers 0..l instead.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Forward_TransformedModelWithOneSwiftKvLayerEqualsBaseExactly(bool bias)
    {
        var llama = TestModels.Build(new ModelSpec(Layers: 4, Bias: bias, RopeScaling: true, Seed: 12));
        var swift = TestModels.Transform(llama, numKeyValueLayers: 3, groupSize: 1);
        var tokens = TestModels.RandomTokens(10, 97, 47);
        using var baseBackend = new CpuBackend(llama);
        using var swiftBackend = new CpuBackend(swift);
        using var c1 = baseBackend.CreateCache(12);
        using var c2 = swiftBackend.CreateCache(12);

        Assert.Equal(baseBackend.Forward(c1, tokens, LogitsSelection.LastToken), swiftBackend.Forward(c2, tokens, LogitsSelection.LastToken));
        Assert.Equal(baseBackend.Forward(c1, [5], LogitsSelection.LastToken), swiftBackend.Forward(c2, [5], LogitsSelection.LastToken));
    }

    [Fact]
    public void Forward_TransformedModelKeepsCachesUpToLayerL()
    {
        var llama = TestModels.Build(new ModelSpec(Layers: 6, Seed: 13));
        var swift = TestModels.Transform(llama, numKeyValueLayers: 2, groupSize: 1);
        var tokens = TestModels.RandomTokens(9, 97, 48);
        using var baseBackend = new CpuBackend(llama);
        using var swiftBackend = new CpuBackend(swift);
        var c1 = (CpuSequenceCache)baseBackend.CreateCache(9);
        var c2 = (CpuSequenceCache)swiftBackend.CreateCache(9);

        var l1 = baseBackend.Forward(c1, tokens, LogitsSelection.LastToken);
        var l2 = swiftBackend.Forward(c2, tokens, LogitsSelection.LastToken);

        for (int layer = 0; layer <= 2; layer++)
        {
            Assert.Equal(c1.Keys(layer), c2.Keys(layer));
            Assert.Equal(c1.Values(layer), c2.Values(layer));
        }
        Assert.NotEqual(c1.Keys(3), c2.Keys(3));
        Assert.NotEqual(l1, l2);
    }

    [Fact]
    public void Forward_TransformedModelWithAcrossKvDiffersFromBase()
    {
        var llama = TestModels.Build(new ModelSpec(Layers: 4, Seed: 14));
        var swift = TestModels.Transform(llama, numKeyValueLayers: 2, groupSize: 2);
        var tokens = TestModels.RandomTokens(8, 97, 49);
        using var b1 = new CpuBackend(llama);
        using var b2 = new CpuBackend(swift);

        var baseLogits = b1.Forward(b1.CreateCache(8), tokens, LogitsSelection.LastToken);
        var swiftLogits = b2.Forward(b2.CreateCache(8), tokens, LogitsSelection.LastToken);

        Assert.True(baseLogits.Zip(swiftLogits).Max(p => Math.Abs(p.First - p.Second)) > 1e-3);
        // ...and the transformed model is still what the reference computes for those weights.
        Approx.Row(swiftLogits, ReferenceModel.Forward(swift, tokens)[^1], Tol, "transformed g=2");
    }

    [Fact]
    public void CreateCache_AcrossKvKvBytesIsFiveEighthsOfBase()
    {
        var full = TestModels.Checkpoint(new ModelSpec(Layers: 8, SwiftKvLayers: 4, GroupSize: 4, Hidden: 32, Intermediate: 32));
        using var on = new CpuBackend(TestModels.View(full, true));
        using var off = new CpuBackend(TestModels.View(full, false));

        using var cOn = on.CreateCache(64);
        using var cOff = off.CreateCache(64);

        Assert.Equal(2L * 8 * 64 * full.Config.KeyValueDim * sizeof(float), cOff.KvBytes);
        Assert.Equal(0.625, (double)cOn.KvBytes / cOff.KvBytes);
        Assert.Equal(5, ((CpuSequenceCache)cOn).NumCaches);
    }

    [Fact]
    public void Forward_RejectsBadSteps()
    {
        using var backend = new CpuBackend(TestModels.Build(new ModelSpec()));
        using var cache = backend.CreateCache(4);

        var empty = Assert.Throws<ArgumentException>(() => backend.Forward(cache, [], LogitsSelection.LastToken));
        Assert.Contains("at least one token", empty.Message);
        var vocab = Assert.Throws<ArgumentException>(() => backend.Forward(cache, [1, 97], LogitsSelection.LastToken));
        Assert.Contains("97", vocab.Message);
        Assert.Contains("[0, 97)", vocab.Message);
        Assert.Throws<ArgumentException>(() => backend.Forward(cache, [-1], LogitsSelection.LastToken));
        backend.Forward(cache, [1, 2, 3], LogitsSelection.LastToken);
        var full = Assert.Throws<ArgumentException>(() => backend.Forward(cache, [1, 2], LogitsSelection.LastToken));
        Assert.Contains("holds 3 of 4", full.Message);
        Assert.Equal(3, cache.Length);
    }

    /// <summary>
    /// An AllTokens step returns rows x vocab floats: past the largest .NET array (Llama 3's vocabulary, 16,744 rows)
    /// it is refused before anything runs, naming the limit, and the cache stays as it was.
    /// </summary>
    [Fact]
    public void Forward_RejectsAllTokensLogitsLargerThanAnArray() =>
        BackendScenarios.RejectsAllTokensLogitsLargerThanAnArray(w => new CpuBackend(w), seed: 1);

    [Fact]
    public void Forward_RejectsForeignAndDisposedCaches()
    {
        var w = TestModels.Build(new ModelSpec());
        using var a = new CpuBackend(w);
        using var b = new CpuBackend(w);
        var foreign = b.CreateCache(4);
        var ex = Assert.Throws<ArgumentException>(() => a.Forward(foreign, [1], LogitsSelection.LastToken));
        Assert.Contains("not created by this backend", ex.Message);

        var mine = a.CreateCache(4);
        mine.Dispose();
        Assert.Throws<ObjectDisposedException>(() => a.Forward(mine, [1], LogitsSelection.LastToken));
    }

    [Fact]
    public void CreateCache_RejectsCapacityBeyondContext()
    {
        using var backend = new CpuBackend(TestModels.Build(new ModelSpec(MaxPositions: 64)));
        Assert.Throws<ArgumentOutOfRangeException>(() => backend.CreateCache(65));
        Assert.Throws<ArgumentOutOfRangeException>(() => backend.CreateCache(0));
    }

    [Fact]
    public void Constructor_NamesMissingTensor()
    {
        var full = TestModels.Checkpoint(new ModelSpec(SwiftKvLayers: 2));
        var on = TestModels.View(full, true);
        var broken = new LlamaWeights
        {
            Config = on.Config, SwiftKvEnabled = true, EmbedTokens = on.EmbedTokens, Norm = on.Norm, LmHead = on.LmHead,
            NormSwiftKv = on.NormSwiftKv,
            Layers = on.Layers.Select((l, i) => i != 3 ? l : new LlamaLayerWeights
            {
                InputLayernorm = l.InputLayernorm, OProj = l.OProj, PostAttentionLayernorm = l.PostAttentionLayernorm,
                GateProj = l.GateProj, UpProj = l.UpProj, DownProj = l.DownProj,
            }).ToList(),
        };
        var ex = Assert.Throws<InvalidModelException>(() => new CpuBackend(broken));
        Assert.Contains("model.layers.3.self_attn.q_proj_swiftkv.weight", ex.Message);
    }
}
