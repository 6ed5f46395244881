// Loads a Hugging Face Llama / llama_swiftkv checkpoint directory (config.json + safetensors) into fp32
// LlamaWeights. Every needed tensor is checked for presence, shape and dtype (and an fp8 weight's scales for finite
// values) before any weight is read, and all problems are reported together, so a wrong checkpoint fails in a second with the full list instead of after
// reading 16 GB. Tensors the mode does not need (the published SwiftKV checkpoints' original q/k/v of later
// layers when SwiftKV is on, rotary inv_freq buffers of old exports, the activation scales of FP8 files) are
// ignored. FP8 weights are dequantized here with their scales (ScaledFp8Tensor).
namespace SwiftKV.Model.Checkpoint;

/// <summary>Reads checkpoints into <see cref="LlamaWeights"/>.</summary>
public static class LlamaCheckpointLoader
{
    const int MaxProblemsListed = 12;

    /// <summary>
    /// Loads <paramref name="directory"/>. <paramref name="swiftKv"/>: null runs the checkpoint as it is (SwiftKV on
    /// exactly when config.json says swiftkv); false runs a SwiftKV checkpoint as the original Llama; true demands SwiftKV.
    /// </summary>
    public static LlamaWeights Load(string directory, bool? swiftKv = null)
    {
        var config = LlamaConfig.Load(directory);
        using var checkpoint = SafetensorsCheckpoint.Open(directory);
        return Load(config, checkpoint, swiftKv ?? config.SwiftKv);
    }

    /// <summary>
    /// Checks <paramref name="directory"/> as <see cref="Load(string, bool?)"/> would, without reading any weights: the
    /// files' headers and sizes, every needed tensor's presence, shape and dtype, and fp8 scales. Returns how many
    /// tensors the model needs and how many of them are fp8.
    /// </summary>
    public static VerifiedCheckpoint Verify(string directory, bool? swiftKv = null)
    {
        var config = LlamaConfig.Load(directory);
        using var checkpoint = SafetensorsCheckpoint.Open(directory);
        bool enabled = swiftKv ?? config.SwiftKv;
        var specs = LlamaTensorNames.ForModel(config, enabled);
        Check(config, checkpoint, specs, enabled);
        int fp8 = specs.Count(s => checkpoint.TryGet(s.Name, out var info, out _) && info.Dtype.IsFloat8());
        return new VerifiedCheckpoint(specs.Count, fp8);
    }

    /// <summary>
    /// Tensors in the checkpoint that its config.json gives no place (fp8 scales beside their weights aside), sorted:
    /// often a config that does not match how the checkpoint was saved (say key_value_group_size 2 on one saved with
    /// 1, whose extra SwiftKV projections then go unread). transformers warns of them; <c>info</c> names them.
    /// </summary>
    public static IReadOnlyList<string> UnusedTensors(string directory)
    {
        var config = LlamaConfig.Load(directory);
        using var checkpoint = SafetensorsCheckpoint.Open(directory);
        var used = LlamaTensorNames.ForCheckpoint(config).Select(s => s.Name).ToHashSet(StringComparer.Ordinal);
        // The scales fp8 formats write beside a module's weight (WeightQuantization.ScaleNames, compressed-tensors' input_scale).
        bool ScaleOfAUsedWeight(string name) => ScaleSuffixes.Any(suffix =>
            name.EndsWith(suffix, StringComparison.Ordinal) && used.Contains(name[..^suffix.Length] + ".weight"));
        return checkpoint.TensorNames.Where(n => !used.Contains(n) && !ScaleOfAUsedWeight(n)).Order(StringComparer.Ordinal).ToList();
    }

    static readonly string[] ScaleSuffixes = [".weight_scale", ".weight_scale_inv", ".input_scale"];

    /// <summary>The sentence info, generate and the IChatClient's log give for <see cref="UnusedTensors"/>'s answer.</summary>
    public static string UnreadNote(IReadOnlyList<string> unread) =>
        $"{unread.Count} tensor(s) in the checkpoint have no place in its config.json and are not read " +
        $"({string.Join(", ", unread.Take(3))}{(unread.Count > 3 ? ", ..." : "")}): does the config match how the checkpoint was saved?";

    /// <summary>Loads the tensors <paramref name="config"/> needs from an open checkpoint.</summary>
    public static LlamaWeights Load(LlamaConfig config, SafetensorsCheckpoint checkpoint, bool swiftKvEnabled)
    {
        var specs = LlamaTensorNames.ForModel(config, swiftKvEnabled);
        Check(config, checkpoint, specs, swiftKvEnabled);
        var tensors = new Dictionary<string, float[]>(StringComparer.Ordinal);
        var float8 = new HashSet<float[]>(ReferenceEqualityComparer.Instance);
        foreach (var spec in specs)
        {
            tensors[spec.Name] = ReadFloat32(config, checkpoint, spec.Name);
            if (checkpoint.TryGet(spec.Name, out var info, out _) && info.Dtype.IsFloat8()) float8.Add(tensors[spec.Name]);
        }
        return LlamaWeightMap.Build(config, swiftKvEnabled, tensors, float8);
    }

    /// <summary>
    /// The dtype to write a copy of <paramref name="checkpoint"/>'s weights in without losing precision: the one float
    /// dtype its tensors are stored in, F32 when they mix, BF16 for weights stored only as fp8 (written dequantized).
    /// Read from the tensors, not from config.json's torch_dtype, which may be missing (and default to bfloat16) or wrong.
    /// </summary>
    public static TensorDtype StoredDtype(LlamaConfig config, SafetensorsCheckpoint checkpoint)
    {
        var found = new HashSet<TensorDtype>();
        foreach (var spec in LlamaTensorNames.ForCheckpoint(config))
            if (checkpoint.TryGet(spec.Name, out var info, out _) && info.Dtype is TensorDtype.F32 or TensorDtype.F16 or TensorDtype.BF16)
                found.Add(info.Dtype);
        return found.Count switch { 0 => TensorDtype.BF16, 1 => found.Single(), _ => TensorDtype.F32 };
    }

    /// <summary>A tensor as fp32: F32/F16/BF16 converted, fp8 weights dequantized with their scales (config's quantization_config).</summary>
    public static float[] ReadFloat32(LlamaConfig config, SafetensorsCheckpoint checkpoint, string name)
    {
        if (!checkpoint.TryGet(name, out var info, out var file))
            throw new InvalidModelException($"{checkpoint.Directory}: checkpoint has no tensor '{name}'.");
        return info.Dtype.IsFloat8()
            ? ScaledFp8Tensor.Open(config.Quantization, checkpoint, info, file).ReadFloat32()
            : file.ReadFloat32(name);
    }

    /// <summary>Throws one <see cref="InvalidModelException"/> listing every spec that is missing, misshapen or of an unreadable dtype.</summary>
    internal static void Check(LlamaConfig config, SafetensorsCheckpoint checkpoint, IReadOnlyList<TensorSpec> specs, bool swiftKvEnabled)
    {
        // Only the first problems are kept, the rest only counted: a message lists a dozen, and a config whose sizes
        // all disagree with the files must not build a line for every tensor first.
        var problems = new List<string>();
        int count = 0;
        void Add(string problem)
        {
            if (count++ < MaxProblemsListed) problems.Add(problem);
        }
        bool missingOriginalQkv = false;
        foreach (var spec in specs)
        {
            if (!checkpoint.TryGet(spec.Name, out var info, out var file))
            {
                Add($"missing '{spec.Name}' {TensorInfo.FormatShape(spec.Shape)} {spec.ShapeMeaning}");
                missingOriginalQkv |= config.SwiftKv && !swiftKvEnabled && spec.Name.Contains(".self_attn.") && !spec.Name.Contains("_swiftkv");
                continue;
            }
            string where = $"'{spec.Name}' in {Path.GetFileName(file.Path)}";
            if (!info.HasShape(spec.Shape))
                Add($"{where} has shape {info.ShapeText}, expected {TensorInfo.FormatShape(spec.Shape)} {spec.ShapeMeaning}");
            else if (info.Dtype.IsFloat8())
            {
                if (ScaledFp8Tensor.ProblemWithScales(config.Quantization, checkpoint, info) is { } problem) Add(problem);
            }
            else if (!info.Dtype.ConvertsToFloat32())
                Add($"{where} has dtype {info.Dtype.SafetensorsName()}; only F32, F16 and BF16 (and fp8 weights with scales) are supported");
        }
        if (count == 0) return;

        var message = $"checkpoint {checkpoint.Directory} does not match its config.json " +
            $"({(swiftKvEnabled ? "SwiftKV on" : "SwiftKV off")}): {count} problem(s):\n - " +
            string.Join("\n - ", problems);
        if (count > MaxProblemsListed) message += $"\n - ... and {count - MaxProblemsListed} more";
        if (missingOriginalQkv)
            message += "\nThis SwiftKV checkpoint lacks the original q/k/v projections of its later layers, so it can only run with SwiftKV on.";
        throw new InvalidModelException(message);
    }
}

/// <summary>What <see cref="LlamaCheckpointLoader.Verify"/> found: the tensors the model needs, all present and readable.</summary>
public sealed record VerifiedCheckpoint(int TensorCount, int Fp8TensorCount);
