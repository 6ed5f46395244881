// Text listings of a model's tensors (name, shape, dtype) built from the name table alone, without allocating a
// single weight: the 8B and 70B layouts can be reviewed and approval-tested on any machine, and the CLI can print
// what a config expects before anything is downloaded.
// Layout: a "# " title line with the tensor and parameter counts, then one line per tensor,
// "name<TAB>[d0, d1]<TAB>dtype", in the order the writer stores them.
using System.Globalization;
using System.Text;

namespace SwiftKV.Model.Checkpoint;

/// <summary>Renders tensor manifests of a config.</summary>
public static class ShapeManifest
{
    /// <summary>
    /// With <paramref name="swiftKvEnabled"/> null: everything a complete checkpoint of <paramref name="config"/> holds
    /// (<see cref="LlamaTensorNames.ForCheckpoint"/>); true or false: what the model loads in that mode
    /// (<see cref="LlamaTensorNames.ForModel"/>). The dtype is config.json's torch_dtype.
    /// </summary>
    public static string Render(LlamaConfig config, bool? swiftKvEnabled = null)
    {
        var specs = Specs(config, swiftKvEnabled);
        string dtype = TensorDtypes.FromTorchName(config.TorchDtype).SafetensorsName();
        string what = swiftKvEnabled switch
        {
            null => "checkpoint",
            true => "loaded with SwiftKV on",
            false => "loaded with SwiftKV off",
        };
        long parameters = specs.Sum(s => s.ElementCount);
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"# {what}: {specs.Count} tensors, {parameters:N0} parameters\n");
        foreach (var s in specs)
            text.Append(CultureInfo.InvariantCulture, $"{s.Name}\t{TensorInfo.FormatShape(s.Shape)}\t{dtype}\n");
        return text.ToString();
    }

    /// <summary>Number of parameters (elements) in <paramref name="config"/>'s checkpoint or, given a mode, in what that mode loads.</summary>
    public static long ParameterCount(LlamaConfig config, bool? swiftKvEnabled = null) =>
        Specs(config, swiftKvEnabled).Sum(s => s.ElementCount);

    static IReadOnlyList<TensorSpec> Specs(LlamaConfig config, bool? swiftKvEnabled)
    {
        ArgumentNullException.ThrowIfNull(config);
        return swiftKvEnabled is { } on ? LlamaTensorNames.ForModel(config, on) : LlamaTensorNames.ForCheckpoint(config);
    }
}
