// When the CUDA backend tries a graph capture again after one failed (the logic only; the GPU tests inject a failure).
using SwiftKV.Engine.Cuda;
using Xunit;

namespace SwiftKV.Engine.Tests;

public sealed class GraphCaptureRetryTests
{
    [Fact]
    public void AfterAFailure_OffForRetryAfterSteps_ThenTriedAgain()
    {
        var retry = new GraphCaptureRetry { RetryAfter = 3 };
        Assert.True(retry.Allowed());
        retry.Failed("a");
        Assert.Equal([false, false, true], new[] { retry.Allowed(), retry.Allowed(), retry.Allowed() });
        retry.Failed("b");   // failed again: another wait
        Assert.Equal("b", retry.Failure);
        Assert.Equal([false, false, true], new[] { retry.Allowed(), retry.Allowed(), retry.Allowed() });
        retry.Succeeded();
        Assert.Null(retry.Failure);
        Assert.True(retry.Allowed());
        Assert.Equal(2, retry.Failures);
    }
}
