// The single-sequence generation loop: prefill the whole prompt in one forward pass that asks for the last
// token's logits only (with SwiftKV, that is where prompt tokens skip layers l..L-1), then decode one token per
// step. Arguments are checked when Generate is called, before any forward pass; the loop itself is lazy.
using System.Diagnostics;
using SwiftKV.Engine.Sampling;

namespace SwiftKV.Engine.Generation;

public static class Generator
{
    /// <summary>
    /// Generates up to <paramref name="maxNewTokens"/> tokens after <paramref name="promptTokens"/>, appending to
    /// <paramref name="cache"/>. Yields each generated id; a stop token ends generation without being yielded.
    /// </summary>
    /// <remarks>An optional <c>constraint</c> masks every logits row before sampling (e.g. a JSON grammar).</remarks>
    /// <exception cref="ArgumentException">The prompt is empty or does not fit the cache / model context.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxNewTokens"/> is not positive.</exception>
    /// <exception cref="OperationCanceledException">Thrown during enumeration once <paramref name="ct"/> is cancelled.</exception>
    public static IEnumerable<int> Generate(
        IModelBackend backend, ISequenceCache cache, IReadOnlyList<int> promptTokens, SamplingParams sampling,
        int maxNewTokens, IReadOnlySet<int> stopTokenIds, GenerationStats stats, CancellationToken ct = default,
        ILogitsConstraint? constraint = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(promptTokens);
        ArgumentNullException.ThrowIfNull(sampling);
        ArgumentNullException.ThrowIfNull(stopTokenIds);
        ArgumentNullException.ThrowIfNull(stats);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxNewTokens);
        if (promptTokens.Count == 0) throw new ArgumentException("the prompt is empty.", nameof(promptTokens));
        int context = Math.Min(cache.Capacity, backend.Config.MaxPositionEmbeddings);
        if ((long)cache.Length + promptTokens.Count >= cache.Capacity || promptTokens.Count > backend.Config.MaxPositionEmbeddings)
            throw new ArgumentException(
                $"prompt of {promptTokens.Count} tokens does not fit the context of {context} tokens"
                + (cache.Length > 0 ? $" ({cache.Length} already cached)." : "."),
                nameof(promptTokens));
        return Run(backend, cache, promptTokens.ToArray(), new Sampler(sampling), maxNewTokens, stopTokenIds, stats, ct, constraint);
    }

    static IEnumerable<int> Run(
        IModelBackend backend, ISequenceCache cache, int[] prompt, Sampler sampler,
        int maxNewTokens, IReadOnlySet<int> stopTokenIds, GenerationStats stats, CancellationToken ct,
        ILogitsConstraint? constraint)
    {
        ct.ThrowIfCancellationRequested();
        stats.PromptTokens = prompt.Length;
        var total = Stopwatch.StartNew();
        var logits = backend.Forward(cache, prompt, LogitsSelection.LastToken);
        stats.PrefillTime = total.Elapsed;

        var decode = new Stopwatch();
        while (true)
        {
            decode.Start();
            if (constraint is not null)
            {
                // The backend may reuse its logits buffer; mask a copy.
                logits = (float[])logits.Clone();
                constraint.Apply(logits);
            }
            int token = sampler.Sample(logits);
            constraint?.Accept(token);
            decode.Stop();
            stats.DecodeTime = decode.Elapsed;
            stats.TimeToFirstToken ??= total.Elapsed;
            if (stopTokenIds.Contains(token))
            {
                stats.FinishReason = FinishReason.Stop;
                yield break;
            }
            stats.OutputTokens++;
            yield return token;
            if (stats.OutputTokens >= maxNewTokens || cache.Length >= cache.Capacity)
            {
                stats.FinishReason = FinishReason.Length;
                yield break;
            }
            ct.ThrowIfCancellationRequested();
            decode.Start();
            logits = backend.Forward(cache, [token], LogitsSelection.LastToken);
            decode.Stop();
            stats.DecodeTime = decode.Elapsed;
        }
    }
}
