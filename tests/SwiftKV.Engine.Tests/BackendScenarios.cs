// Checks every IModelBackend must pass, written once and run on each backend (CpuBackendTests here, CudaBackendTests on
// the GPU), so both refuse the same inputs the same way.
using SwiftKV.Model;
using Xunit;

namespace SwiftKV.Engine.Tests;

public static class BackendScenarios
{
    /// <summary>
    /// An AllTokens step returns rows x vocab floats: past the largest .NET array (Llama 3's vocabulary, 16,744 rows)
    /// it is refused before anything runs, naming the limit, and the cache stays as it was; a short AllTokens step then runs.
    /// </summary>
    public static void RejectsAllTokensLogitsLargerThanAnArray(Func<LlamaWeights, IModelBackend> create, ulong seed)
    {
        var spec = new ModelSpec(Vocab: 128256, Layers: 2, MaxPositions: 16800, Seed: seed);
        using var backend = create(TestModels.Build(spec));
        using var cache = backend.CreateCache(16800);
        int rows = (int)(Array.MaxLength / spec.Vocab) + 1;
        var prompt = TestModels.RandomTokens(rows, spec.Vocab, 5);
        var e = Assert.Throws<ArgumentException>(() => backend.Forward(cache, prompt, LogitsSelection.AllTokens));
        Assert.Contains($"AllTokens logits of {rows} tokens", e.Message);
        Assert.Contains($"at most {rows - 1} tokens", e.Message);
        Assert.Equal(0, cache.Length);
        Assert.Equal(3 * spec.Vocab, backend.Forward(cache, prompt.AsSpan(0, 3), LogitsSelection.AllTokens).Length);
        Assert.Equal(3, cache.Length);
    }
}
