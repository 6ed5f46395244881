// Decides what one step computes. There is no prefill phase and no decode phase: every running sequence has
// known tokens (prompt + sampled) and computed tokens (K/V cached), and a step lets computed catch up within a
// token budget. Order: running sequences one token behind (decodes) first, then running sequences further behind
// (prefill and recompute chunks, FCFS), then new admissions FCFS while budget, sequence slots and blocks last.
// A long prompt is therefore split into chunks and never stalls the decoders.
//
// Memory: admission allocates blocks for all of a sequence's known tokens at once (minus prefix-cache hits) and
// only when a reserve stays free, so an admitted prompt never waits for blocks mid-prefill and nothing is
// promised that does not exist. A decode that crosses a block boundary takes one block; if none is free the
// latest-admitted running sequence is preempted (blocks freed, put back at the head of the queue, its tokens
// recomputed on readmission, mostly from the prefix cache).
//
// SwiftKV: a chunk asks for logits only when it reaches the known end; the backend runs layers l..L-1 for those
// rows alone, so a prefill chunk that does not end its prompt never enters them.
using System.Runtime.CompilerServices;

namespace SwiftKV.Engine.Serving;

/// <summary>One sequence's share of a step.</summary>
internal readonly record struct ScheduledChunk(Sequence Sequence, int Start, int Count, bool NeedsLogits);

/// <summary>What one step computes.</summary>
internal sealed class ScheduledStep
{
    public List<ScheduledChunk> Chunks { get; } = [];
    public int NumTokens { get; set; }
    /// <summary>Sequences preempted while this step was planned (already back in the waiting queue).</summary>
    public List<Sequence> Preempted { get; } = [];
    public bool IsEmpty => Chunks.Count == 0;
}

internal sealed class Scheduler
{
    readonly KvBlockManager _blocks;
    readonly LinkedList<Sequence> _waiting = new();
    readonly List<Sequence> _running = [];

    public Scheduler(KvBlockManager blocks, int maxBatchTokens, int maxRunningSequences, int reserveBlocks, bool reserveOutputs = false)
    {
        ReserveOutputs = reserveOutputs;
        ArgumentNullException.ThrowIfNull(blocks);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxBatchTokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxRunningSequences);
        ArgumentOutOfRangeException.ThrowIfNegative(reserveBlocks);
        _blocks = blocks;
        MaxBatchTokens = maxBatchTokens;
        MaxRunningSequences = maxRunningSequences;
        ReserveBlocks = reserveBlocks;
    }

    public int MaxBatchTokens { get; }
    public int MaxRunningSequences { get; }
    public int ReserveBlocks { get; }
    /// <summary>Admission keeps free the blocks every running sequence still needs to reach prompt + maxTokens.</summary>
    public bool ReserveOutputs { get; }
    public int WaitingCount => _waiting.Count;
    public int RunningCount => _running.Count;
    public long Preemptions { get; private set; }
    public KvBlockManager Blocks => _blocks;
    public bool HasWork => _waiting.Count > 0 || _running.Count > 0;

    /// <summary>Queues a new sequence (FCFS).</summary>
    public void Add(Sequence seq)
    {
        seq.Status = SequenceStatus.Waiting;
        _waiting.AddLast(seq);
    }

    /// <summary>Removes a sequence wherever it is and frees its blocks at once (finish or cancel).</summary>
    public void Finish(Sequence seq)
    {
        if (seq.Status == SequenceStatus.Finished) return;
        if (seq.Status == SequenceStatus.Running) _running.Remove(seq);
        else _waiting.Remove(seq);
        _blocks.Free(seq.Blocks);
        seq.Status = SequenceStatus.Finished;
    }

    // Optimized from the first call (it runs once per step): as tier-0 code, the first request after start paid ~7 ms
    // more TTFT on an H100 (2000 tokens: 49-51 ms against 43; NOTES, "The first request after start").
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public ScheduledStep Schedule()
    {
        var step = new ScheduledStep();
        int budget = MaxBatchTokens;

        // 1. Decodes: one token each, taking a block when the token starts one; preempt from the back if needed.
        for (int i = 0; i < _running.Count && budget > 0; i++)
        {
            var seq = _running[i];
            if (seq.KnownTokens - seq.ComputedTokens != 1) continue;
            bool preemptedSelf = false;
            while (!_blocks.TryGrow(seq.Blocks, seq.KnownTokens))
            {
                var victim = _running[^1];
                Preempt(victim, step);
                if (ReferenceEquals(victim, seq)) { preemptedSelf = true; break; }
            }
            if (preemptedSelf) break;
            step.Chunks.Add(new ScheduledChunk(seq, seq.ComputedTokens, 1, NeedsLogits: true));
            step.NumTokens++;
            budget--;
        }

        // 2. Running prefills and recomputes, FCFS; their blocks were allocated at admission.
        foreach (var seq in _running)
        {
            if (budget == 0) break;
            int behind = seq.KnownTokens - seq.ComputedTokens;
            if (behind <= 1) continue;
            budget -= AddChunk(step, seq, budget);
        }

        // 3. Admissions, strictly FCFS: if the head does not fit, nobody behind it jumps the queue.
        //    With ReserveOutputs the blocks every admitted sequence will still grow into stay free as well.
        int growth = 0;
        if (ReserveOutputs && _waiting.Count > 0)
            foreach (var seq in _running) growth += FutureBlocks(seq);
        while (budget > 0 && _waiting.First is { } node && _running.Count < MaxRunningSequences)
        {
            var seq = node.Value;
            int own = ReserveOutputs ? _blocks.BlocksFor(seq.PromptLength + seq.MaxTokens) - _blocks.BlocksFor(seq.KnownTokens) : 0;
            int cached = _blocks.TryAllocatePrefix(seq.Blocks, seq.Tokens, seq.KnownTokens, ReserveBlocks + growth + own,
                countLookup: seq.CachedPromptTokens < 0);   // a readmission after preemption is not a new lookup
            if (cached < 0) break;
            growth += own;
            _waiting.RemoveFirst();
            if (seq.CachedPromptTokens < 0) seq.CachedPromptTokens = Math.Min(cached, seq.PromptLength);
            seq.ComputedTokens = cached;
            seq.Status = SequenceStatus.Running;
            _running.Add(seq);
            budget -= AddChunk(step, seq, budget);
        }
        return step;
    }

    /// <summary>Blocks a running sequence still takes before it reaches prompt + maxTokens.</summary>
    int FutureBlocks(Sequence seq) => Math.Max(0, _blocks.BlocksFor(seq.PromptLength + seq.MaxTokens) - seq.Blocks.Count);

    static int AddChunk(ScheduledStep step, Sequence seq, int budget)
    {
        int behind = seq.KnownTokens - seq.ComputedTokens;
        int count = Math.Min(behind, budget);
        step.Chunks.Add(new ScheduledChunk(seq, seq.ComputedTokens, count, NeedsLogits: count == behind));
        step.NumTokens += count;
        return count;
    }

    void Preempt(Sequence victim, ScheduledStep step)
    {
        _running.Remove(victim);
        _blocks.Free(victim.Blocks);
        victim.ComputedTokens = 0;
        victim.Preemptions++;
        victim.Status = SequenceStatus.Waiting;
        _waiting.AddFirst(victim);
        step.Preempted.Add(victim);
        Preemptions++;
    }

    /// <summary>After the step ran: its chunks are computed; full blocks join the prefix cache.</summary>
    public void Complete(ScheduledStep step)
    {
        foreach (var c in step.Chunks)
        {
            var seq = c.Sequence;
            if (seq.Status != SequenceStatus.Running) continue;
            seq.ComputedTokens = c.Start + c.Count;
            _blocks.CommitFullBlocks(seq.Blocks, seq.Tokens, seq.ComputedTokens);
        }
    }
}
