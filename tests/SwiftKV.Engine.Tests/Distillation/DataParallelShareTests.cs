// How a data-parallel run splits each batch over its ranks (CudaDistillationTrainer.ShareOf), and the options that
// set it up: checked on the CPU; the run itself is DataParallelDistillTests on two GPUs.
using SwiftKV.Engine.Distillation;
using Xunit;

namespace SwiftKV.Engine.Tests.Distillation;

public sealed class DataParallelShareTests
{
    [Theory]
    [InlineData(8, 2)]
    [InlineData(7, 3)]
    [InlineData(1, 2)]   // one rank's share is empty (it still joins every sum: DataParallelDistillTests runs that)
    public void Shares_CoverTheBatchOnce(int count, int world)
    {
        var batch = Enumerable.Range(0, count).Select(i => new DistillationSequence([i, i], [true, false])).ToList();
        var shares = Enumerable.Range(0, world).Select(r => CudaDistillationTrainer.ShareOf(batch, r, world)).ToList();
        Assert.Equal(batch, shares.SelectMany(s => s).OrderBy(s => s.Tokens[0]));
        Assert.True(shares.Max(s => s.Count) - shares.Min(s => s.Count) <= 1);
        Assert.Same(batch, CudaDistillationTrainer.ShareOf(batch, 0, 1));
    }

    [Fact]
    public void Options_RankWorldAndRendezvous_AreChecked()
    {
        new DistillationOptions { World = 2, Rank = 1, Rendezvous = "/tmp/x" }.Validate();
        Assert.Contains("Rank must be in 0..1", Assert.Throws<ArgumentException>(() => new DistillationOptions { World = 2, Rank = 2, Rendezvous = "/tmp/x" }.Validate()).Message);
        Assert.Contains("Rendezvous", Assert.Throws<ArgumentException>(() => new DistillationOptions { World = 2 }.Validate()).Message);
        Assert.Contains("CPU", Assert.Throws<ArgumentException>(() => new DistillationOptions { World = 2, Rendezvous = "/tmp/x", Backend = BackendKind.Cpu }.Validate()).Message);
    }
}
