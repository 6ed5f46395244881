// What the GPU trainer holds in bf16, decided on the host (no GPU needed): a frozen layer matrix of exact bf16 values,
// and the memory count Distiller makes from the checkpoint's dtypes before reading a weight.
using SwiftKV.Engine.Distillation;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Engine.Tests.Distillation;

public sealed class FrozenBf16Tests : IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("swiftkv-frozen-bf16-").FullName;

    [Fact]
    public void ExactInBf16_OnlyWhenEveryLowHalfIsZero()
    {
        var values = Enumerable.Range(0, 1000).Select(i => BitConverter.UInt32BitsToSingle((uint)(i * 7919) << 16)).ToArray();
        Assert.True(CudaDistillationTrainer.ExactInBf16(values));
        Assert.True(CudaDistillationTrainer.ExactInBf16([]));
        foreach (int at in new[] { 0, 7, 511, 999 })   // inside the vector loop and in its tail
        {
            var one = (float[])values.Clone();
            one[at] = BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(one[at]) | 1u);
            Assert.False(CudaDistillationTrainer.ExactInBf16(one), $"a value at {at} with a low bit set");
        }
        Assert.False(CudaDistillationTrainer.ExactInBf16([0.1f]));
    }

    [Theory]
    [InlineData(TensorDtype.BF16)]
    [InlineData(TensorDtype.F32)]
    public void ValueCounts_CountTheBf16LayerMatrices_FromTheCheckpointsDtypes(TensorDtype dtype)
    {
        string baseDir = Path.Combine(_root, "base" + dtype), dir = Path.Combine(_root, "skv" + dtype);
        ModelMaker.Write(baseDir, ModelPresets.Get("tiny"), new ModelMakerOptions { Seed = 1, Dtype = dtype }, cancellationToken: TestContext.Current.CancellationToken);
        SwiftKvConverter.Convert(baseDir, dir, 2, 2, cancellationToken: TestContext.Current.CancellationToken);
        var config = LlamaConfig.Load(dir);
        using var checkpoint = SafetensorsCheckpoint.Open(dir);
        var counts = Distiller.ValueCounts(config, checkpoint);
        Assert.Equal(Distiller.ValueCounts(config) with { FrozenBf16 = counts.FrozenBf16, WidestBf16 = counts.WidestBf16 }, counts);
        // Every layer's q/k/v (the teacher's), o, gate, up and down; nothing else (SwiftKV tensors train, embeddings and norms stay fp32).
        long perLayer = (2L * config.QueryDim + 2 * config.KeyValueDim + 3 * config.IntermediateSize) * config.HiddenSize;
        Assert.Equal(dtype == TensorDtype.BF16 ? config.NumHiddenLayers * perLayer : 0, counts.FrozenBf16);
        Assert.Equal(dtype == TensorDtype.BF16 ? (long)config.IntermediateSize * config.HiddenSize : 0, counts.WidestBf16);
        Assert.Equal(4 * counts.Values - 2 * counts.FrozenBf16 + 4 * counts.WidestBf16, counts.GpuBytes);
    }

    public void Dispose() => Directory.Delete(_root, recursive: true);
}
