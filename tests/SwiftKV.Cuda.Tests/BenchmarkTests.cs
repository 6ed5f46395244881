// A rough timing of the correct-first CUDA backend at Llama-3.1-8B layer width (2 layers, tied 128256 vocab),
// run only when SWIFTKV_BENCH=1 (it needs ~6 GB of host memory for the random weights). Not a target check:
// it prints numbers for the performance issue to start from.
using System.Diagnostics;
using SwiftKV.Engine;
using SwiftKV.Engine.Cuda;
using SwiftKV.Engine.Tests;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class BenchmarkTests
{
    [Fact]
    public void Forward_Llama8BWidth_Timing()
    {
        Gpu.Require();
        Assert.SkipUnless(Environment.GetEnvironmentVariable("SWIFTKV_BENCH") == "1", "set SWIFTKV_BENCH=1 to time the backend");
        var spec = new ModelSpec(Hidden: 4096, Layers: 2, Heads: 32, KvHeads: 8, HeadDim: 128, Vocab: 128256, Intermediate: 14336,
            Tied: true, MaxPositions: 8192, Seed: 41);
        var sw = Stopwatch.StartNew();
        var weights = TestModels.Build(spec);
        var build = sw.Elapsed;
        sw.Restart();
        using var gpu = new CudaBackend(weights);
        var upload = sw.Elapsed;
        Gpu.Log($"bench model {spec}: host build {build.TotalSeconds:F1} s, upload {upload.TotalSeconds:F1} s ({gpu.WeightBytes >> 20} MiB bf16)");
        foreach (int prompt in new[] { 512, 2048 })
        {
            var tokens = TestModels.RandomTokens(prompt, spec.Vocab, 7);
            double best = double.MaxValue;
            for (int rep = 0; rep < 4; rep++)
            {
                using var cache = gpu.CreateCache(prompt + 64);
                sw.Restart();
                gpu.Forward(cache, tokens, LogitsSelection.LastToken);
                if (rep > 0) best = Math.Min(best, sw.Elapsed.TotalMilliseconds);
                if (rep == 3)
                {
                    var steps = new List<double>();
                    for (int s = 0; s < 32; s++)
                    {
                        sw.Restart();
                        gpu.Forward(cache, [s + 1], LogitsSelection.LastToken);
                        steps.Add(sw.Elapsed.TotalMilliseconds);
                    }
                    steps.Sort();
                    Gpu.Log($"bench decode after {prompt} tokens: median {steps[16]:F2} ms/step (2 layers + 128256 lm_head, batch 1)");
                }
            }
            Gpu.Log($"bench prefill {prompt} tokens: best {best:F1} ms ({prompt / best * 1000:F0} tokens/s, 2 layers + lm_head for the last token)");
        }
    }
}
