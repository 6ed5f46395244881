// Reading the reference outputs tests/reference writes: little-endian fp32 arrays (".f32"); rebuilding the checkpoints
// those scripts made (the same make-model options, checked by the same digest).
using System.Security.Cryptography;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;

namespace SwiftKV.Engine.Tests;

public static class FixtureFiles
{
    public static float[] ReadFloats(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        var floats = new float[bytes.Length / 4];
        Buffer.BlockCopy(bytes, 0, floats, 0, floats.Length * 4);
        return floats;
    }

    public static ModelMakerOptions MakerOptions(IReadOnlyList<string> args)
    {
        string? Arg(string name) { int i = args.ToList().IndexOf(name); return i >= 0 ? args[i + 1] : null; }
        return new ModelMakerOptions
        {
            Seed = ulong.Parse(Arg("--seed") ?? "0"),
            Dtype = (Arg("--dtype") ?? "bf16") switch { "fp32" => TensorDtype.F32, "fp16" => TensorDtype.F16, _ => TensorDtype.BF16 },
            InitStd = float.Parse(Arg("--init-std") ?? "0.02", System.Globalization.CultureInfo.InvariantCulture),
        };
    }

    /// <summary>Same digest as tests/reference/make_fixtures.py: sorted names of config.json and *.safetensors, then bytes.</summary>
    public static string CheckpointDigest(string dir)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var f in Directory.GetFiles(dir).Select(Path.GetFileName).Order(StringComparer.Ordinal))
        {
            if (!(f!.EndsWith(".safetensors", StringComparison.Ordinal) || f == "config.json")) continue;
            sha.AppendData(System.Text.Encoding.UTF8.GetBytes(f));
            sha.AppendData(File.ReadAllBytes(Path.Combine(dir, f)));
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }
}
