// The shape of bench's batched decode case: B sequences that each hold a filled context, then warm-up and timed
// decode steps of one new token per sequence over a paged KV pool. Kept apart from BenchCommand so the pool sizing,
// the block tables and the prefill chunking can be checked without a GPU.
// Block ids are interleaved across sequences (block j of sequence s is j * B + s), so no sequence reads one long
// contiguous run of the pool: closer to a serving pool after many admissions than B private slabs would be.
namespace SwiftKV.Cli;

/// <summary>One sequence's slice of a batched prefill step: tokens Start..Start+Count-1 of sequence Seq.</summary>
internal readonly record struct PrefillChunk(int Seq, int Start, int Count, bool EndsContext);

internal sealed record BatchedDecodePlan
{
    public BatchedDecodePlan(int batch, int context, int warmupSteps, int timedSteps, int blockSize, int maxPrefillTokens)
    {
        if (batch < 1 || context < 1 || warmupSteps < 0 || timedSteps < 1 || blockSize < 1 || maxPrefillTokens < 1)
            throw new ArgumentException($"batched decode plan: batch {batch}, context {context}, timed steps {timedSteps}, block size {blockSize} and " +
                $"prefill budget {maxPrefillTokens} must be >= 1, warm-up steps {warmupSteps} >= 0.");
        Batch = batch;
        Context = context;
        WarmupSteps = warmupSteps;
        TimedSteps = timedSteps;
        BlockSize = blockSize;
        MaxPrefillTokens = maxPrefillTokens;
        if ((long)batch * BlocksPerSequence * blockSize > int.MaxValue)
            throw new ArgumentException($"batched decode plan: {batch} sequences x {PositionsPerSequence} positions do not fit one pool.");
    }

    public int Batch { get; }
    public int Context { get; }
    public int WarmupSteps { get; }
    public int TimedSteps { get; }
    public int BlockSize { get; }
    public int MaxPrefillTokens { get; }

    /// <summary>Positions each sequence ends with: its context plus one per decode step.</summary>
    public int PositionsPerSequence => Context + WarmupSteps + TimedSteps;

    public int BlocksPerSequence => BlocksFor(PositionsPerSequence);

    /// <summary>Blocks the pool needs so every sequence's table can grow to its last position.</summary>
    public int TotalBlocks => checked(Batch * BlocksPerSequence);

    /// <summary>Blocks covering positions 0..positions-1.</summary>
    public int BlocksFor(int positions) => (positions + BlockSize - 1) / BlockSize;

    /// <summary>Sequence <paramref name="seq"/>'s full block table (pass a prefix of BlocksFor(positions) to a step).</summary>
    public int[] Table(int seq)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(seq);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(seq, Batch);
        var t = new int[BlocksPerSequence];
        for (int j = 0; j < t.Length; j++) t[j] = j * Batch + seq;
        return t;
    }

    /// <summary>
    /// Mean positions one sequence's attention reads over the timed steps: timed step i (0-based) decodes the token
    /// at position Context + WarmupSteps + i and attends to that many positions plus itself.
    /// </summary>
    public double MeanTimedContext => Context + WarmupSteps + (TimedSteps + 1) / 2.0;

    /// <summary>
    /// The prefill as batched steps of at most <see cref="MaxPrefillTokens"/> tokens: sequences in order, each context
    /// cut where a step fills up (so a context longer than the budget spans several steps).
    /// </summary>
    public IEnumerable<PrefillChunk[]> PrefillSteps()
    {
        var step = new List<PrefillChunk>();
        int room = MaxPrefillTokens;
        for (int s = 0; s < Batch; s++)
        {
            int start = 0;
            while (start < Context)
            {
                int n = Math.Min(room, Context - start);
                step.Add(new PrefillChunk(s, start, n, start + n == Context));
                start += n;
                room -= n;
                if (room == 0)
                {
                    yield return [.. step];
                    step.Clear();
                    room = MaxPrefillTokens;
                }
            }
        }
        if (step.Count > 0) yield return [.. step];
    }
}
