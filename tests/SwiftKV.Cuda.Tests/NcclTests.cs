// The NCCL interop on one GPU: a communicator of one rank (the smallest NCCL allows) goes through the same calls a
// data-parallel run makes: unique id, init, grouped all-reduces of fp32 and fp64, finish, destroy. Two ranks are
// DataParallelDistillTests (two GPUs).
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class NcclTests
{
    [Theory]
    [InlineData(true)]
    [InlineData(false)]   // left without Finish (a rank failing alone): aborted, not destroyed
    public void OneRank_AllReduceIsTheIdentity_AndReleases(bool finish)
    {
        Gpu.Require();
        Assert.SkipUnless(NcclCommunicator.TryVersion(out var version), "no NCCL: " + version);
        using var stream = new CudaStream();
        var floats = Enumerable.Range(0, 1000).Select(i => i * 0.37f - 50f).ToArray();
        double[] doubles = [1.5, -2.25, 1e300];
        using var f = new DeviceBuffer<float>(floats);
        using var d = new DeviceBuffer<double>(doubles);
        using (var comm = new NcclCommunicator(NcclCommunicator.NewUniqueId(), 0, 1))
        {
            Assert.Equal((0, 1), (comm.Rank, comm.World));
            using (NcclCommunicator.Group())
            {
                comm.AllReduceSum(f.Span, stream);
                comm.AllReduceSum(d.Span, stream);
            }
            var gotF = new float[floats.Length];
            var gotD = new double[doubles.Length];
            stream.Download(f.Span, gotF);
            stream.Download(d.Span, gotD);
            Assert.Equal(floats, gotF);
            Assert.Equal(doubles, gotD);
            if (finish) comm.Finish();
        }
        Gpu.Log($"NCCL {version}: one rank's all-reduce leaves the values as they were; released with {(finish ? "destroy" : "abort")}");
    }

    [Fact]
    public void BadArguments_AreNamed()
    {
        Assert.Throws<ArgumentException>(() => new NcclCommunicator(new byte[5], 0, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new NcclCommunicator(new byte[128], 2, 2));
    }
}
