// Writes a complete Hugging Face checkpoint of random weights for any config: the real file layout and tensor
// names (LlamaTensorNames.ForCheckpoint, so a SwiftKV config also carries the original q/k/v of its later
// layers, as published checkpoints do), config.json and generation_config.json. It lets the engine, the CLI and
// the benchmarks run every shape, up to 8B and 70B, without downloading weights.
// Values: weight matrices U(-a, a) with a = std·√3 (standard deviation std); norm weights 1 + U(-0.2, 0.2), so a
// wrong norm is visible in outputs; biases U(-std, std). Tensors stream through the writer block by block,
// filled on all cores, so memory stays at a few blocks whatever the model size.
using System.Text.Json;
using System.Text.Json.Nodes;

namespace SwiftKV.Model.Checkpoint;

/// <summary>Makes seeded random checkpoints.</summary>
public static class ModelMaker
{
    const float NormHalfWidth = 0.2f;

    /// <summary>
    /// Writes config.json, generation_config.json and the safetensors file(s) of <paramref name="config"/> with random
    /// weights into <paramref name="directory"/> (created if needed; earlier model*.safetensors there are removed).
    /// </summary>
    /// <remarks><c>companions</c> writes further files to ship with the weights (a tokenizer) into the folder it is
    /// given, so they move into place together (LlamaCheckpointWriter.Save).</remarks>
    public static void Write(string directory, LlamaConfig config, ModelMakerOptions? options = null, Action<string>? companions = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(directory);
        ArgumentNullException.ThrowIfNull(config);
        options ??= new ModelMakerOptions();
        options.Validate();
        config.Validate();

        var tensors = LlamaTensorNames.ForCheckpoint(config)
            .Select(spec => TensorToWrite.Streamed(spec.Name, spec.Shape, Filler(spec, options)))
            .ToList();
        LlamaCheckpointWriter.Save(directory, config, tensors, options.Dtype, options.MaxShardBytes, staging =>
        {
            File.WriteAllText(Path.Combine(staging, "generation_config.json"), GenerationConfigJson(config));
            companions?.Invoke(staging);
        }, cancellationToken);
    }

    /// <summary>The values of one tensor: which distribution its role gets, seeded by (seed, name, chunk).</summary>
    internal static TensorFill Filler(TensorSpec spec, ModelMakerOptions options)
    {
        var (center, halfWidth) = Distribution(spec, options.InitStd);
        ulong nameHash = WeightRandom.NameHash(spec.Name);
        return (first, destination) =>
            WeightRandom.FillUniform(options.Seed, nameHash, center, halfWidth, first, destination, options.MaxDegreeOfParallelism);
    }

    static (float Center, float HalfWidth) Distribution(TensorSpec spec, float std)
    {
        if (spec.Name.EndsWith(".bias", StringComparison.Ordinal)) return (0, std);
        if (spec.Shape.Count == 1 && spec.Name.Contains("norm", StringComparison.Ordinal)) return (1, NormHalfWidth);
        if (spec.Shape.Count == 2) return (0, std * MathF.Sqrt(3));
        throw new InvalidOperationException($"no value distribution for tensor '{spec.Name}' {TensorInfo.FormatShape(spec.Shape)}.");
    }

    static string GenerationConfigJson(LlamaConfig config)
    {
        var o = new JsonObject
        {
            ["bos_token_id"] = config.BosTokenId,
            ["do_sample"] = false,
            ["eos_token_id"] = new JsonArray(config.EosTokenIds.Select(id => (JsonNode)id).ToArray()),
        };
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }
}
