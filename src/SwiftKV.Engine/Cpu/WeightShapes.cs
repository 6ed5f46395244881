// Checks every array of a LlamaWeights against the config before the backend touches it, so a wrong or
// missing tensor fails at load with its Hugging Face name instead of an IndexOutOfRange deep in a forward pass.
using SwiftKV.Model;

namespace SwiftKV.Engine.Cpu;

internal static class WeightShapes
{
    public static void Check(LlamaWeights w)
    {
        var c = w.Config;
        int h = c.HiddenSize, q = c.QueryDim, kv = c.KeyValueDim, inter = c.IntermediateSize;
        Need(w.EmbedTokens, (long)c.VocabSize * h, "model.embed_tokens.weight", $"({c.VocabSize}, {h})");
        Need(w.Norm, h, "model.norm.weight", $"({h})");
        Need(w.LmHead, (long)c.VocabSize * h, "lm_head.weight", $"({c.VocabSize}, {h})");
        if (w.Layers is null || w.Layers.Count != c.NumHiddenLayers)
            throw new InvalidModelException($"LlamaWeights: expected {c.NumHiddenLayers} layers (num_hidden_layers), got {w.Layers?.Count ?? 0}.");
        if (w.SwiftKvEnabled) Need(w.NormSwiftKv, h, "model.norm_swiftkv.weight", $"({h})");
        bool bias = c.AttentionBias;

        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            var l = w.Layers[i];
            string p = $"model.layers.{i}.";
            Need(l.InputLayernorm, h, p + "input_layernorm.weight", $"({h})");
            Need(l.PostAttentionLayernorm, h, p + "post_attention_layernorm.weight", $"({h})");
            Need(l.OProj, (long)h * q, p + "self_attn.o_proj.weight", $"({h}, {q})");
            if (bias) Need(l.OBias, h, p + "self_attn.o_proj.bias", $"({h})");
            Need(l.GateProj, (long)inter * h, p + "mlp.gate_proj.weight", $"({inter}, {h})");
            Need(l.UpProj, (long)inter * h, p + "mlp.up_proj.weight", $"({inter}, {h})");
            Need(l.DownProj, (long)h * inter, p + "mlp.down_proj.weight", $"({h}, {inter})");

            bool swiftKvLayer = w.SwiftKvEnabled && c.IsSwiftKvLayer(i);
            string sfx = swiftKvLayer ? "_swiftkv" : "";
            Need(swiftKvLayer ? l.QProjSwiftKv : l.QProj, (long)q * h, p + $"self_attn.q_proj{sfx}.weight", $"({q}, {h})");
            if (bias) Need(swiftKvLayer ? l.QBiasSwiftKv : l.QBias, q, p + $"self_attn.q_proj{sfx}.bias", $"({q})");
            if (swiftKvLayer && !c.IsKvGroupLeader(i)) continue;
            Need(swiftKvLayer ? l.KProjSwiftKv : l.KProj, (long)kv * h, p + $"self_attn.k_proj{sfx}.weight", $"({kv}, {h})");
            Need(swiftKvLayer ? l.VProjSwiftKv : l.VProj, (long)kv * h, p + $"self_attn.v_proj{sfx}.weight", $"({kv}, {h})");
            if (bias)
            {
                Need(swiftKvLayer ? l.KBiasSwiftKv : l.KBias, kv, p + $"self_attn.k_proj{sfx}.bias", $"({kv})");
                Need(swiftKvLayer ? l.VBiasSwiftKv : l.VBias, kv, p + $"self_attn.v_proj{sfx}.bias", $"({kv})");
            }
        }
    }

    static void Need(float[]? a, long expected, string name, string shape)
    {
        if (a is null) throw new InvalidModelException($"LlamaWeights: tensor '{name}' is missing (expected shape {shape}).");
        if (a.LongLength != expected)
            throw new InvalidModelException($"LlamaWeights: tensor '{name}' has {a.LongLength} elements, expected {expected} for shape {shape}.");
    }
}
