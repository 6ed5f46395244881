// The CUDA backend's default step size (PreferredMaxBatchTokens) at the cards and models it was measured on, checked
// without a GPU: the rule is host arithmetic over the card's memory and the weights' bytes.
using SwiftKV.Engine.Cuda;
using Xunit;

namespace SwiftKV.Engine.Tests.Serving;

public sealed class StepSizeRuleTests
{
    const long MiB = 1L << 20;

    [Theory]
    // 8B (16.06 GB of bf16 weights) on an H100 80GB (81559 MiB) and an H200 (143155 MiB): 8192-token steps.
    [InlineData(81559, 16.06e9, true)]
    [InlineData(143155, 16.06e9, true)]
    // 70B (141.11 GB) on an H200: 8.4 GiB beyond the weights, where 2048-token steps measured better (BENCHMARKS).
    [InlineData(143155, 141.11e9, false)]
    // A 48 GB card keeps 2048 whatever the model, as before the rule looked at the weights.
    [InlineData(46068, 2.5e9, false)]
    // A 64 GiB card with a small model: 8192, as before.
    [InlineData(65536, 2.5e9, true)]
    public void LargeSteps_NeedA64GiBCardWith32GiBBeyondTheWeights(long cardMiB, double weightBytes, bool expected) =>
        Assert.Equal(expected, CudaBackend.PreferLargeSteps(cardMiB * MiB, (long)weightBytes));
}
