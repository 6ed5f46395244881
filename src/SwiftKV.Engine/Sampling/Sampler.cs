// Picks the next token from one row of logits: greedy (argmax, lowest id on ties) at temperature 0; otherwise one
// uniform from this sampler's generator and RowSampling's rule (temperature, top-k with ties kept, top-p, then the
// first token in vocabulary order whose running kept mass passes the uniform), the rule the batched backends apply
// on the device, so a request's tokens follow one rule whichever side picks them. The rule runs in double: a draw
// near a bucket edge should not flip between machines because of float rounding in a long sum.
// NOTE: frequency/presence penalties (OpenAI semantics, not a repetition penalty) live here because the sampler
// is per sequence and sees every token it picks: logit -= count * frequency + (count > 0) * presence, applied to a
// copy of the row before temperature, over the tokens this sampler has accepted (generated tokens, never the prompt).
// They travel as the pick's LogitBias, so a batched backend applies them on the device like the CPU does here.
namespace SwiftKV.Engine.Sampling;

/// <summary>A stateful sampler for one sequence (its generator advances with every draw).</summary>
public sealed class Sampler
{
    readonly SamplingParams _p;
    readonly Dictionary<int, int> _counts = [];
    Xoshiro256 _rng;

    public Sampler(SamplingParams parameters)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        _p = parameters;
        _rng = new Xoshiro256(parameters.Seed ?? (ulong)Random.Shared.NextInt64());
    }

    /// <summary>
    /// Argmax, lowest index on ties; NaN never wins. Throws <see cref="NoFiniteLogitsException"/> when nothing is
    /// above -inf (every logit NaN or -inf: a broken model, or a constraint that masked every token).
    /// </summary>
    public static int Greedy(ReadOnlySpan<float> logits)
    {
        int best = GreedyOrNone(logits);
        return best >= 0 ? best : throw new NoFiniteLogitsException();
    }

    /// <summary><see cref="Greedy"/>, but -1 instead of the exception (a batch reports such a row per sequence).</summary>
    public static int GreedyOrNone(ReadOnlySpan<float> logits)
    {
        if (logits.IsEmpty) throw new ArgumentException("logits are empty.", nameof(logits));
        int best = 0;
        for (int i = 1; i < logits.Length; i++)
            if (logits[i] > logits[best] || float.IsNaN(logits[best])) best = i;
        return logits[best] > float.NegativeInfinity ? best : -1;
    }

    bool Penalised => _p.FrequencyPenalty != 0 || _p.PresencePenalty != 0;

    /// <summary>
    /// The next token's pick for a batched backend: this sampler's temperature and filters, its penalties as a
    /// <see cref="LogitBias"/> over the tokens accepted so far, and, unless greedy, one uniform from its generator: the
    /// one draw <see cref="Sample"/> would make for that token, so a request's generator advances alike whichever side
    /// picks (a seeded request gives the same tokens for the same logits and the same side). The caller hands the
    /// token picked with it to <see cref="Accept"/>.
    /// </summary>
    public RowSampling NextRowSampling()
    {
        var bias = PenaltyBias();
        // A temperature so small that its inverse overflows (subnormal) is the argmax, its limit.
        if (_p.Temperature == 0 || float.IsInfinity(1f / _p.Temperature)) return RowSampling.Greedy with { Bias = bias };
        float u = (float)_rng.NextDouble();
        if (u >= 1f) u = MathF.BitDecrement(1f);   // a double just below 1 rounds up to 1 in float
        return new RowSampling(_p.Temperature, _p.TopK, _p.TopP, u) { Bias = bias };
    }

    /// <summary>Counts a token picked with <see cref="NextRowSampling"/>'s pick toward the penalties of the next ones.</summary>
    public void Accept(int token)
    {
        if (Penalised) _counts[token] = _counts.GetValueOrDefault(token) + 1;
    }

    /// <summary>logit -= count · frequency + presence for every token accepted so far; null without penalties or tokens.</summary>
    LogitBias? PenaltyBias()
    {
        if (!Penalised || _counts.Count == 0) return null;
        var tokens = new int[_counts.Count];
        var deltas = new float[_counts.Count];
        int i = 0;
        foreach (var (id, count) in _counts)
        {
            tokens[i] = id;
            deltas[i++] = -(count * _p.FrequencyPenalty + _p.PresencePenalty);
        }
        return new LogitBias(tokens, deltas);
    }

    /// <summary>
    /// Samples a token id from <paramref name="logits"/> (vocab_size), only among the tokens <paramref name="mask"/>
    /// allows when given; the caller's row is never changed.
    /// </summary>
    public int Sample(ReadOnlySpan<float> logits, LogitMask? mask = null)
    {
        if (logits.IsEmpty) throw new ArgumentException("logits are empty.", nameof(logits));
        var pick = NextRowSampling() with { Mask = mask };
        int token = RowSampling.Pick(logits, pick);
        if (token < 0) throw new NoFiniteLogitsException();
        Accept(token);
        return token;
    }
}
