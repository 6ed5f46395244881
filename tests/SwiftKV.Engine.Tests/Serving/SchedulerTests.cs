// Scheduler decisions without a model: the token budget, decode-first ordering, chunked prefill with logits only
// at a prompt's end (the SwiftKV cut), FCFS admission limits, preemption from the back with recompute, and frees.
// A step is "run" by marking its chunks computed and appending a fake sampled token where logits were asked for.
using SwiftKV.Engine.Serving;
using Xunit;

namespace SwiftKV.Engine.Tests.Serving;

public class SchedulerTests
{
    static int _ids;
    // Every sequence gets different prompt tokens, so nothing is shared unless a test says so.
    static Sequence Seq(int promptLength, int maxTokens = 8)
    {
        int id = Interlocked.Increment(ref _ids);
        return new(id, Enumerable.Range(id * 1000, promptLength).ToArray(), maxTokens);
    }

    static void Run(Scheduler s, ScheduledStep step)
    {
        s.Complete(step);
        foreach (var c in step.Chunks)
            if (c.NeedsLogits) c.Sequence.Append(7);
    }

    [Fact]
    public void Schedule_LongPrompt_ChunkedWithinBudget_LogitsOnlyAtPromptEnd()
    {
        var s = new Scheduler(new KvBlockManager(32, 4), maxBatchTokens: 10, maxRunningSequences: 4, reserveBlocks: 0);
        var seq = Seq(25);
        s.Add(seq);
        int[] expected = [10, 10, 5];
        for (int i = 0; i < 3; i++)
        {
            var step = s.Schedule();
            var c = Assert.Single(step.Chunks);
            Assert.Equal(expected[i], c.Count);
            Assert.Equal(i == 2, c.NeedsLogits);
            Run(s, step);
        }
        var decode = Assert.Single(s.Schedule().Chunks);
        Assert.Equal((25, 1, true), (decode.Start, decode.Count, decode.NeedsLogits));
    }

    [Fact]
    public void Schedule_DecodesFirst_ThenPrefillChunks_BudgetNeverExceeded()
    {
        var s = new Scheduler(new KvBlockManager(64, 4), maxBatchTokens: 8, maxRunningSequences: 8, reserveBlocks: 0);
        var a = Seq(3); var b = Seq(3);
        s.Add(a); s.Add(b);
        Run(s, s.Schedule());                      // both prompts in one step (6 tokens)
        var late = Seq(30);
        s.Add(late);
        for (int i = 0; i < 4; i++)
        {
            var step = s.Schedule();
            Assert.True(step.NumTokens <= 8);
            Assert.Equal(step.Chunks.Sum(c => c.Count), step.NumTokens);
            Assert.Same(a, step.Chunks[0].Sequence);
            Assert.Same(b, step.Chunks[1].Sequence);
            Assert.Equal(1, step.Chunks[0].Count);
            var prefill = step.Chunks[2];
            Assert.Same(late, prefill.Sequence);
            Assert.Equal(6, prefill.Count);        // the decoders keep going while the long prompt is chunked
            Assert.False(prefill.NeedsLogits);
            Run(s, step);
        }
    }

    [Fact]
    public void Schedule_AdmissionIsFcfsAndLimitedBySlotsAndBlocks()
    {
        var m = new KvBlockManager(6, 4);
        var s = new Scheduler(m, maxBatchTokens: 100, maxRunningSequences: 2, reserveBlocks: 1);
        var a = Seq(8); var b = Seq(8); var c = Seq(2);
        s.Add(a); s.Add(b); s.Add(c);
        var step = s.Schedule();
        // a takes 2 blocks, b would leave 2 free >= reserve 1 -> admitted; c blocked by the slot limit.
        Assert.Equal(new[] { a, b }, step.Chunks.Select(x => x.Sequence));
        Assert.Equal(1, s.WaitingCount);
        Assert.Equal(4, m.UsedBlocks);

        var s2 = new Scheduler(new KvBlockManager(5, 4), 100, 8, reserveBlocks: 1);
        var big = Seq(16); var small = Seq(1);
        s2.Add(Seq(4)); s2.Add(big); s2.Add(small);
        var step2 = s2.Schedule();
        // big needs 4 of the 4 left, which would eat the reserve: it waits, and small may not jump ahead of it.
        Assert.Single(step2.Chunks);
        Assert.Equal(2, s2.WaitingCount);
    }

    [Fact]
    public void Schedule_OutOfBlocks_PreemptsLatestAndRecomputesIt()
    {
        var m = new KvBlockManager(4, 2);
        var s = new Scheduler(m, maxBatchTokens: 16, maxRunningSequences: 4, reserveBlocks: 0);
        var a = Seq(4); var b = Seq(4);
        s.Add(a); s.Add(b);
        Run(s, s.Schedule());                      // 4 blocks used; both sampled one token (known 5)
        Assert.Equal(0, m.FreeBlocks);

        var step = s.Schedule();                   // a's token 5 needs a third block: b (latest) is preempted
        var only = Assert.Single(step.Chunks);
        Assert.Same(a, only.Sequence);
        Assert.Same(b, Assert.Single(step.Preempted));
        Assert.Equal(SequenceStatus.Waiting, b.Status);
        Assert.Equal(0, b.ComputedTokens);
        Assert.Equal(1, s.Preemptions);
        Run(s, step);

        s.Finish(a);
        var re = s.Schedule();                     // b comes back: prompt + its sampled token recomputed
        var chunk = Assert.Single(re.Chunks);
        Assert.Same(b, chunk.Sequence);
        // a's new block evicted b's LAST cached block (tails go first); b's first block was still cached.
        Assert.Equal(2, chunk.Start);
        Assert.Equal(3, chunk.Count);
        Assert.True(chunk.NeedsLogits);
    }

    [Fact]
    public void Schedule_ReserveOutputs_AdmitsOnlyWhatCanFinish_NeverPreempts()
    {
        // 8 blocks of 2: each sequence needs 2 blocks for its prompt and 4 to finish (prompt 4 + 4 outputs).
        var m = new KvBlockManager(8, 2, enablePrefixCaching: false);
        var s = new Scheduler(m, maxBatchTokens: 64, maxRunningSequences: 8, reserveBlocks: 0, reserveOutputs: true);
        var seqs = Enumerable.Range(0, 3).Select(_ => Seq(4, maxTokens: 4)).ToArray();
        foreach (var q in seqs) s.Add(q);
        var first = s.Schedule();
        Assert.Equal(2, first.Chunks.Count);          // the third would leave too few blocks for the first two to finish
        Assert.Equal(1, s.WaitingCount);
        Run(s, first);
        for (int i = 0; i < 3; i++)                    // outputs 2..4: both decode to the end
        {
            var step = s.Schedule();
            Assert.Empty(step.Preempted);
            Assert.Equal(2, step.Chunks.Count);
            Run(s, step);
        }
        Assert.Equal(0, s.Preemptions);
        Assert.Equal(0, m.FreeBlocks);                 // exactly the reserved growth was used
        s.Finish(seqs[0]);
        var next = s.Schedule();                       // the freed blocks admit the third
        Assert.Contains(next.Chunks, c => ReferenceEquals(c.Sequence, seqs[2]));
    }

    [Fact]
    public void Schedule_WithoutReserveOutputs_SameWorkload_Preempts()
    {
        var m = new KvBlockManager(8, 2, enablePrefixCaching: false);
        var s = new Scheduler(m, maxBatchTokens: 64, maxRunningSequences: 8, reserveBlocks: 0);
        var seqs = Enumerable.Range(0, 3).Select(_ => Seq(4, maxTokens: 4)).ToArray();
        foreach (var q in seqs) s.Add(q);
        for (int i = 0; i < 4; i++) Run(s, s.Schedule());
        Assert.True(s.Preemptions > 0);
    }

    [Fact]
    public void Finish_WaitingOrRunning_FreesEveryBlock()
    {
        var m = new KvBlockManager(16, 4);
        var s = new Scheduler(m, 100, 8, 0);
        var a = Seq(10); var b = Seq(6);
        s.Add(a); s.Add(b);
        Run(s, s.Schedule());
        var c = Seq(3);
        s.Add(c);
        s.Finish(c);
        s.Finish(a);
        Assert.Equal(2, m.UsedBlocks);
        s.Finish(b);
        Assert.Equal(0, m.UsedBlocks);
        Assert.False(s.HasWork);
    }
}
