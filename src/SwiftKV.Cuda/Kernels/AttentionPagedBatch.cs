// The varlen batch of one paged attention launch, as device arrays so that a captured CUDA graph replays with new
// contents: the engine rewrites the arrays before each replay and keeps the scalar bounds of the capture.
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// <paramref name="Sequences"/> sequences in one launch. Sequence s owns query (and output) rows
/// QueryStarts[s] .. QueryStarts[s+1]-1 (cu_seqlens style, QueryStarts[0] = 0, Sequences + 1 entries), holds
/// ContextLengths[s] positions after this step (its rows sit at the last QueryStarts[s+1] - QueryStarts[s] of them),
/// and its block table is BlockTables[s · MaxBlocksPerSequence ..]. The scalars are bounds fixed at launch (or graph
/// capture): TotalTokens rows of q and out, at most MaxQueryLength rows and MaxContextLength positions per sequence;
/// they choose the grid and the split-K. A sequence with no rows (graph padding) is skipped.
/// <paramref name="SplitKeysOnDevice"/>: the split count still comes from the bounds, but each sequence divides its own
/// keys over the splits on the device (instead of every sequence taking MaxContextLength / splits keys per split), so
/// a graph captured with a bound far above the actual contexts keeps every split busy.
/// </summary>
public readonly record struct AttentionPagedBatch(
    DeviceSpan<int> QueryStarts, DeviceSpan<int> ContextLengths, DeviceSpan<int> BlockTables, int MaxBlocksPerSequence,
    int Sequences, int TotalTokens, int MaxQueryLength, int MaxContextLength, bool SplitKeysOnDevice = false)
{
    internal void Check(string kernel, int blockSize)
    {
        KernelGuard.Positive(Sequences, kernel, nameof(Sequences));
        KernelGuard.Positive(TotalTokens, kernel, nameof(TotalTokens));
        KernelGuard.Positive(MaxBlocksPerSequence, kernel, nameof(MaxBlocksPerSequence));
        if (MaxQueryLength < 1 || MaxQueryLength > TotalTokens)
            throw new ArgumentOutOfRangeException(nameof(MaxQueryLength), MaxQueryLength, $"{kernel}: max query length must be in 1..{TotalTokens} (total tokens).");
        if (MaxContextLength < MaxQueryLength)
            throw new ArgumentOutOfRangeException(nameof(MaxContextLength), MaxContextLength, $"{kernel}: max context length must be >= max query length ({MaxQueryLength}).");
        if ((long)MaxBlocksPerSequence * blockSize < MaxContextLength)
            throw new ArgumentOutOfRangeException(nameof(MaxBlocksPerSequence), MaxBlocksPerSequence,
                $"{kernel}: {MaxBlocksPerSequence} blocks of {blockSize} positions cannot hold a context of {MaxContextLength}.");
        KernelGuard.Fits(QueryStarts, (long)Sequences + 1, kernel, nameof(QueryStarts), $"({Sequences} + 1)");
        KernelGuard.Fits(ContextLengths, Sequences, kernel, nameof(ContextLengths), $"({Sequences})");
        KernelGuard.Fits(BlockTables, (long)Sequences * MaxBlocksPerSequence, kernel, nameof(BlockTables), $"({Sequences}, {MaxBlocksPerSequence})");
    }

    /// <summary>
    /// Checks host copies of the arrays before they are uploaded (the kernels trust them): query starts from 0,
    /// non-decreasing, ending at most at <paramref name="totalTokens"/>; each sequence's rows fit its context, its
    /// context its table, and every block id it uses lies in 0..numBlocks-1. Throws <see cref="ArgumentException"/>
    /// naming the sequence.
    /// </summary>
    public static void CheckHost(ReadOnlySpan<int> queryStarts, ReadOnlySpan<int> contextLengths, ReadOnlySpan<int> blockTables,
        int maxBlocksPerSequence, int blockSize, int numBlocks, int totalTokens)
    {
        int seqs = contextLengths.Length;
        if (queryStarts.Length != seqs + 1)
            throw new ArgumentException($"paged attention: {queryStarts.Length} query starts for {seqs} sequences (expected {seqs + 1}).", nameof(queryStarts));
        if (blockTables.Length < (long)seqs * maxBlocksPerSequence)
            throw new ArgumentException($"paged attention: block tables hold {blockTables.Length} entries, {seqs} x {maxBlocksPerSequence} needed.", nameof(blockTables));
        if (queryStarts[0] != 0) throw new ArgumentException($"paged attention: query starts must begin at 0 (got {queryStarts[0]}).", nameof(queryStarts));
        for (int s = 0; s < seqs; s++)
        {
            int rows = queryStarts[s + 1] - queryStarts[s], ctx = contextLengths[s];
            if (rows < 0 || queryStarts[s + 1] > totalTokens)
                throw new ArgumentException($"paged attention: sequence {s}: rows {queryStarts[s]}..{queryStarts[s + 1] - 1} are not inside 0..{totalTokens - 1}.", nameof(queryStarts));
            if (ctx < rows) throw new ArgumentException($"paged attention: sequence {s}: context {ctx} is shorter than its {rows} query rows.", nameof(contextLengths));
            if (ctx > (long)maxBlocksPerSequence * blockSize)
                throw new ArgumentException($"paged attention: sequence {s}: context {ctx} exceeds {maxBlocksPerSequence} blocks of {blockSize}.", nameof(contextLengths));
            int used = (ctx + blockSize - 1) / blockSize;
            for (int i = 0; i < used; i++)
            {
                int id = blockTables[s * maxBlocksPerSequence + i];
                if ((uint)id >= (uint)numBlocks)
                    throw new ArgumentException($"paged attention: sequence {s}: block table entry {i} is {id}, outside 0..{numBlocks - 1}.", nameof(blockTables));
            }
        }
    }
}
