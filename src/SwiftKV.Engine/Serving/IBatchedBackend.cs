// The batched, paged step contract a serving engine drives (CPU now, CUDA next). One call runs many sequences at
// once; each contributes a chunk of new tokens (a decode token, a prefill chunk, or the chunk that ends its prompt)
// and a block table into one shared paged KV cache. There is no prefill phase and no decode phase: a chunk is just
// "computed tokens catching up with known tokens".
// SwiftKV: rows whose logits nobody reads stop after layer l-1 plus the later layers' K/V projections, so the
// later-layer batch holds one row per sequence with NeedsLogits (decode tokens and last prompt tokens) and nothing else.
// Paged KV layout per distinct cache: (num_blocks, block_size, num_kv_heads, head_dim); keys stored after RoPE.
// Position p of a sequence lives in block BlockTable[p / block_size], slot p % block_size.
using SwiftKV.Engine.Sampling;

namespace SwiftKV.Engine.Serving;

/// <summary>One sequence's part of a batched step.</summary>
/// <param name="Tokens">The new tokens, at positions StartPosition.. (at least one).</param>
/// <param name="StartPosition">Tokens of this sequence whose K/V are already in the cache (its computed length).</param>
/// <param name="BlockTable">Block ids holding positions 0..StartPosition + Tokens.Length - 1, in order.</param>
/// <param name="NeedsLogits">Return logits for the chunk's last token (it ends the known tokens: a decode token or a prompt's end).</param>
public readonly record struct BatchSequence(ReadOnlyMemory<int> Tokens, int StartPosition, ReadOnlyMemory<int> BlockTable, bool NeedsLogits);

/// <summary>
/// A pool of KV blocks on one backend. Every block holds <see cref="BlockSize"/> positions of EVERY distinct cache
/// (one per full layer plus one per AcrossKV group), so one block table per sequence serves all caches and the
/// bytes per block shrink with AcrossKV. Disposing it frees the memory.
/// </summary>
public interface IPagedKvCache : IDisposable
{
    int NumBlocks { get; }
    /// <summary>Positions per block.</summary>
    int BlockSize { get; }
    /// <summary>Distinct caches per block: config.NumKvCaches(swiftKvEnabled).</summary>
    int NumCaches { get; }
    /// <summary>Bytes of K and V storage one block holds across all its caches.</summary>
    long BytesPerBlock { get; }
}

/// <summary>A backend that can run a batched step over a paged KV cache (implemented next to <see cref="IModelBackend"/>).</summary>
public interface IBatchedBackend
{
    /// <summary>
    /// Whether this instance can run <see cref="ForwardBatch"/> at all (a backend may implement the contract but
    /// lack it for some shapes, e.g. CUDA's paged attention needs head_dim 64 or 128). Hosts fall back to serial
    /// per-sequence forwards when false.
    /// </summary>
    bool SupportsBatchedStep => true;

    /// <summary>Bytes of K/V one token position needs across all of this model's distinct caches.</summary>
    long KvBytesPerToken { get; }

    /// <summary>Most sequences one batched step can hold (CUDA: a kernel grid's limit); the serving engine refuses a larger MaxRunningSequences.</summary>
    int MaxSequencesPerStep => int.MaxValue;

    /// <summary>
    /// Positions per KV block a serving engine uses for a pool of <paramref name="dtype"/> when its options leave the
    /// block size open: the size this backend's paged attention runs fastest with.
    /// </summary>
    int PreferredBlockSize(KvCacheDtype dtype) => 16;

    /// <summary>Most sequences a serving engine runs at once when its options leave it open.</summary>
    int PreferredMaxRunningSequences => Math.Min(64, MaxSequencesPerStep);

    /// <summary>
    /// Tokens per step (the prefill chunk) a serving engine uses when its options leave it open. Small by default: a
    /// backend without large-matrix throughput gains nothing from bigger chunks and stalls decoding requests longer.
    /// </summary>
    int PreferredMaxBatchTokens => 512;

    /// <summary>
    /// Allocates now what a step of <paramref name="maxBatchTokens"/> tokens over <paramref name="maxSequences"/>
    /// sequences needs besides the KV pool (a GPU backend's activation workspace), so that a pool sized afterwards
    /// leaves it room. Like a step, it must not run while another call uses this backend (the engine calls it before
    /// its loop starts). A backend that allocates per step needs nothing here.
    /// </summary>
    void ReserveStepWorkspace(int maxBatchTokens, int maxSequences) { }

    /// <summary>
    /// Ends one <see cref="ReserveStepWorkspace"/> made with the same arguments (an engine that is disposed, or whose
    /// construction failed after reserving): the workspace may shrink back to what the reservations still alive ask
    /// for, so a later engine on the same backend starts from its own needs, not from the largest ever reserved.
    /// </summary>
    void ReleaseStepWorkspace(int maxBatchTokens, int maxSequences) { }

    /// <summary>
    /// KV bytes a serving engine takes when its options leave the budget open (after <see cref="ReserveStepWorkspace"/>):
    /// a GPU backend answers with most of its device's free memory.
    /// </summary>
    long PreferredKvCacheBytes() => 1L << 30;

    /// <summary>Allocates a paged KV pool of <paramref name="numBlocks"/> blocks of <paramref name="blockSize"/> positions.</summary>
    IPagedKvCache CreatePagedKvCache(int numBlocks, int blockSize);

    /// <summary>Bytes of K/V per token in a pool of <paramref name="dtype"/>; a backend with one storage type ignores it.</summary>
    long KvBytesPerTokenOf(KvCacheDtype dtype) => KvBytesPerToken;

    /// <summary>A pool of <paramref name="dtype"/> elements; a backend with one storage type (the CPU's fp32) ignores it.</summary>
    IPagedKvCache CreatePagedKvCache(int numBlocks, int blockSize, KvCacheDtype dtype) => CreatePagedKvCache(numBlocks, blockSize);

    /// <summary>
    /// Runs one step: writes every chunk's K/V into its blocks and returns one row of logits per sequence with
    /// <see cref="BatchSequence.NeedsLogits"/>, in batch order, row-major (rows, vocab_size). Each row equals the
    /// logits that sequence would get run alone. Throws <see cref="ArgumentException"/> naming the sequence when a
    /// chunk is empty, an id is outside the vocabulary, or its block table does not cover its positions.
    /// </summary>
    float[] ForwardBatch(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch);
}

/// <summary>
/// Optional device-side token pick for a batched backend: the step of <see cref="IBatchedBackend.ForwardBatch"/>, but
/// the logits rows stay on the backend and only their argmax crosses back. A 128K-vocabulary fp32 row is 512 KB, so
/// at hundreds of sequences per step copying and scanning logits on the host would cost more than the step's tail.
/// The serving engine picks every row there: greedy rows take the argmax, sampled rows a draw on the backend
/// (temperature, top-k, top-p), either after the row's mask (a logits constraint) and bias (penalties) are applied.
/// An implementation must apply both (<see cref="RowSampling.Pick"/> does): the engine sends constrained and penalised
/// requests' rows here too.
/// </summary>
public interface IGreedyBatchedBackend : IBatchedBackend
{
    /// <summary>
    /// Runs one step exactly as <see cref="IBatchedBackend.ForwardBatch"/> does and returns, for each sequence with
    /// <see cref="BatchSequence.NeedsLogits"/> in batch order, the argmax of its logits row (lowest id on ties, as
    /// <c>Sampler.Greedy</c>), or -1 for a row with no logit above -inf (NaN or -inf everywhere: the caller fails that
    /// sequence alone). Same validation and exceptions.
    /// </summary>
    int[] ForwardBatchGreedy(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch);

    /// <summary>
    /// Runs one step as <see cref="IBatchedBackend.ForwardBatch"/> does and picks each logits row's token on the backend
    /// by <paramref name="sampling"/> (one per sequence with <see cref="BatchSequence.NeedsLogits"/>, in batch order):
    /// the row's <see cref="RowSampling.Mask"/> and <see cref="RowSampling.Bias"/> applied (a mask still being computed
    /// is awaited once the step is queued), then temperature 0 is <see cref="ForwardBatchGreedy"/>'s argmax,
    /// otherwise <see cref="RowSampling"/>'s rule. Returns the ids in that order, -1 for a row with no logit above
    /// -inf. A wrong count or an invalid pick (a bias token outside the vocabulary among them) throws
    /// <see cref="ArgumentException"/> before the step runs; a mask of the wrong length once it is known (the step's
    /// K/V are written by then, as a retry of the step would write them).
    /// </summary>
    int[] ForwardBatchSample(IPagedKvCache kv, ReadOnlySpan<BatchSequence> batch, ReadOnlySpan<RowSampling> sampling);
}
