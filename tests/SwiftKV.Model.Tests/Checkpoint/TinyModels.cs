// Small configs and seeded random tensors for checkpoint tests (shapes tiny enough to write in milliseconds).
using SwiftKV.Model.Checkpoint;

namespace SwiftKV.Model.Tests.Checkpoint;

static class TinyModels
{
    /// <summary>4 layers, GQA 4:2, head_dim 4; SwiftKV l = 2 with AcrossKV g = 2 unless told otherwise.</summary>
    public static LlamaConfig Config(bool swiftKv = true, int groupSize = 2, bool tied = false, bool bias = false) => new LlamaConfig
    {
        ModelType = swiftKv ? "llama_swiftkv" : "llama",
        HiddenSize = 16, IntermediateSize = 24, NumHiddenLayers = 4, NumAttentionHeads = 4, NumKeyValueHeads = 2,
        HeadDim = 4, VocabSize = 32, MaxPositionEmbeddings = 64, BosTokenId = 1, EosTokenIds = [2],
        TieWordEmbeddings = tied, AttentionBias = bias,
        SwiftKv = swiftKv, NumKeyValueLayers = swiftKv ? 2 : 0, KeyValueGroupSize = swiftKv ? groupSize : 1,
    }.Validate();

    /// <summary>Seeded values for every spec; multiples of 1/64 in [-2, 2), exact in bf16, f16 and f32.</summary>
    public static Dictionary<string, float[]> Values(IEnumerable<TensorSpec> specs, int seed)
    {
        var rng = new Random(seed);
        return specs.ToDictionary(s => s.Name, s => Enumerable.Range(0, (int)s.ElementCount).Select(_ => rng.Next(-128, 128) / 64f).ToArray());
    }

    public static List<TensorToWrite> ToWrite(IEnumerable<TensorSpec> specs, Dictionary<string, float[]> values) =>
        specs.Select(s => TensorToWrite.Of(s.Name, s.Shape, values[s.Name])).ToList();

    /// <summary>Writes a complete checkpoint (originals + SwiftKV tensors) and returns the values written.</summary>
    public static Dictionary<string, float[]> SaveFull(string dir, LlamaConfig config, TensorDtype dtype = TensorDtype.F32, long maxShardBytes = LlamaCheckpointWriter.DefaultMaxShardBytes)
    {
        var specs = LlamaTensorNames.ForCheckpoint(config);
        var values = Values(specs, seed: 5);
        LlamaCheckpointWriter.Save(dir, config, ToWrite(specs, values), dtype, maxShardBytes);
        return values;
    }
}
