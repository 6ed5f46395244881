// How distill sizes the GPU trainer's passes (Distiller.ChoosePackRows): 8192 tokens where they fit, halved while they
// do not, never below the longest sequence. Pure arithmetic over the memory estimate: no GPU needed.
using Xunit;
using SwiftKV.Engine.Distillation;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;

namespace SwiftKV.Engine.Tests.Distillation;

public sealed class PackSizeTests
{
    static readonly LlamaConfig Config = (ModelPresets.Get("llama-3.1-8b") with
    {
        SwiftKv = true, ModelType = "llama_swiftkv", NumKeyValueLayers = 16, KeyValueGroupSize = 1,
    }).Validate();

    static int Choose(int longest, long free)
    {
        return Distiller.ChoosePackRows(Config, Distiller.ValueCounts(Config), longest, 0f, free);
    }

    static long Needed(int longest, int packRows)
    {
        return CudaDistillationTrainer.MemoryNeeded(Config, Distiller.ValueCounts(Config), longest, 0f, packRows);
    }

    [Fact]
    public void PlentyOfMemory_PacksUpTo8192() => Assert.Equal(8192, Choose(512, long.MaxValue));

    [Fact]
    public void LongestSequenceOf8192_StillPacksTheShortOnes() => Assert.Equal(8192, Choose(8192, long.MaxValue));

    [Fact]
    public void SequencesLongerThan8192_RunOneAPass() => Assert.Equal(10000, Choose(10000, long.MaxValue));

    [Fact]
    public void ShortMemory_HalvesThePass()
    {
        Assert.True(Needed(512, 2048) < Needed(512, 4096));
        Assert.Equal(2048, Choose(512, Needed(512, 2048)));
        Assert.Equal(4096, Choose(512, Needed(512, 4096)));
    }

    [Fact]
    public void MemoryForTheLongestOnly_PacksUpToIt()
    {
        // 3000 does not halve to 1500 (below the longest): the pass holds up to 3000 rows, as one 3000-token sequence would.
        Assert.Equal(3000, Choose(3000, Needed(3000, 0)));
        Assert.Equal(Needed(3000, 0), Needed(3000, 3000));
    }
}
