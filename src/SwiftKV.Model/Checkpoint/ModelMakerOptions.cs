// What ModelMaker writes: the seed and scale of the random weights and how they are stored.
namespace SwiftKV.Model.Checkpoint;

/// <summary>Options of <see cref="ModelMaker.Write"/>. The same options and config give byte-identical files on any machine.</summary>
public sealed record ModelMakerOptions
{
    /// <summary>Seed of every tensor's values (each tensor also mixes in its own name).</summary>
    public ulong Seed { get; init; }

    /// <summary>Storage type of every tensor; config.json's torch_dtype is set to match.</summary>
    public TensorDtype Dtype { get; init; } = TensorDtype.BF16;

    /// <summary>Standard deviation of the weight matrices (uniform, so about the magnitude of a trained Llama's 0.02 init).</summary>
    public float InitStd { get; init; } = 0.02f;

    /// <summary>Largest shard in bytes before the checkpoint is split (transformers' default, 5 GB).</summary>
    public long MaxShardBytes { get; init; } = LlamaCheckpointWriter.DefaultMaxShardBytes;

    /// <summary>Threads that fill tensors (-1: all cores). Changes speed only, never the bytes written.</summary>
    public int MaxDegreeOfParallelism { get; init; } = -1;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid option.</summary>
    public void Validate()
    {
        if (!Dtype.ConvertsToFloat32())
            throw new ArgumentException($"ModelMakerOptions.Dtype must be F32, F16 or BF16, got {Dtype.SafetensorsName()}.");
        if (!float.IsFinite(InitStd) || InitStd <= 0)
            throw new ArgumentException($"ModelMakerOptions.InitStd must be a positive finite number, got {InitStd}.");
        if (MaxShardBytes <= 0)
            throw new ArgumentException($"ModelMakerOptions.MaxShardBytes must be positive, got {MaxShardBytes}.");
        if (MaxDegreeOfParallelism is 0 or < -1)
            throw new ArgumentException($"ModelMakerOptions.MaxDegreeOfParallelism must be -1 or positive, got {MaxDegreeOfParallelism}.");
    }
}
