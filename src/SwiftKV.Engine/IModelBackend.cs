// The one interface every compute backend (CPU now, CUDA next) implements. The engine above it owns
// requests, sampling and scheduling; a backend owns weights, KV memory and the forward pass.
using SwiftKV.Model;

namespace SwiftKV.Engine;

/// <summary>Which rows of logits a forward pass returns.</summary>
public enum LogitsSelection
{
    /// <summary>Only the last token of the step. With SwiftKV on, only this token runs layers l..L-1 (the prefill saving).</summary>
    LastToken,
    /// <summary>Every token of the step. With SwiftKV on, every token runs layers l..L-1 with the SwiftKV projections
    /// (the exactness reference and the parity dump; no prefill saving).</summary>
    AllTokens,
}

/// <summary>The KV cache of one sequence on one backend. Disposing it frees its memory.</summary>
public interface ISequenceCache : IDisposable
{
    /// <summary>Tokens whose K/V are cached.</summary>
    int Length { get; }
    /// <summary>Most tokens this cache can hold.</summary>
    int Capacity { get; }
    /// <summary>Bytes of K/V storage held (AcrossKV shares one cache per group, so this shrinks with g).</summary>
    long KvBytes { get; }
}

/// <summary>A model loaded on a device, able to run forward passes over sequences' caches.</summary>
public interface IModelBackend : IDisposable
{
    /// <summary>"cpu" or "cuda:0".</summary>
    string Name { get; }
    LlamaConfig Config { get; }
    /// <summary>True when the model runs the SwiftKV path (a SwiftKV checkpoint loaded with SwiftKV on).</summary>
    bool SwiftKvEnabled { get; }

    /// <summary>Allocates a cache for up to <paramref name="capacity"/> tokens (at most max_position_embeddings).</summary>
    ISequenceCache CreateCache(int capacity);

    /// <summary>
    /// Appends <paramref name="tokens"/> at positions cache.Length.. and returns the selected rows of logits,
    /// row-major (rows, vocab_size). Throws <see cref="ArgumentException"/> when the tokens do not fit the cache
    /// or an id is outside the vocabulary.
    /// </summary>
    float[] Forward(ISequenceCache cache, ReadOnlySpan<int> tokens, LogitsSelection selection);
}
