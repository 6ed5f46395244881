// The weights of one Llama / SwiftKV model as fp32 host arrays, the form the CPU backend computes with
// and the GPU backend uploads from. Matrices keep the Hugging Face (out_features, in_features) row-major
// layout, so y = W·x is a dot product of each row with x.
namespace SwiftKV.Model;

/// <summary>One decoder layer. Shapes use the checkpoint's vocabulary: (out_features, in_features).</summary>
public sealed class LlamaLayerWeights
{
    /// <summary>(hidden_size)</summary>
    public required float[] InputLayernorm { get; init; }
    /// <summary>(num_attention_heads * head_dim, hidden_size); null for a SwiftKV layer loaded with SwiftKV on.</summary>
    public float[]? QProj { get; init; }
    public float[]? QBias { get; init; }
    /// <summary>(num_key_value_heads * head_dim, hidden_size); null for a SwiftKV layer loaded with SwiftKV on.</summary>
    public float[]? KProj { get; init; }
    public float[]? KBias { get; init; }
    public float[]? VProj { get; init; }
    public float[]? VBias { get; init; }
    /// <summary>(hidden_size, num_attention_heads * head_dim)</summary>
    public required float[] OProj { get; init; }
    /// <summary>(hidden_size); present when attention_bias (Hugging Face's o_proj carries a bias then too).</summary>
    public float[]? OBias { get; init; }
    /// <summary>(hidden_size)</summary>
    public required float[] PostAttentionLayernorm { get; init; }
    /// <summary>(intermediate_size, hidden_size)</summary>
    public required float[] GateProj { get; init; }
    /// <summary>(intermediate_size, hidden_size)</summary>
    public required float[] UpProj { get; init; }
    /// <summary>(hidden_size, intermediate_size)</summary>
    public required float[] DownProj { get; init; }

    /// <summary>q_proj_swiftkv: (num_attention_heads * head_dim, hidden_size); every layer j >= l when SwiftKV is on.</summary>
    public float[]? QProjSwiftKv { get; init; }
    public float[]? QBiasSwiftKv { get; init; }
    /// <summary>k/v_proj_swiftkv: (num_key_value_heads * head_dim, hidden_size); AcrossKV group leaders only.</summary>
    public float[]? KProjSwiftKv { get; init; }
    public float[]? KBiasSwiftKv { get; init; }
    public float[]? VProjSwiftKv { get; init; }
    public float[]? VBiasSwiftKv { get; init; }
}

/// <summary>All weights of a model, loaded for one SwiftKV mode (see <see cref="SwiftKvEnabled"/>).</summary>
public sealed class LlamaWeights
{
    public required LlamaConfig Config { get; init; }
    /// <summary>True when the SwiftKV tensors were loaded and the later layers' original q/k/v were not.</summary>
    public required bool SwiftKvEnabled { get; init; }
    /// <summary>(vocab_size, hidden_size)</summary>
    public required float[] EmbedTokens { get; init; }
    public required IReadOnlyList<LlamaLayerWeights> Layers { get; init; }
    /// <summary>model.norm: (hidden_size)</summary>
    public required float[] Norm { get; init; }
    /// <summary>model.norm_swiftkv: (hidden_size); null unless SwiftKV is enabled.</summary>
    public float[]? NormSwiftKv { get; init; }
    /// <summary>(vocab_size, hidden_size); the same array as <see cref="EmbedTokens"/> when embeddings are tied.</summary>
    public required float[] LmHead { get; init; }
    /// <summary>
    /// The matrices the checkpoint stores as fp8 (dequantized here), by reference: the Linears an FP8 checkpoint's
    /// scheme quantizes the inputs of (W8A8). Empty for a bf16 / fp32 checkpoint.
    /// </summary>
    public IReadOnlySet<float[]> Float8Weights { get; init; } = new HashSet<float[]>();
}
