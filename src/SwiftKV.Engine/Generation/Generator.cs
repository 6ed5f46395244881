// The single-sequence generation loop: prefill the prompt in forward passes that ask for the last token's logits
// only (with SwiftKV, that is where prompt tokens skip layers l..L-1), then decode one token per step. The prompt
// goes in one pass unless the caller bounds it (prefillChunk), which is what lets a cancelled call stop between
// chunks instead of after a whole long prefill. Arguments are checked when Generate is called, before any forward pass; the loop itself is lazy.
using System.Diagnostics;
using SwiftKV.Engine.Sampling;

namespace SwiftKV.Engine.Generation;

public static class Generator
{
    /// <summary>
    /// Generates up to <paramref name="maxNewTokens"/> tokens after <paramref name="promptTokens"/>, appending to
    /// <paramref name="cache"/>. Yields each generated id; a stop token ends generation without being yielded.
    /// </summary>
    /// <remarks>An optional <c>constraint</c> masks every logits row before sampling (e.g. a JSON grammar).
    /// <c>prefillChunk</c> &gt; 0 prefills at most that many tokens per forward pass, checking <paramref name="ct"/>
    /// between passes (0: the whole prompt in one pass).</remarks>
    /// <exception cref="ArgumentException">The prompt is empty or does not fit the cache / model context.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxNewTokens"/> is not positive.</exception>
    /// <exception cref="OperationCanceledException">Thrown during enumeration once <paramref name="ct"/> is cancelled.</exception>
    public static IEnumerable<int> Generate(
        IModelBackend backend, ISequenceCache cache, IReadOnlyList<int> promptTokens, SamplingParams sampling,
        int maxNewTokens, IReadOnlySet<int> stopTokenIds, GenerationStats stats, CancellationToken ct = default,
        ILogitsConstraint? constraint = null, int prefillChunk = 0)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(promptTokens);
        ArgumentNullException.ThrowIfNull(sampling);
        ArgumentNullException.ThrowIfNull(stopTokenIds);
        ArgumentNullException.ThrowIfNull(stats);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxNewTokens);
        ArgumentOutOfRangeException.ThrowIfNegative(prefillChunk);
        if (promptTokens.Count == 0) throw new ArgumentException("the prompt is empty.", nameof(promptTokens));
        int context = Math.Min(cache.Capacity, backend.Config.MaxPositionEmbeddings);
        if ((long)cache.Length + promptTokens.Count >= cache.Capacity || promptTokens.Count > backend.Config.MaxPositionEmbeddings)
            throw new ArgumentException(
                $"prompt of {promptTokens.Count} tokens does not fit the context of {context} tokens"
                + (cache.Length > 0 ? $" ({cache.Length} already cached)." : "."),
                nameof(promptTokens));
        return Run(backend, cache, promptTokens.ToArray(), new Sampler(sampling), maxNewTokens, stopTokenIds, stats, ct, constraint,
            prefillChunk > 0 ? prefillChunk : promptTokens.Count);
    }

    static IEnumerable<int> Run(
        IModelBackend backend, ISequenceCache cache, int[] prompt, Sampler sampler,
        int maxNewTokens, IReadOnlySet<int> stopTokenIds, GenerationStats stats, CancellationToken ct,
        ILogitsConstraint? constraint, int prefillChunk)
    {
        ct.ThrowIfCancellationRequested();
        stats.PromptTokens = prompt.Length;
        var total = Stopwatch.StartNew();
        float[] logits = [];
        for (int start = 0; start < prompt.Length; start += prefillChunk)
        {
            if (start > 0) ct.ThrowIfCancellationRequested();
            logits = backend.Forward(cache, prompt.AsSpan(start, Math.Min(prefillChunk, prompt.Length - start)), LogitsSelection.LastToken);
            stats.PrefillPasses++;
        }
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
