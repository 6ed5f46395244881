// config.json's quantization_config, for the FP8 weight formats the loaders read. Each stores a quantized Linear
// weight '<m>.weight' as fp8 codes with a scale tensor beside it; the real weight is code * scale:
//   compressed-tensors (llm-compressor; Snowflake's *-FP8 uploads): '<m>.weight_scale', one per output channel
//                      [out, 1], one per matrix [1], or one per block (strategy "block", block_structure [b0, b1]);
//   fbgemm_fp8         (Meta's own FP8 uploads): '<m>.weight_scale' per output channel;
//   fp8                (transformers' FineGrainedFP8): '<m>.weight_scale_inv' per [b0, b1] block (weight_block_size);
//                      without weight_block_size, the older AutoFP8 / vLLM files: '<m>.weight_scale', one per matrix.
// Which tensors are quantized is read from the files (a weight stored as F8_E4M3 is), not from the targets/ignore
// lists, so a checkpoint's own choice (lm_head kept in bf16) is followed whatever pattern it was made with.
// NOTE: the engine dequantizes on load and computes in bf16 (GPU) or fp32 (CPU): activation quantization
// (input_activations, input_scale) and quantized KV caches (kv_cache_scheme) are not applied. That is the original
// model's arithmetic with the checkpoint's rounded weights, as transformers runs such a file when decompressing it.
using System.Text.Json;
using System.Text.Json.Nodes;

namespace SwiftKV.Model;

/// <summary>How a checkpoint's fp8 weights are scaled (config.json quantization_config).</summary>
public sealed record WeightQuantization
{
    /// <summary>quant_method as written: "compressed-tensors", "fbgemm_fp8" or "fp8".</summary>
    public required string Method { get; init; }
    /// <summary>Rows x columns of one scale's block, for block-wise formats; null when scales are per channel or per matrix.</summary>
    public (int Rows, int Columns)? BlockSize { get; init; }

    /// <summary>
    /// The names the scale of the quantized weight <paramref name="weightName"/> ("....weight") may have, the format's own
    /// first: "fp8" files name it weight_scale_inv when block-wise and weight_scale otherwise (AutoFP8); both multiply.
    /// </summary>
    public IReadOnlyList<string> ScaleNames(string weightName)
    {
        string stem = weightName[..^"weight".Length];
        if (Method != "fp8") return [stem + "weight_scale"];
        return BlockSize is null ? [stem + "weight_scale", stem + "weight_scale_inv"] : [stem + "weight_scale_inv", stem + "weight_scale"];
    }

    public static readonly IReadOnlyList<string> SupportedMethods = ["compressed-tensors", "fbgemm_fp8", "fp8"];

    /// <summary>Reads a quantization_config object; throws <see cref="InvalidModelException"/> for what cannot be loaded.</summary>
    public static WeightQuantization Parse(JsonObject o, string source)
    {
        string where = source + " quantization_config";
        string method = o["quant_method"] is JsonValue v && v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>()
            : throw new InvalidModelException($"{where}: missing string 'quant_method'.");
        switch (method)
        {
            case "fbgemm_fp8":
                return new WeightQuantization { Method = method };
            case "fp8":
                // transformers' FineGrainedFP8Config always writes weight_block_size; AutoFP8 / vLLM "fp8" files have none
                // and one scale per matrix (or per channel: the scale's shape tells which).
                return new WeightQuantization { Method = method, BlockSize = Block(o["weight_block_size"], where + ".weight_block_size") };
            case "compressed-tensors":
                return ParseCompressedTensors(o, where);
            default:
                throw new InvalidModelException(
                    $"{where}: quant_method '{method}' is not supported; FP8 weights in the {string.Join(", ", SupportedMethods)} formats are " +
                    "(or load the unquantized checkpoint).");
        }
    }

    static WeightQuantization ParseCompressedTensors(JsonObject o, string where)
    {
        string format = o["format"] is JsonValue f && f.GetValueKind() == JsonValueKind.String ? f.GetValue<string>() : "dense";
        if (format is not ("float-quantized" or "naive-quantized" or "dense"))
            throw new InvalidModelException($"{where}: compressed-tensors format '{format}' is not supported (only FP8 weights: float-quantized, naive-quantized or dense).");
        (int, int)? block = null;
        if (o["config_groups"] is JsonObject groups)
        {
            foreach (var (name, node) in groups)
            {
                if (node is not JsonObject g || g["weights"] is not JsonObject w) continue;
                string at = $"{where}.config_groups.{name}.weights";
                string type = w["type"]?.GetValueKind() == JsonValueKind.String ? w["type"]!.GetValue<string>() : "int";
                int bits = w["num_bits"] is JsonValue b && b.TryGetValue(out int nb) ? nb : -1;
                if (type != "float" || bits != 8)
                    throw new InvalidModelException($"{at}: {bits}-bit {type} weights are not supported (only 8-bit float, FP8).");
                string strategy = w["strategy"]?.GetValueKind() == JsonValueKind.String ? w["strategy"]!.GetValue<string>() : "tensor";
                switch (strategy)
                {
                    case "tensor" or "channel":
                        break;
                    case "block":
                        var size = Block(w["block_structure"], at + ".block_structure")
                            ?? throw new InvalidModelException($"{at}: strategy 'block' needs block_structure [rows, columns].");
                        if (block is { } other && other != size)
                            throw new InvalidModelException($"{at}: block_structure {size} differs from another group's {other}.");
                        block = size;
                        break;
                    default:
                        throw new InvalidModelException($"{at}: strategy '{strategy}' is not supported (tensor, channel or block).");
                }
            }
        }
        return new WeightQuantization { Method = "compressed-tensors", BlockSize = block };
    }

    static (int, int)? Block(JsonNode? node, string where)
    {
        if (node is null || node.GetValueKind() == JsonValueKind.Null) return null;
        if (node is JsonArray { Count: 2 } a && a[0] is JsonValue r && r.TryGetValue(out int rows) && a[1] is JsonValue c && c.TryGetValue(out int cols)
            && rows > 0 && cols > 0)
            return (rows, cols);
        throw new InvalidModelException($"{where} must be [rows, columns] of positive integers, got {node.ToJsonString()}.");
    }
}
