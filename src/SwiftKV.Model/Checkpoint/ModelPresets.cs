// Named model shapes for making random checkpoints and shape manifests without downloading anything.
// The Llama entries copy the published config.json files (Meta's Llama 3.1 8B / 70B and 3.2 1B); "tiny" and
// "demo" are small Llama 3 shapes with the real vocabulary and RoPE settings, so the real tokenizer and every
// code path (GQA, llama3 RoPE scaling, tied or untied embeddings) are exercised in seconds on a CPU.
// Each call returns a fresh config: derive variants with `with { ... }` (e.g. SwiftKV fields).
namespace SwiftKV.Model.Checkpoint;

/// <summary>Known model configurations by name.</summary>
public static class ModelPresets
{
    static readonly (string Name, Func<LlamaConfig> Make)[] Presets =
    [
        ("tiny", () => Llama3(hidden: 64, ffn: 176, layers: 4, heads: 4, kvHeads: 2, headDim: 16, tied: false, ropeFactor: 8)),
        ("demo", () => Llama3(hidden: 384, ffn: 1024, layers: 8, heads: 6, kvHeads: 2, headDim: 64, tied: true, ropeFactor: 8)),
        ("llama-3.2-1b", () => Llama3(hidden: 2048, ffn: 8192, layers: 16, heads: 32, kvHeads: 8, headDim: 64, tied: true, ropeFactor: 32)),
        ("llama-3.1-8b", () => Llama3(hidden: 4096, ffn: 14336, layers: 32, heads: 32, kvHeads: 8, headDim: 128, tied: false, ropeFactor: 8)),
        ("llama-3.1-70b", () => Llama3(hidden: 8192, ffn: 28672, layers: 80, heads: 64, kvHeads: 8, headDim: 128, tied: false, ropeFactor: 8)),
    ];

    /// <summary>The preset names, smallest first.</summary>
    public static IReadOnlyList<string> Names { get; } = Presets.Select(p => p.Name).ToArray();

    /// <summary>A new, validated plain Llama config for <paramref name="name"/>; <see cref="ArgumentException"/> lists the valid names otherwise.</summary>
    public static LlamaConfig Get(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        foreach (var (known, make) in Presets)
        {
            if (known == name) return make();
        }
        throw new ArgumentException($"unknown model preset '{name}'; known presets: {string.Join(", ", Names)}.", nameof(name));
    }

    static LlamaConfig Llama3(int hidden, int ffn, int layers, int heads, int kvHeads, int headDim, bool tied, double ropeFactor) => new LlamaConfig
    {
        ModelType = "llama",
        HiddenSize = hidden,
        IntermediateSize = ffn,
        NumHiddenLayers = layers,
        NumAttentionHeads = heads,
        NumKeyValueHeads = kvHeads,
        HeadDim = headDim,
        VocabSize = 128256,
        MaxPositionEmbeddings = 131072,
        RmsNormEps = 1e-5,
        RopeTheta = 500000,
        RopeScaling = new Llama3RopeScaling(Factor: ropeFactor, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 8192),
        TieWordEmbeddings = tied,
        BosTokenId = 128000,
        EosTokenIds = [128001, 128008, 128009],
        TorchDtype = "bfloat16",
    }.Validate();
}
