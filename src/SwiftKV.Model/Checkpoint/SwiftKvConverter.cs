// Turns a plain Llama checkpoint into a llama_swiftkv one, initialised as the SwiftKV paper does before
// distillation: norm_swiftkv = input_layernorm of layer l; q_proj_swiftkv_j = q_proj_j; a group leader's
// k/v_proj_swiftkv = mean of the original k/v_proj over its AcrossKV group (a copy when g = 1). The original
// tensors are all kept, like the published checkpoints, so the output also runs as the unchanged Llama (the
// distillation teacher). Tensors stream one at a time: memory stays at about the largest tensor in fp32.
namespace SwiftKV.Model.Checkpoint;

/// <summary>Creates SwiftKV checkpoints from Llama checkpoints.</summary>
public static class SwiftKvConverter
{
    /// <summary>
    /// Writes to <paramref name="outputDirectory"/> a SwiftKV checkpoint with l = <paramref name="numKeyValueLayers"/> and
    /// g = <paramref name="keyValueGroupSize"/>, stored as <paramref name="dtype"/> (default: the dtype the source's tensors are stored in).
    /// Returns the new config. Throws <see cref="InvalidModelException"/> for an unusable source or l / g.
    /// </summary>
    public static LlamaConfig Convert(string llamaDirectory, string outputDirectory, int numKeyValueLayers, int keyValueGroupSize = 1,
        TensorDtype? dtype = null, long maxShardBytes = LlamaCheckpointWriter.DefaultMaxShardBytes, CancellationToken cancellationToken = default)
    {
        string src = Path.GetFullPath(llamaDirectory).TrimEnd('/'), dst = Path.GetFullPath(outputDirectory).TrimEnd('/');
        if (string.Equals(src, dst, StringComparison.Ordinal))
            throw new ArgumentException("the output directory must differ from the source (writing removes its safetensors files).", nameof(outputDirectory));
        // The source's companion files (tokenizer, ...) are copied over; an output inside the source would copy itself.
        if (dst.StartsWith(src + "/", StringComparison.Ordinal))
            throw new ArgumentException($"the output directory {dst} must not be inside the source {src}.", nameof(outputDirectory));
        var source = LlamaConfig.Load(llamaDirectory);
        if (source.SwiftKv)
            throw new InvalidModelException($"{llamaDirectory}: already a SwiftKV checkpoint (num_key_value_layers = {source.NumKeyValueLayers}); convert its plain Llama original.");
        var target = (source with
        {
            ModelType = "llama_swiftkv",
            SwiftKv = true,
            NumKeyValueLayers = numKeyValueLayers,
            KeyValueGroupSize = keyValueGroupSize,
            // FP8 sources are dequantized as they are read; the new checkpoint is written unquantized.
            Quantization = null,
        }).Validate();

        using var checkpoint = SafetensorsCheckpoint.Open(llamaDirectory);
        LlamaCheckpointLoader.Check(source, checkpoint, LlamaTensorNames.ForModel(source, swiftKvEnabled: false), swiftKvEnabled: false);

        var tensors = LlamaTensorNames.ForCheckpoint(target)
            .Select(spec => new TensorToWrite(spec.Name, spec.Shape, () => Initialise(spec.Name, source, target, checkpoint)))
            .ToList();
        LlamaCheckpointWriter.Save(outputDirectory, target, tensors, dtype ?? LlamaCheckpointLoader.StoredDtype(source, checkpoint), maxShardBytes,
            staging => CopyCompanionFiles(llamaDirectory, staging), cancellationToken);
        return target;
    }

    /// <summary>
    /// Tokenizer files, generation_config.json, original/ and anything else a user ships with the weights travel
    /// with the new checkpoint, so it loads and chats like its source. Weights and config.json were written above.
    /// </summary>
    public static void CopyCompanionFiles(string from, string to)
    {
        foreach (var file in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
        {
            string rel = Path.GetRelativePath(from, file);
            string name = Path.GetFileName(file);
            // A write that was killed part-way left its files in a hidden folder: they are not the checkpoint's.
            if (rel.StartsWith(LlamaCheckpointWriter.PartialPrefix, StringComparison.Ordinal)) continue;
            if (rel == "config.json" || rel == "model.safetensors.index.json"
                || (!rel.Contains(Path.DirectorySeparatorChar) && name.EndsWith(".safetensors", StringComparison.Ordinal)))
                continue;
            string dest = Path.Combine(to, rel);
            Directory.CreateDirectory(Path.GetDirectoryName(dest)!);
            File.Copy(file, dest, overwrite: true);
        }
    }

    static float[] Initialise(string name, LlamaConfig source, LlamaConfig target, SafetensorsCheckpoint checkpoint)
    {
        if (name == LlamaTensorNames.NormSwiftKv)
            return LlamaCheckpointLoader.ReadFloat32(source, checkpoint, LlamaTensorNames.InputLayernorm(target.NumKeyValueLayers));
        for (int j = target.NumKeyValueLayers; j < target.NumHiddenLayers; j++)
        {
            foreach (bool bias in new[] { false, true })
            {
                if (name == LlamaTensorNames.Attention(j, LlamaTensorNames.QProjSwiftKv, bias))
                    return LlamaCheckpointLoader.ReadFloat32(source, checkpoint, LlamaTensorNames.Attention(j, LlamaTensorNames.QProj, bias));
                if (name == LlamaTensorNames.Attention(j, LlamaTensorNames.KProjSwiftKv, bias))
                    return GroupMean(source, checkpoint, target, j, LlamaTensorNames.KProj, bias);
                if (name == LlamaTensorNames.Attention(j, LlamaTensorNames.VProjSwiftKv, bias))
                    return GroupMean(source, checkpoint, target, j, LlamaTensorNames.VProj, bias);
            }
        }
        return LlamaCheckpointLoader.ReadFloat32(source, checkpoint, name);
    }

    /// <summary>Mean of <paramref name="projection"/> over the AcrossKV group led by <paramref name="leader"/>, summed in double.</summary>
    static float[] GroupMean(LlamaConfig source, SafetensorsCheckpoint checkpoint, LlamaConfig target, int leader, string projection, bool bias)
    {
        double[]? sum = null;
        for (int j = leader; j < leader + target.KeyValueGroupSize; j++)
        {
            float[] w = LlamaCheckpointLoader.ReadFloat32(source, checkpoint, LlamaTensorNames.Attention(j, projection, bias));
            sum ??= new double[w.Length];
            for (int i = 0; i < w.Length; i++) sum[i] += w[i];
        }
        return sum!.Select(s => (float)(s / target.KeyValueGroupSize)).ToArray();
    }

}
