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

    /// <summary>8B's counts as a BF16 checkpoint gives them: every layer matrix but the SwiftKV ones may be held in bf16.</summary>
    static DistillationWeightCounts Bf16Checkpoint()
    {
        var c = Config;
        long perLayer = (2L * c.QueryDim + 2 * c.KeyValueDim + 3 * c.IntermediateSize) * c.HiddenSize;
        return Distiller.ValueCounts(Config) with { FrozenBf16 = c.NumHiddenLayers * perLayer, WidestBf16 = (long)c.IntermediateSize * c.HiddenSize };
    }

    static long NeededFor(DistillationWeightCounts w, int packRows) => CudaDistillationTrainer.MemoryNeeded(Config, w, 2048, 0f, packRows);

    [Fact]
    public void Layout_Fp32WhereItFitsAsLargeAPass_ElseBf16()
    {
        var bf16 = Bf16Checkpoint();
        var fp32 = bf16 with { FrozenBf16 = 0, WidestBf16 = 0 };
        Assert.True(NeededFor(bf16, 8192) < NeededFor(fp32, 8192) - 13_000_000_000L, "bf16 saves ~14 GB at 8B");

        // Room for everything: fp32 (no widening before each GEMM).
        Assert.Equal((fp32, 8192), Distiller.ChooseGpuLayout(Config, bf16, 2048, 0f, long.MaxValue));
        // fp32 fits only a smaller pass, bf16 the full one: bf16.
        Assert.Equal((bf16, 8192), Distiller.ChooseGpuLayout(Config, bf16, 2048, 0f, NeededFor(bf16, 8192)));
        // fp32 does not fit at all: bf16, with the pass halved as far as it must be.
        Assert.Equal((bf16, 2048), Distiller.ChooseGpuLayout(Config, bf16, 2048, 0f, NeededFor(bf16, 2048)));
        // Just enough for fp32 at 8192: fp32.
        Assert.Equal((fp32, 8192), Distiller.ChooseGpuLayout(Config, bf16, 2048, 0f, NeededFor(fp32, 8192)));
        // An fp32 checkpoint has no bf16 choice: fp32, whatever fits.
        Assert.Equal((fp32, 2048), Distiller.ChooseGpuLayout(Config, fp32, 2048, 0f, NeededFor(fp32, 2048)));
        // A few BF16 matrices save less than their fp32 scratch costs: fp32 even where it fits only a smaller pass.
        var few = bf16 with { FrozenBf16 = bf16.WidestBf16 };
        Assert.True(few.GpuBytes > fp32.GpuBytes);
        Assert.Equal((fp32, 2048), Distiller.ChooseGpuLayout(Config, few, 2048, 0f, NeededFor(fp32, 2048)));
    }
}
