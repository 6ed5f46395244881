// Small random models built in memory for the engine tests (no checkpoint files, no Model-project loader).
// A checkpoint here holds every tensor a SwiftKV checkpoint can hold (original q/k/v of all layers plus the
// *_swiftkv tensors); View() hands the backend only the tensors one mode is allowed to read, nulling the rest,
// so a backend that touches the wrong tensor fails loudly.
using SwiftKV.Model;

namespace SwiftKV.Engine.Tests;

/// <summary>Shape of a toy model. SwiftKvLayers = 0 means a plain Llama checkpoint.</summary>
public sealed record ModelSpec(
    int Hidden = 48, int Layers = 4, int Heads = 4, int KvHeads = 2, int HeadDim = 12, int Vocab = 97,
    int Intermediate = 80, bool RopeScaling = false, bool Bias = false, bool Tied = false,
    int SwiftKvLayers = 0, int GroupSize = 1, ulong Seed = 1, int MaxPositions = 256)
{
    public override string ToString() =>
        $"h{Hidden} L{Layers} q{Heads}/kv{KvHeads} d{HeadDim} V{Vocab}{(RopeScaling ? " rope-llama3" : "")}{(Bias ? " bias" : "")}{(Tied ? " tied" : "")}"
        + (SwiftKvLayers > 0 ? $" swiftkv l={SwiftKvLayers} g={GroupSize}" : "");

    public LlamaConfig Config() => new LlamaConfig
    {
        ModelType = SwiftKvLayers > 0 ? "llama_swiftkv" : "llama",
        HiddenSize = Hidden,
        IntermediateSize = Intermediate,
        NumHiddenLayers = Layers,
        NumAttentionHeads = Heads,
        NumKeyValueHeads = KvHeads,
        HeadDim = HeadDim,
        VocabSize = Vocab,
        MaxPositionEmbeddings = MaxPositions,
        RmsNormEps = 1e-5,
        RopeTheta = 10000,
        // With head_dim 12 and theta 1e4 the wavelengths are 6, 29, 135, 628, 2916, 13536: all three llama3 bands.
        RopeScaling = RopeScaling ? new Llama3RopeScaling(8, 1, 4, 512) : null,
        TieWordEmbeddings = Tied,
        AttentionBias = Bias,
        SwiftKv = SwiftKvLayers > 0,
        NumKeyValueLayers = SwiftKvLayers,
        KeyValueGroupSize = GroupSize,
    }.Validate();
}

/// <summary>A tiny seeded generator (PCG-style LCG), separate from the engine's sampler generator.</summary>
public sealed class TestRng(ulong seed)
{
    ulong _state = seed * 6364136223846793005UL + 1442695040888963407UL;

    public double NextDouble()
    {
        _state = _state * 6364136223846793005UL + 1442695040888963407UL;
        return (_state >> 11) * (1.0 / (1UL << 53));
    }

    public float Uniform(float a) => (float)((NextDouble() * 2 - 1) * a);

    public float[] Array(long n, float a)
    {
        var r = new float[n];
        for (long i = 0; i < n; i++) r[i] = Uniform(a);
        return r;
    }

    /// <summary>Norm weights near 1, as trained models have.</summary>
    public float[] NormWeight(int n)
    {
        var r = new float[n];
        for (int i = 0; i < n; i++) r[i] = 1 + Uniform(0.2f);
        return r;
    }

    public int Next(int max) => (int)(NextDouble() * max);
}

public static class TestModels
{
    /// <summary>Every tensor of a checkpoint for <paramref name="spec"/> (both modes' tensors when SwiftKV).</summary>
    public static LlamaWeights Checkpoint(ModelSpec spec)
    {
        var cfg = spec.Config();
        var rng = new TestRng(spec.Seed);
        int h = cfg.HiddenSize, q = cfg.QueryDim, kv = cfg.KeyValueDim, inter = cfg.IntermediateSize;
        float Scale(int fanIn) => 1.5f / MathF.Sqrt(fanIn);
        float[]? Bias(int n) => spec.Bias ? rng.Array(n, 0.3f) : null;

        var layers = new List<LlamaLayerWeights>();
        for (int i = 0; i < cfg.NumHiddenLayers; i++)
        {
            bool swift = cfg.IsSwiftKvLayer(i), leader = cfg.IsKvGroupLeader(i);
            layers.Add(new LlamaLayerWeights
            {
                InputLayernorm = rng.NormWeight(h),
                QProj = rng.Array((long)q * h, Scale(h)), QBias = Bias(q),
                KProj = rng.Array((long)kv * h, Scale(h)), KBias = Bias(kv),
                VProj = rng.Array((long)kv * h, Scale(h)), VBias = Bias(kv),
                OProj = rng.Array((long)h * q, Scale(q)), OBias = Bias(h),
                PostAttentionLayernorm = rng.NormWeight(h),
                GateProj = rng.Array((long)inter * h, Scale(h)),
                UpProj = rng.Array((long)inter * h, Scale(h)),
                DownProj = rng.Array((long)h * inter, Scale(inter)),
                QProjSwiftKv = swift ? rng.Array((long)q * h, Scale(h)) : null,
                QBiasSwiftKv = swift ? Bias(q) : null,
                KProjSwiftKv = leader ? rng.Array((long)kv * h, Scale(h)) : null,
                KBiasSwiftKv = leader ? Bias(kv) : null,
                VProjSwiftKv = leader ? rng.Array((long)kv * h, Scale(h)) : null,
                VBiasSwiftKv = leader ? Bias(kv) : null,
            });
        }
        var embed = rng.Array((long)cfg.VocabSize * h, 1f);
        return new LlamaWeights
        {
            Config = cfg,
            SwiftKvEnabled = cfg.SwiftKv,
            EmbedTokens = embed,
            Layers = layers,
            Norm = rng.NormWeight(h),
            NormSwiftKv = cfg.SwiftKv ? rng.NormWeight(h) : null,
            LmHead = spec.Tied ? embed : rng.Array((long)cfg.VocabSize * h, Scale(h)),
        };
    }

    /// <summary>What a loader would hand over for one mode: SwiftKV on drops later layers' q/k/v, off drops *_swiftkv.</summary>
    public static LlamaWeights View(LlamaWeights full, bool swiftKvEnabled)
    {
        var cfg = full.Config;
        bool on = swiftKvEnabled && cfg.SwiftKv;
        var layers = full.Layers.Select((l, i) =>
        {
            bool later = on && cfg.IsSwiftKvLayer(i);
            return new LlamaLayerWeights
            {
                InputLayernorm = l.InputLayernorm,
                QProj = later ? null : l.QProj, QBias = later ? null : l.QBias,
                KProj = later ? null : l.KProj, KBias = later ? null : l.KBias,
                VProj = later ? null : l.VProj, VBias = later ? null : l.VBias,
                OProj = l.OProj, OBias = l.OBias,
                PostAttentionLayernorm = l.PostAttentionLayernorm,
                GateProj = l.GateProj, UpProj = l.UpProj, DownProj = l.DownProj,
                QProjSwiftKv = later ? l.QProjSwiftKv : null, QBiasSwiftKv = later ? l.QBiasSwiftKv : null,
                KProjSwiftKv = later ? l.KProjSwiftKv : null, KBiasSwiftKv = later ? l.KBiasSwiftKv : null,
                VProjSwiftKv = later ? l.VProjSwiftKv : null, VBiasSwiftKv = later ? l.VBiasSwiftKv : null,
            };
        }).ToList();
        return new LlamaWeights
        {
            Config = cfg, SwiftKvEnabled = on, EmbedTokens = full.EmbedTokens, Layers = layers, Norm = full.Norm,
            NormSwiftKv = on ? full.NormSwiftKv : null, LmHead = full.LmHead,
        };
    }

    public static LlamaWeights Build(ModelSpec spec, bool swiftKvEnabled = true) => View(Checkpoint(spec), swiftKvEnabled);

    /// <summary>
    /// The paper's initialization of a SwiftKV model from a plain Llama (SWIFTKV.md): norm_swiftkv = input_layernorm_l,
    /// q_proj_swiftkv = q_proj, group leader k/v_proj_swiftkv = mean of the group's original k/v_proj.
    /// </summary>
    public static LlamaWeights Transform(LlamaWeights llama, int numKeyValueLayers, int groupSize)
    {
        var cfg = llama.Config with { ModelType = "llama_swiftkv", SwiftKv = true, NumKeyValueLayers = numKeyValueLayers, KeyValueGroupSize = groupSize };
        cfg.Validate();
        float[]? Mean(int leader, Func<LlamaLayerWeights, float[]?> pick)
        {
            if (pick(llama.Layers[leader]) is null) return null;
            var sum = new double[pick(llama.Layers[leader])!.Length];
            for (int j = leader; j < leader + groupSize; j++)
            {
                var a = pick(llama.Layers[j])!;
                for (int k = 0; k < a.Length; k++) sum[k] += a[k];
            }
            return groupSize == 1 ? (float[])pick(llama.Layers[leader])!.Clone() : sum.Select(v => (float)(v / groupSize)).ToArray();
        }
        var layers = llama.Layers.Select((l, i) =>
        {
            bool later = cfg.IsSwiftKvLayer(i), leader = cfg.IsKvGroupLeader(i);
            return new LlamaLayerWeights
            {
                InputLayernorm = l.InputLayernorm,
                QProj = later ? null : l.QProj, QBias = later ? null : l.QBias,
                KProj = later ? null : l.KProj, KBias = later ? null : l.KBias,
                VProj = later ? null : l.VProj, VBias = later ? null : l.VBias,
                OProj = l.OProj, OBias = l.OBias,
                PostAttentionLayernorm = l.PostAttentionLayernorm,
                GateProj = l.GateProj, UpProj = l.UpProj, DownProj = l.DownProj,
                QProjSwiftKv = later ? (float[])l.QProj!.Clone() : null,
                QBiasSwiftKv = later ? (float[]?)l.QBias?.Clone() : null,
                KProjSwiftKv = leader ? Mean(i, x => x.KProj) : null,
                KBiasSwiftKv = leader ? Mean(i, x => x.KBias) : null,
                VProjSwiftKv = leader ? Mean(i, x => x.VProj) : null,
                VBiasSwiftKv = leader ? Mean(i, x => x.VBias) : null,
            };
        }).ToList();
        return new LlamaWeights
        {
            Config = cfg, SwiftKvEnabled = true, EmbedTokens = llama.EmbedTokens, Layers = layers, Norm = llama.Norm,
            NormSwiftKv = (float[])llama.Layers[numKeyValueLayers].InputLayernorm.Clone(), LmHead = llama.LmHead,
        };
    }

    public static int[] RandomTokens(int count, int vocab, ulong seed)
    {
        var rng = new TestRng(seed);
        return Enumerable.Range(0, count).Select(_ => rng.Next(vocab)).ToArray();
    }
}
