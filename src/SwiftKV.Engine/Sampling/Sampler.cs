// Picks the next token from one row of logits. Order: temperature, top-k, softmax, top-p (nucleus over the
// probabilities sorted high to low), then one uniform draw. Ties in sorting break toward the lower token id, so the
// result depends only on the logits and the seed. Probabilities are in double: a draw near a bucket edge should
// not flip between machines because of float rounding in a long sum.
// NOTE: frequency/presence penalties (OpenAI semantics, not a repetition penalty) live here because the sampler
// is per sequence and sees every token it picks: logit -= count * frequency + (count > 0) * presence, applied to a
// copy of the row before temperature, over the tokens this sampler has returned (generated tokens, never the prompt).
namespace SwiftKV.Engine.Sampling;

/// <summary>A stateful sampler for one sequence (its generator advances with every draw).</summary>
public sealed class Sampler
{
    readonly SamplingParams _p;
    readonly Dictionary<int, int> _counts = [];
    float[] _penalised = [];
    Xoshiro256 _rng;

    public Sampler(SamplingParams parameters)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        _p = parameters;
        _rng = new Xoshiro256(parameters.Seed ?? (ulong)Random.Shared.NextInt64());
    }

    /// <summary>
    /// Argmax, lowest index on ties; NaN never wins. Throws <see cref="InvalidOperationException"/> when nothing is
    /// above -inf (every logit NaN or -inf: a broken model, or a constraint that masked every token).
    /// </summary>
    public static int Greedy(ReadOnlySpan<float> logits)
    {
        int best = GreedyOrNone(logits);
        return best >= 0 ? best : throw new InvalidOperationException(NoFiniteLogit);
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

    internal const string NoFiniteLogit = "every logit is NaN or -inf: nothing to sample (an invalid model output, or a constraint that masked every token).";

    /// <summary>Samples a token id from <paramref name="logits"/> (vocab_size); the caller's row is never changed.</summary>
    public int Sample(ReadOnlySpan<float> logits)
    {
        if (logits.IsEmpty) throw new ArgumentException("logits are empty.", nameof(logits));
        if ((_p.FrequencyPenalty != 0 || _p.PresencePenalty != 0) && _counts.Count > 0)
        {
            if (_penalised.Length != logits.Length) _penalised = new float[logits.Length];
            logits.CopyTo(_penalised);
            foreach (var (id, count) in _counts)
                if ((uint)id < (uint)_penalised.Length) _penalised[id] -= count * _p.FrequencyPenalty + _p.PresencePenalty;
            logits = _penalised;
        }
        int token = Pick(logits);
        if (_p.FrequencyPenalty != 0 || _p.PresencePenalty != 0) _counts[token] = _counts.GetValueOrDefault(token) + 1;
        return token;
    }

    int Pick(ReadOnlySpan<float> logits)
    {
        if (_p.Temperature == 0) return Greedy(logits);

        int n = logits.Length;
        var order = new int[n];
        var scaled = new double[n];
        for (int i = 0; i < n; i++)
        {
            order[i] = i;
            double v = logits[i];
            scaled[i] = double.IsNaN(v) ? double.NegativeInfinity : v / _p.Temperature;
        }
        Array.Sort(order, (a, b) => scaled[a] != scaled[b] ? scaled[b].CompareTo(scaled[a]) : a.CompareTo(b));

        int keep = _p.TopK > 0 ? Math.Min(_p.TopK, n) : n;
        double max = scaled[order[0]];
        if (double.IsNegativeInfinity(max)) throw new InvalidOperationException(NoFiniteLogit);
        // +inf: the softmax's limit puts all the mass on the +inf tokens; the first (lowest id, the sort's tie order)
        // is taken, as the GPU sampler does. exp(inf - inf) would make every probability NaN.
        if (double.IsPositiveInfinity(max)) return order[0];
        var probs = new double[keep];
        double sum = 0;
        for (int r = 0; r < keep; r++) sum += probs[r] = Math.Exp(scaled[order[r]] - max);
        for (int r = 0; r < keep; r++) probs[r] /= sum;

        if (_p.TopP < 1)
        {
            double cumulative = 0;
            int nucleus = 0;
            while (nucleus < keep)
            {
                cumulative += probs[nucleus++];
                if (cumulative >= _p.TopP) break;
            }
            keep = nucleus;
            sum = cumulative;
        }
        else
        {
            sum = 1;
        }

        double u = _rng.NextDouble() * sum;
        double acc = 0;
        for (int r = 0; r < keep; r++)
        {
            acc += probs[r];
            if (u < acc) return order[r];
        }
        return order[keep - 1];
    }
}
