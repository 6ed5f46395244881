// Test-only FP8 checkpoints made here: a bf16 checkpoint written by LlamaCheckpointWriter is rewritten with every
// decoder Linear weight quantized to float8_e4m3fn (nearest finite code, found by search over the 256 codes'
// values, not by the loader's decoder) and a scale per matrix, per output channel or per block beside it. The
// PyTorch-made fixtures (tests/fixtures/fp8) are the independent reference; these serve shapes and faults that
// the fixtures do not have (partial blocks, matrices larger than the GPU loader's pieces, broken scales).
using System.Text;
using System.Text.Json.Nodes;
using SwiftKV.Model.Checkpoint;

namespace SwiftKV.Engine.Tests;

internal static class Fp8Checkpoints
{
    /// <summary>tests/fixtures/fp8 as copied beside the test assembly.</summary>
    public static readonly string FixtureDir = Path.Combine(AppContext.BaseDirectory, "fixtures", "fp8");

    public sealed record Fixture(int[] Ids, int[] Greedy, float[] Logits);

    public static Fixture ReadFixture(string name)
    {
        var meta = JsonNode.Parse(File.ReadAllText(Path.Combine(FixtureDir, name + ".json")))!;
        return new Fixture(
            meta["token_ids"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray(),
            meta["greedy_tokens"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray(),
            FixtureFiles.ReadFloats(Path.Combine(FixtureDir, name + ".logits.f32")));
    }

    public static string FixturePath(string name) => Path.Combine(FixtureDir, name);

    /// <summary>A fixture's logits with W8A8 numerics (each Linear's input quantized per token to e4m3): make_w8a8_fixtures.py.</summary>
    public static float[] ReadW8A8Logits(string name) => FixtureFiles.ReadFloats(Path.Combine(FixtureDir, name + ".w8a8.logits.f32"));

    public sealed record RawTensor(string Name, string Dtype, long[] Shape, byte[] Data);

    /// <summary>The finite e4m3 values, by code, computed from the format definition (sign, 4-bit exponent bias 7, 3-bit mantissa).</summary>
    static readonly (float Value, byte Code)[] Finite = Enumerable.Range(0, 256)
        .Where(c => (c & 0x7F) != 0x7F)
        .Select(c =>
        {
            int e = (c >> 3) & 15, m = c & 7;
            double v = e == 0 ? m / 8.0 * Math.Pow(2, -6) : (1 + m / 8.0) * Math.Pow(2, e - 7);
            return ((float)((c & 0x80) != 0 ? -v : v), (byte)c);
        })
        .OrderBy(t => t.Item1).ToArray();

    public static float E4M3Value(byte code) => Finite.First(f => f.Code == code).Value;

    /// <summary>The code of the finite e4m3 value nearest <paramref name="v"/> (saturating at +-448).</summary>
    public static byte Encode(float v)
    {
        int lo = 0, hi = Finite.Length - 1;
        while (hi - lo > 1)
        {
            int mid = (lo + hi) / 2;
            if (Finite[mid].Value <= v) lo = mid; else hi = mid;
        }
        return Math.Abs(Finite[lo].Value - v) <= Math.Abs(Finite[hi].Value - v) ? Finite[lo].Code : Finite[hi].Code;
    }

    /// <summary>The decoder's Linear weights (llm-compressor's targets: Linear, ignore lm_head).</summary>
    public static bool IsQuantized(string name) =>
        name.StartsWith("model.layers.", StringComparison.Ordinal)
        && (name.EndsWith("_proj.weight", StringComparison.Ordinal) || name.EndsWith("_proj_swiftkv.weight", StringComparison.Ordinal));

    /// <summary>
    /// Rewrites the single-file checkpoint in <paramref name="dir"/>: decoder Linear weights as F8_E4M3 with bf16 scales
    /// ("tensor", "channel", or "block" with <paramref name="block"/>), everything else as bf16, and quantization_config
    /// for <paramref name="method"/>. Returns each quantized weight's exact dequantized values (code value x scale).
    /// </summary>
    public static Dictionary<string, float[]> Quantize(string dir, string scheme, (int Rows, int Columns) block = default, string method = "compressed-tensors")
    {
        var exact = new Dictionary<string, float[]>(StringComparer.Ordinal);
        var raw = new List<RawTensor>();
        using (var checkpoint = SafetensorsCheckpoint.Open(dir))
        {
            foreach (var name in checkpoint.TensorNames.Order(StringComparer.Ordinal))
            {
                checkpoint.TryGet(name, out var info, out _);
                float[] w = checkpoint.ReadFloat32(name);
                long[] shape = info.Shape.ToArray();
                if (!IsQuantized(name))
                {
                    raw.Add(new RawTensor(name, "BF16", shape, Bf16Bytes(w)));
                    continue;
                }
                int rows = (int)shape[0], cols = (int)shape[1];
                (int b0, int b1) = scheme switch { "tensor" => (rows, cols), "channel" => (1, cols), _ => block };
                int gr = (rows + b0 - 1) / b0, gc = (cols + b1 - 1) / b1;
                var scales = new float[gr * gc];
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < cols; c++)
                        scales[r / b0 * gc + c / b1] = Math.Max(scales[r / b0 * gc + c / b1], Math.Abs(w[r * cols + c]));
                for (int i = 0; i < scales.Length; i++) scales[i] = RoundBf16(Math.Max(scales[i], 1e-12f) / 448f);
                var codes = new byte[w.Length];
                var values = new float[w.Length];
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < cols; c++)
                    {
                        float s = scales[r / b0 * gc + c / b1];
                        codes[r * cols + c] = Encode(w[r * cols + c] / s);
                        values[r * cols + c] = E4M3Value(codes[r * cols + c]) * s;
                    }
                exact[name] = values;
                raw.Add(new RawTensor(name, "F8_E4M3", shape, codes));
                long[] scaleShape = scheme switch { "tensor" => [1], "channel" => [rows, 1], _ => [gr, gc] };
                string scaleName = name[..^"weight".Length] + (method == "fp8" ? "weight_scale_inv" : "weight_scale");
                raw.Add(new RawTensor(scaleName, "BF16", scaleShape, Bf16Bytes(scales)));
            }
        }
        foreach (var f in Directory.GetFiles(dir, "*.safetensors*")) File.Delete(f);
        WriteSafetensors(Path.Combine(dir, "model.safetensors"), raw);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
        config["quantization_config"] = method switch
        {
            "fp8" => new JsonObject { ["quant_method"] = "fp8", ["weight_block_size"] = new JsonArray(block.Rows, block.Columns) },
            "fbgemm_fp8" => new JsonObject { ["quant_method"] = "fbgemm_fp8" },
            _ => new JsonObject
            {
                ["quant_method"] = "compressed-tensors",
                ["format"] = "float-quantized",
                ["config_groups"] = new JsonObject
                {
                    ["group_0"] = new JsonObject
                    {
                        ["targets"] = new JsonArray("Linear"),
                        ["weights"] = new JsonObject
                        {
                            ["num_bits"] = 8, ["type"] = "float", ["strategy"] = scheme,
                            ["block_structure"] = scheme == "block" ? new JsonArray(block.Rows, block.Columns) : null,
                        },
                    },
                },
            },
        };
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        return exact;
    }

    /// <summary>Writes a safetensors file of raw tensors (any dtype), data in the given order.</summary>
    public static void WriteSafetensors(string path, IReadOnlyList<RawTensor> tensors)
    {
        var header = new JsonObject { ["__metadata__"] = new JsonObject { ["format"] = "pt" } };
        long offset = 0;
        foreach (var t in tensors)
        {
            header[t.Name] = new JsonObject
            {
                ["dtype"] = t.Dtype,
                ["shape"] = new JsonArray(t.Shape.Select(s => (JsonNode)s).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + t.Data.Length),
            };
            offset += t.Data.Length;
        }
        byte[] json = Encoding.UTF8.GetBytes(header.ToJsonString());
        using var stream = File.Create(path);
        stream.Write(BitConverter.GetBytes((ulong)json.Length));
        stream.Write(json);
        foreach (var t in tensors) stream.Write(t.Data);
    }

    /// <summary>Reads every tensor of a single-file checkpoint as raw bytes, to edit and write back.</summary>
    public static List<RawTensor> ReadRaw(string dir)
    {
        using var file = SafetensorsFile.Open(Path.Combine(dir, "model.safetensors"));
        return file.Tensors.Select(t => new RawTensor(t.Name, t.Dtype.SafetensorsName(), t.Shape.ToArray(), file.ReadBytes(t.Name))).ToList();
    }

    static float RoundBf16(float v) => Fp32Conversion.BFloat16BitsToSingle(Fp32Conversion.SingleToBFloat16Bits(v));

    static byte[] Bf16Bytes(float[] values)
    {
        var bytes = new byte[values.Length * 2];
        Fp32Conversion.FromFloat32(values, TensorDtype.BF16, bytes);
        return bytes;
    }
}
