// The one table of Hugging Face tensor names and shapes for Llama and llama_swiftkv checkpoints. The loader,
// the writer and the converter all ask this file which tensors exist, so a name is spelled exactly once.
// Shapes are (out_features, in_features) as stored, e.g. q_proj is (num_attention_heads * head_dim, hidden_size).
namespace SwiftKV.Model.Checkpoint;

/// <summary>A tensor a checkpoint holds: its Hugging Face name, shape, and the shape in config vocabulary.</summary>
public sealed record TensorSpec(string Name, IReadOnlyList<long> Shape, string ShapeMeaning)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => checked(a * b));
}

/// <summary>Hugging Face tensor names of Llama / SwiftKV checkpoints and the manifests built from them.</summary>
public static class LlamaTensorNames
{
    public const string EmbedTokens = "model.embed_tokens.weight";
    public const string Norm = "model.norm.weight";
    public const string NormSwiftKv = "model.norm_swiftkv.weight";
    public const string LmHead = "lm_head.weight";

    public const string QProj = "q_proj", KProj = "k_proj", VProj = "v_proj", OProj = "o_proj";
    public const string QProjSwiftKv = "q_proj_swiftkv", KProjSwiftKv = "k_proj_swiftkv", VProjSwiftKv = "v_proj_swiftkv";
    public const string GateProj = "gate_proj", UpProj = "up_proj", DownProj = "down_proj";

    public static string InputLayernorm(int layer) => $"model.layers.{layer}.input_layernorm.weight";
    public static string PostAttentionLayernorm(int layer) => $"model.layers.{layer}.post_attention_layernorm.weight";
    /// <summary><c>model.layers.{layer}.self_attn.{projection}.weight</c> (or <c>.bias</c>).</summary>
    public static string Attention(int layer, string projection, bool bias = false) =>
        $"model.layers.{layer}.self_attn.{projection}.{(bias ? "bias" : "weight")}";
    public static string Mlp(int layer, string projection) => $"model.layers.{layer}.mlp.{projection}.weight";

    /// <summary>
    /// The tensors a model needs when run with SwiftKV on or off: with it on, layers j >= l use their *_swiftkv
    /// projections instead of the original q/k/v (which are then not needed); with it off, no SwiftKV tensor is.
    /// lm_head is absent when embeddings are tied.
    /// </summary>
    public static IReadOnlyList<TensorSpec> ForModel(LlamaConfig config, bool swiftKvEnabled)
    {
        if (swiftKvEnabled && !config.SwiftKv)
            throw new InvalidModelException("SwiftKV was requested but config.json does not describe a SwiftKV model (swiftkv: true, num_key_value_layers).");
        return Build(config, originalQkv: layer => !(swiftKvEnabled && config.IsSwiftKvLayer(layer)), swiftKv: swiftKvEnabled);
    }

    /// <summary>
    /// Everything a complete checkpoint carries: the original q/k/v of every layer (so it also runs as plain
    /// Llama, as the published SwiftKV checkpoints do) plus, for a SwiftKV config, norm_swiftkv and the *_swiftkv projections.
    /// </summary>
    public static IReadOnlyList<TensorSpec> ForCheckpoint(LlamaConfig config) =>
        Build(config, originalQkv: _ => true, swiftKv: config.SwiftKv);

    static List<TensorSpec> Build(LlamaConfig c, Func<int, bool> originalQkv, bool swiftKv)
    {
        long h = c.HiddenSize, q = c.QueryDim, kv = c.KeyValueDim, ffn = c.IntermediateSize;
        var specs = new List<TensorSpec> { new(EmbedTokens, [c.VocabSize, h], "(vocab_size, hidden_size)") };
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            specs.Add(new(InputLayernorm(i), [h], "(hidden_size)"));
            if (originalQkv(i)) AddAttention(specs, c, i, QProj, KProj, VProj, kvToo: true);
            if (swiftKv && c.IsSwiftKvLayer(i)) AddAttention(specs, c, i, QProjSwiftKv, KProjSwiftKv, VProjSwiftKv, kvToo: c.IsKvGroupLeader(i));
            specs.Add(new(Attention(i, OProj), [h, q], "(hidden_size, num_attention_heads * head_dim)"));
            if (c.AttentionBias) specs.Add(new(Attention(i, OProj, bias: true), [h], "(hidden_size)"));
            specs.Add(new(PostAttentionLayernorm(i), [h], "(hidden_size)"));
            specs.Add(new(Mlp(i, GateProj), [ffn, h], "(intermediate_size, hidden_size)"));
            specs.Add(new(Mlp(i, UpProj), [ffn, h], "(intermediate_size, hidden_size)"));
            specs.Add(new(Mlp(i, DownProj), [h, ffn], "(hidden_size, intermediate_size)"));
        }
        specs.Add(new(Norm, [h], "(hidden_size)"));
        if (swiftKv) specs.Add(new(NormSwiftKv, [h], "(hidden_size)"));
        if (!c.TieWordEmbeddings) specs.Add(new(LmHead, [c.VocabSize, h], "(vocab_size, hidden_size)"));
        return specs;

        static void AddAttention(List<TensorSpec> specs, LlamaConfig c, int i, string qName, string kName, string vName, bool kvToo)
        {
            long h = c.HiddenSize, q = c.QueryDim, kv = c.KeyValueDim;
            specs.Add(new(Attention(i, qName), [q, h], "(num_attention_heads * head_dim, hidden_size)"));
            if (c.AttentionBias) specs.Add(new(Attention(i, qName, bias: true), [q], "(num_attention_heads * head_dim)"));
            if (!kvToo) return;
            foreach (string name in new[] { kName, vName })
            {
                specs.Add(new(Attention(i, name), [kv, h], "(num_key_value_heads * head_dim, hidden_size)"));
                if (c.AttentionBias) specs.Add(new(Attention(i, name, bias: true), [kv], "(num_key_value_heads * head_dim)"));
            }
        }
    }
}
