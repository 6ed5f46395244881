// The input checks every backend makes before a forward pass, written once so the CPU and CUDA backends refuse the
// same inputs with the same messages (a bad id, a step that does not fit, a block table that points outside the pool).
using SwiftKV.Engine.Sampling;
using SwiftKV.Engine.Serving;
using SwiftKV.Model;
using System.Runtime.CompilerServices;

namespace SwiftKV.Engine;

internal static class StepValidation
{
    /// <summary>A sequence cache holds 1..max_position_embeddings tokens.</summary>
    public static void Capacity(LlamaConfig config, int capacity)
    {
        if (capacity < 1 || capacity > config.MaxPositionEmbeddings)
            throw new ArgumentOutOfRangeException(nameof(capacity), capacity,
                $"cache capacity must be in 1..{config.MaxPositionEmbeddings} (max_position_embeddings).");
    }

    /// <summary>A single-sequence step: at least one token, every id in the vocabulary, room left in the cache.</summary>
    public static void Step(LlamaConfig config, ReadOnlySpan<int> tokens, int cached, int capacity)
    {
        if (tokens.IsEmpty) throw new ArgumentException("a forward step needs at least one token.", nameof(tokens));
        for (int t = 0; t < tokens.Length; t++)
            if ((uint)tokens[t] >= (uint)config.VocabSize)
                throw new ArgumentException($"token id {tokens[t]} at index {t} is outside the vocabulary [0, {config.VocabSize}).", nameof(tokens));
        if ((long)cached + tokens.Length > capacity)
            throw new ArgumentException(
                $"{tokens.Length} tokens do not fit the cache: it holds {cached} of {capacity} tokens ({capacity - cached} free).", nameof(tokens));
    }

    /// <summary>
    /// A single-sequence step's logits must fit one .NET array: every row of an AllTokens step is returned, so a long
    /// prompt of a large vocabulary (Llama 3: 16,744 rows of 128,256) is refused before anything runs.
    /// </summary>
    public static void Logits(LlamaConfig config, int rows, LogitsSelection selection)
    {
        long floats = (selection == LogitsSelection.AllTokens ? rows : 1) * (long)config.VocabSize;
        if (floats > Array.MaxLength)
            throw new ArgumentException(
                $"AllTokens logits of {rows} tokens x {config.VocabSize} vocabulary entries ({floats:N0} floats) exceed the largest array " +
                $"({Array.MaxLength:N0}): ask for LastToken, or run the prompt in steps of at most {Array.MaxLength / config.VocabSize} tokens.", nameof(selection));
    }

    /// <summary>ForwardBatchSample's picks: one valid <see cref="RowSampling"/> per sequence that gets logits, biases inside the vocabulary.</summary>
    public static void Sampling(LlamaConfig config, ReadOnlySpan<BatchSequence> batch, ReadOnlySpan<RowSampling> sampling)
    {
        int rows = 0;
        foreach (var s in batch) if (s.NeedsLogits) rows++;
        if (sampling.Length != rows)
            throw new ArgumentException($"{sampling.Length} row samplings for {rows} sequences that get logits (one each, in batch order).", nameof(sampling));
        for (int i = 0; i < sampling.Length; i++) sampling[i].Validate($"row sampling {i}", config.VocabSize);
    }

    /// <summary>A batched paged step: each sequence's tokens, positions and block table against the pool.</summary>
    // Optimized from the first call (it checks every token of a step): as tier-0 code, the first request after start
    // paid ~7 ms more TTFT on an H100 (2000 tokens: 49-51 ms against 43; NOTES, "The first request after start").
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Batch(LlamaConfig config, ReadOnlySpan<BatchSequence> batch, IPagedKvCache pool)
    {
        if (batch.IsEmpty) throw new ArgumentException("a batched step needs at least one sequence.", nameof(batch));
        for (int i = 0; i < batch.Length; i++)
        {
            var s = batch[i];
            if (s.Tokens.IsEmpty) throw new ArgumentException($"sequence {i} of the batch has no tokens.", nameof(batch));
            if (s.StartPosition < 0) throw new ArgumentException($"sequence {i}: StartPosition {s.StartPosition} is negative.", nameof(batch));
            var tokens = s.Tokens.Span;
            for (int t = 0; t < tokens.Length; t++)
                if ((uint)tokens[t] >= (uint)config.VocabSize)
                    throw new ArgumentException($"sequence {i}: token id {tokens[t]} at index {t} is outside the vocabulary [0, {config.VocabSize}).", nameof(batch));
            long end = (long)s.StartPosition + tokens.Length;
            if (end > config.MaxPositionEmbeddings)
                throw new ArgumentException($"sequence {i}: positions up to {end - 1} exceed max_position_embeddings {config.MaxPositionEmbeddings}.", nameof(batch));
            if (end > (long)s.BlockTable.Length * pool.BlockSize)
                throw new ArgumentException(
                    $"sequence {i}: its block table has {s.BlockTable.Length} blocks ({(long)s.BlockTable.Length * pool.BlockSize} positions) but the step reaches position {end - 1}.", nameof(batch));
            var table = s.BlockTable.Span;
            for (int b = 0; b < table.Length; b++)
                if ((uint)table[b] >= (uint)pool.NumBlocks)
                    throw new ArgumentException($"sequence {i}: block id {table[b]} at table index {b} is outside the pool [0, {pool.NumBlocks}).", nameof(batch));
        }
    }
}
