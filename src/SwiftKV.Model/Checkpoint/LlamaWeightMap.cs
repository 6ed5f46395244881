// Both directions between Hugging Face tensor names and LlamaWeights, side by side so they cannot drift:
// Build() assembles LlamaWeights from named fp32 arrays, Tensors() lists a LlamaWeights' arrays by name.
// Names and shapes come from LlamaTensorNames; this file only says which array goes in which slot.
using static SwiftKV.Model.Checkpoint.LlamaTensorNames;

namespace SwiftKV.Model.Checkpoint;

/// <summary>Maps named tensors to <see cref="LlamaWeights"/> and back.</summary>
public static class LlamaWeightMap
{
    /// <summary>
    /// Assembles weights from <paramref name="tensors"/>, which must hold every name of
    /// <see cref="LlamaTensorNames.ForModel"/>(config, swiftKvEnabled) with its shape (the loader checks that).
    /// <paramref name="float8"/>: those of the arrays the checkpoint stored as fp8 (<see cref="LlamaWeights.Float8Weights"/>).
    /// </summary>
    public static LlamaWeights Build(LlamaConfig config, bool swiftKvEnabled, IReadOnlyDictionary<string, float[]> tensors,
        IReadOnlySet<float[]>? float8 = null)
    {
        float[] Get(string name) => tensors.TryGetValue(name, out var t) ? t : throw new InvalidModelException($"tensor '{name}' is missing.");
        float[]? Opt(string name) => tensors.GetValueOrDefault(name);

        var layers = new LlamaLayerWeights[config.NumHiddenLayers];
        for (int i = 0; i < layers.Length; i++)
        {
            bool swift = swiftKvEnabled && config.IsSwiftKvLayer(i);
            bool leader = swift && config.IsKvGroupLeader(i);
            layers[i] = new LlamaLayerWeights
            {
                InputLayernorm = Get(InputLayernorm(i)),
                QProj = swift ? null : Get(Attention(i, QProj)),
                QBias = swift ? null : Opt(Attention(i, QProj, bias: true)),
                KProj = swift ? null : Get(Attention(i, KProj)),
                KBias = swift ? null : Opt(Attention(i, KProj, bias: true)),
                VProj = swift ? null : Get(Attention(i, VProj)),
                VBias = swift ? null : Opt(Attention(i, VProj, bias: true)),
                OProj = Get(Attention(i, OProj)),
                OBias = Opt(Attention(i, OProj, bias: true)),
                PostAttentionLayernorm = Get(PostAttentionLayernorm(i)),
                GateProj = Get(Mlp(i, GateProj)),
                UpProj = Get(Mlp(i, UpProj)),
                DownProj = Get(Mlp(i, DownProj)),
                QProjSwiftKv = swift ? Get(Attention(i, QProjSwiftKv)) : null,
                QBiasSwiftKv = swift ? Opt(Attention(i, QProjSwiftKv, bias: true)) : null,
                KProjSwiftKv = leader ? Get(Attention(i, KProjSwiftKv)) : null,
                KBiasSwiftKv = leader ? Opt(Attention(i, KProjSwiftKv, bias: true)) : null,
                VProjSwiftKv = leader ? Get(Attention(i, VProjSwiftKv)) : null,
                VBiasSwiftKv = leader ? Opt(Attention(i, VProjSwiftKv, bias: true)) : null,
            };
        }
        float[] embed = Get(EmbedTokens);
        return new LlamaWeights
        {
            Config = config,
            SwiftKvEnabled = swiftKvEnabled,
            EmbedTokens = embed,
            Layers = layers,
            Norm = Get(Norm),
            NormSwiftKv = swiftKvEnabled ? Get(NormSwiftKv) : null,
            // NOTE: tied embeddings share one array, as Hugging Face shares one parameter.
            LmHead = config.TieWordEmbeddings ? embed : Get(LmHead),
            Float8Weights = float8 ?? new HashSet<float[]>(),
        };
    }

    /// <summary>
    /// The arrays of <paramref name="weights"/> under their checkpoint names, in <see cref="LlamaTensorNames.ForModel"/>
    /// order. Throws <see cref="InvalidModelException"/> when a slot that config needs is empty.
    /// </summary>
    public static IReadOnlyList<(TensorSpec Spec, float[] Values)> Tensors(LlamaWeights weights)
    {
        var byName = new Dictionary<string, float[]?>(StringComparer.Ordinal)
        {
            [EmbedTokens] = weights.EmbedTokens,
            [Norm] = weights.Norm,
            [NormSwiftKv] = weights.NormSwiftKv,
            [LmHead] = weights.LmHead,
        };
        for (int i = 0; i < weights.Layers.Count; i++)
        {
            var l = weights.Layers[i];
            byName[InputLayernorm(i)] = l.InputLayernorm;
            byName[Attention(i, QProj)] = l.QProj;
            byName[Attention(i, QProj, bias: true)] = l.QBias;
            byName[Attention(i, KProj)] = l.KProj;
            byName[Attention(i, KProj, bias: true)] = l.KBias;
            byName[Attention(i, VProj)] = l.VProj;
            byName[Attention(i, VProj, bias: true)] = l.VBias;
            byName[Attention(i, OProj)] = l.OProj;
            byName[Attention(i, OProj, bias: true)] = l.OBias;
            byName[PostAttentionLayernorm(i)] = l.PostAttentionLayernorm;
            byName[Mlp(i, GateProj)] = l.GateProj;
            byName[Mlp(i, UpProj)] = l.UpProj;
            byName[Mlp(i, DownProj)] = l.DownProj;
            byName[Attention(i, QProjSwiftKv)] = l.QProjSwiftKv;
            byName[Attention(i, QProjSwiftKv, bias: true)] = l.QBiasSwiftKv;
            byName[Attention(i, KProjSwiftKv)] = l.KProjSwiftKv;
            byName[Attention(i, KProjSwiftKv, bias: true)] = l.KBiasSwiftKv;
            byName[Attention(i, VProjSwiftKv)] = l.VProjSwiftKv;
            byName[Attention(i, VProjSwiftKv, bias: true)] = l.VBiasSwiftKv;
        }
        var result = new List<(TensorSpec, float[])>();
        foreach (var spec in ForModel(weights.Config, weights.SwiftKvEnabled))
        {
            float[] values = byName.GetValueOrDefault(spec.Name)
                ?? throw new InvalidModelException($"weights lack '{spec.Name}' {TensorInfo.FormatShape(spec.Shape)}, which config.json requires.");
            if (values.LongLength != spec.ElementCount)
                throw new InvalidModelException($"weights '{spec.Name}' hold {values.LongLength} values; {spec.ShapeMeaning} {TensorInfo.FormatShape(spec.Shape)} needs {spec.ElementCount}.");
            result.Add((spec, values));
        }
        return result;
    }
}
