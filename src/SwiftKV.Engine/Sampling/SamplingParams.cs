// How the next token is picked. Validated on construction so a bad option fails where it is set, naming it.
namespace SwiftKV.Engine.Sampling;

/// <summary>Sampling options. Temperature 0 is greedy (argmax); TopK 0 and TopP 1 switch those filters off.</summary>
public sealed record SamplingParams
{
    /// <summary>Greedy decoding: argmax, lowest token id on ties.</summary>
    public static SamplingParams Greedy { get; } = new();

    /// <summary>
    /// The temperature for options a caller may leave unset: greedy by default, but top-p below 1 or top-k above 1 only
    /// mean something when sampling, so without a temperature they imply 1 (OpenAI's default) rather than being ignored.
    /// The chat client and the CLI both apply this rule.
    /// </summary>
    public static float DefaultTemperature(float? temperature, float? topP, int? topK) =>
        temperature ?? (topP is < 1f || topK is > 1 ? 1f : 0f);

    /// <summary>Divides the logits before softmax; 0 = greedy. Must be finite and >= 0.</summary>
    public float Temperature
    {
        get;
        init
        {
            if (!float.IsFinite(value) || value < 0)
                throw new ArgumentOutOfRangeException(nameof(Temperature), value, "Temperature must be a finite number >= 0 (0 = greedy).");
            field = value;
        }
    }

    /// <summary>Keeps only the K most likely tokens (and any tied with the K-th, as Hugging Face's filter does); 0 = off.</summary>
    public int TopK
    {
        get;
        init
        {
            if (value < 0) throw new ArgumentOutOfRangeException(nameof(TopK), value, "TopK must be >= 0 (0 = off).");
            field = value;
        }
    }

    /// <summary>Nucleus: keeps the most likely tokens whose probabilities first reach TopP; in (0, 1], 1 = off.</summary>
    public float TopP
    {
        get;
        init
        {
            if (!(value > 0 && value <= 1)) throw new ArgumentOutOfRangeException(nameof(TopP), value, "TopP must be in (0, 1] (1 = off).");
            field = value;
        }
    } = 1f;

    /// <summary>
    /// OpenAI frequency penalty in [-2, 2]: each generated occurrence of a token lowers its logit by this much
    /// (logit -= count * FrequencyPenalty). Counts cover generated tokens only, not the prompt. 0 = off.
    /// </summary>
    public float FrequencyPenalty
    {
        get;
        init
        {
            if (!(value >= -2 && value <= 2)) throw new ArgumentOutOfRangeException(nameof(FrequencyPenalty), value, "FrequencyPenalty must be in [-2, 2] (0 = off).");
            field = value;
        }
    }

    /// <summary>OpenAI presence penalty in [-2, 2]: a token generated at least once has its logit lowered by this much. 0 = off.</summary>
    public float PresencePenalty
    {
        get;
        init
        {
            if (!(value >= -2 && value <= 2)) throw new ArgumentOutOfRangeException(nameof(PresencePenalty), value, "PresencePenalty must be in [-2, 2] (0 = off).");
            field = value;
        }
    }

    /// <summary>
    /// Seed of the sampler's own generator: the same seed draws the same uniforms on any machine, so the same logits
    /// give the same tokens (one uniform per sampled token, whether the host or a GPU picks; the GPU's fp32 sums may
    /// land on the other side of a bucket edge than the host's doubles, rarely). Null = random.
    /// </summary>
    public ulong? Seed { get; init; }
}
