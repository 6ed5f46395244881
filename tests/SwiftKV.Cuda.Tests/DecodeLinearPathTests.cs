// The decode linear paths of CudaBackend against each other on a toy model whose widths take the GEMV's vector
// kernel (hidden 128, intermediate 200): GEMV with programmatic launches (the default on sm_90+), GEMV with plain
// launches, and cuBLAS, each replayed as CUDA graphs over several decode steps after a prefill. They differ only
// in fp32 summation order and where gate/up are rounded (the cuBLAS path rounds them to bf16 before the silu), so
// logits agree within 1e-2 of their largest magnitude, and greedy tokens agree wherever the margin is clear.
using SwiftKV.Engine;
using SwiftKV.Engine.Cuda;
using SwiftKV.Engine.Tests;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class DecodeLinearPathTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Decode_GemvPaths_MatchCublasPath(bool swiftKv)
    {
        Gpu.Require();
        var spec = new ModelSpec(Hidden: 128, Heads: 4, KvHeads: 2, HeadDim: 32, Intermediate: 200, Layers: 4, SwiftKvLayers: 2, Seed: 81);
        var weights = TestModels.View(TestModels.Checkpoint(spec), swiftKv);
        var prompt = TestModels.RandomTokens(7, spec.Vocab, 82);
        var steps = TestModels.RandomTokens(4, spec.Vocab, 83);
        var runs = new List<float[]>();
        foreach (var (gemv, pdl) in new[] { (true, true), (true, false), (false, false) })
        {
            using var gpu = new CudaBackend(weights) { UseGemv = gemv };
            gpu.UseProgrammaticLaunch = pdl && gpu.UseProgrammaticLaunch;
            using var cache = gpu.CreateCache(32);
            var all = new List<float>(gpu.Forward(cache, prompt, LogitsSelection.LastToken));
            foreach (int t in steps) all.AddRange(gpu.Forward(cache, [t], LogitsSelection.LastToken));
            runs.Add(all.ToArray());
        }
        int vocab = spec.Vocab;
        for (int k = 0; k < 2; k++)
            for (int s = 0; s <= steps.Length; s++)
            {
                var a = runs[k].AsSpan(s * vocab, vocab);
                var b = runs[2].AsSpan(s * vocab, vocab);
                double maxB = 0, maxD = 0;
                for (int i = 0; i < vocab; i++)
                {
                    Assert.False(float.IsNaN(a[i]), $"NaN in logits of path {k} step {s}");
                    maxB = Math.Max(maxB, Math.Abs(b[i]));
                    maxD = Math.Max(maxD, Math.Abs(a[i] - b[i]));
                }
                Assert.True(maxD <= 1e-2 * maxB, $"path {k} step {s}: max|diff| {maxD:E3} vs max|logit| {maxB:E3}");
            }
        // Plain and programmatic launches run the same kernels in the same order: identical results.
        Assert.Equal(runs[1], runs[0]);
    }
}
