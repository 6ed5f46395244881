// bench's batched decode plan, checked without a GPU: the pool holds every sequence's last position, block ids are
// distinct and inside the pool, the prefill steps cover each context exactly once under the token budget, and
// --decode-batches is parsed or rejected with a message naming the option.
using Xunit;

namespace SwiftKV.Cli.Tests;

public sealed class BatchedDecodePlanTests
{
    [Theory]
    [InlineData(32, 2048, 3, 32, 16, 128 + 3)]     // 2083 positions -> 131 blocks of 16
    [InlineData(128, 2048, 3, 32, 16, 131)]
    [InlineData(1, 16, 0, 1, 16, 2)]                // 17 positions need a second block
    [InlineData(3, 15, 0, 1, 16, 1)]                // 16 positions fill exactly one
    public void TotalBlocks_CoversEveryPosition(int batch, int context, int warmup, int steps, int blockSize, int perSequence)
    {
        var p = new BatchedDecodePlan(batch, context, warmup, steps, blockSize, 8192);
        Assert.Equal(context + warmup + steps, p.PositionsPerSequence);
        Assert.Equal(perSequence, p.BlocksPerSequence);
        Assert.True(p.BlocksPerSequence * blockSize >= p.PositionsPerSequence);
        Assert.True((p.BlocksPerSequence - 1) * blockSize < p.PositionsPerSequence);
        Assert.Equal(batch * perSequence, p.TotalBlocks);
    }

    [Fact]
    public void Table_IdsDistinctAndInsidePool()
    {
        var p = new BatchedDecodePlan(5, 40, 3, 8, 16, 64);
        var seen = new HashSet<int>();
        for (int s = 0; s < 5; s++)
            foreach (int id in p.Table(s))
            {
                Assert.InRange(id, 0, p.TotalBlocks - 1);
                Assert.True(seen.Add(id), $"block {id} given twice");
            }
        Assert.Equal(p.TotalBlocks, seen.Count);
        Assert.Throws<ArgumentOutOfRangeException>(() => p.Table(5));
    }

    [Theory]
    [InlineData(4, 100, 256)]    // two whole contexts and a split one per step
    [InlineData(2, 300, 128)]    // a context longer than the budget spans steps
    [InlineData(3, 64, 64)]      // exactly one context per step
    public void PrefillSteps_CoverEachContextOnceUnderBudget(int batch, int context, int budget)
    {
        var p = new BatchedDecodePlan(batch, context, 0, 1, 16, budget);
        var next = new int[batch];   // next uncovered position per sequence
        var ends = new int[batch];
        foreach (var step in p.PrefillSteps())
        {
            Assert.NotEmpty(step);
            Assert.True(step.Sum(c => c.Count) <= budget);
            Assert.Equal(step.Length, step.Select(c => c.Seq).Distinct().Count());
            foreach (var c in step)
            {
                Assert.Equal(next[c.Seq], c.Start);
                Assert.True(c.Count >= 1);
                next[c.Seq] += c.Count;
                Assert.Equal(next[c.Seq] == context, c.EndsContext);
                if (c.EndsContext) ends[c.Seq]++;
                Assert.True(p.BlocksFor(c.Start + c.Count) <= p.BlocksPerSequence);
            }
        }
        Assert.All(next, n => Assert.Equal(context, n));
        Assert.All(ends, e => Assert.Equal(1, e));
        int total = batch * context;
        Assert.Equal((total + budget - 1) / budget, p.PrefillSteps().Count());
    }

    [Fact]
    public void MeanTimedContext_IsMeanOfAttendedPositions()
    {
        var p = new BatchedDecodePlan(2, 100, 3, 4, 16, 512);
        // Timed steps decode positions 103..106 and attend to 104..107 positions.
        Assert.Equal((104 + 105 + 106 + 107) / 4.0, p.MeanTimedContext);
    }

    [Fact]
    public void Constructor_RejectsBadShape()
    {
        var e = Assert.Throws<ArgumentException>(() => new BatchedDecodePlan(0, 2048, 3, 32, 16, 8192));
        Assert.Contains("batch 0", e.Message);
        Assert.Throws<ArgumentException>(() => new BatchedDecodePlan(1, 2048, 3, 32, 16, 0));
        Assert.Throws<ArgumentException>(() => new BatchedDecodePlan(1 << 20, 1 << 20, 0, 1, 16, 8192));
    }

    [Fact]
    public void ParseBatches_ReadsListsAndNone()
    {
        Assert.Equal([32, 128], BenchCommand.ParseBatches("32,128"));
        Assert.Equal([1], BenchCommand.ParseBatches("1"));
        Assert.Empty(BenchCommand.ParseBatches("none"));
        foreach (var bad in new[] { "0", "-4", "x", "32;128", "," })
            Assert.Contains("--decode-batches", Assert.Throws<UsageException>(() => BenchCommand.ParseBatches(bad)).Message);
    }

    [Fact]
    public void Bench_BadDecodeBatches_ExitsTwoNamingOption()
    {
        var (stdout, stderr) = (Console.Out, Console.Error);
        var e = new StringWriter();
        Console.SetOut(new StringWriter());
        Console.SetError(e);
        try
        {
            Assert.Equal(2, CliApp.Run(["bench", "--decode-batches", "32,0"]));
        }
        finally
        {
            Console.SetOut(stdout);
            Console.SetError(stderr);
        }
        Assert.Contains("--decode-batches", e.ToString());
    }
}
