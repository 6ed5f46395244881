// Analytic FLOP count of prefilling one prompt, with the counting rules of docs/PERFORMANCE.md:
// linear layers cost 2 x params per token for the layers that token runs; causal attention over S tokens costs
// 2·S²·head_dim·num_heads per layer (QKᵀ and PV, half the square masked); lm_head runs for the last token only.
// Norms, RoPE, softmax and biases are left out: they are lower order. With SwiftKV on, every prompt token runs
// layers 0..l-1 plus the group leaders' K/V projections; only the last token runs layers l..L-1, attending to
// all S cached positions (4·S·head_dim·num_heads per layer).
using SwiftKV.Model;

namespace SwiftKV.Engine;

/// <summary>Prefill FLOPs split by where they go.</summary>
public sealed record PrefillFlops(int PromptTokens, bool SwiftKv, double Linear, double Attention, double LmHead)
{
    public double Total => Linear + Attention + LmHead;
}

public static class PrefillCost
{
    /// <summary>
    /// FLOPs to prefill <paramref name="promptTokens"/> tokens. <paramref name="swiftKv"/> = true needs a config with
    /// SwiftKV fields (num_key_value_layers, key_value_group_size).
    /// </summary>
    public static PrefillFlops Estimate(LlamaConfig config, int promptTokens, bool swiftKv)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(promptTokens);
        if (swiftKv && !config.SwiftKv)
            throw new ArgumentException("SwiftKV prefill cost needs a config with swiftkv = true and num_key_value_layers.", nameof(config));

        double s = promptTokens, hidden = config.HiddenSize;
        double qParams = config.QueryDim * hidden, kvParams = 2.0 * config.KeyValueDim * hidden;
        double oParams = hidden * config.QueryDim, mlpParams = 3.0 * hidden * config.IntermediateSize;
        double layerParams = qParams + kvParams + oParams + mlpParams;
        double causalAttention = 2.0 * s * s * config.HeadDim * config.NumAttentionHeads;
        double lmHead = 2.0 * hidden * config.VocabSize;
        int layers = config.NumHiddenLayers;

        if (!swiftKv)
            return new PrefillFlops(promptTokens, false, 2 * layerParams * s * layers, causalAttention * layers, lmHead);

        int l = config.NumKeyValueLayers, later = layers - l;
        int leaders = later / config.KeyValueGroupSize;
        double linear = 2 * s * (layerParams * l + kvParams * leaders)
                        + 2 * (qParams + oParams + mlpParams) * later;
        double attention = causalAttention * l + 4.0 * s * config.HeadDim * config.NumAttentionHeads * later;
        return new PrefillFlops(promptTokens, true, linear, attention, lmHead);
    }

    /// <summary>Linear parameters every prompt token runs through: all layers, or with SwiftKV l layers plus the leaders' K/V.</summary>
    public static double LinearParamsPerPromptToken(LlamaConfig config, bool swiftKv)
    {
        double hidden = config.HiddenSize;
        double kvParams = 2.0 * config.KeyValueDim * hidden;
        double layerParams = 2.0 * config.QueryDim * hidden + kvParams + 3.0 * hidden * config.IntermediateSize;
        if (!swiftKv) return layerParams * config.NumHiddenLayers;
        int leaders = (config.NumHiddenLayers - config.NumKeyValueLayers) / config.KeyValueGroupSize;
        return layerParams * config.NumKeyValueLayers + kvParams * leaders;
    }
}
