// Small, strict helpers for the JSON side files of a checkpoint (tokenizer.json, tokenizer_config.json,
// generation_config.json, config.json): every failure names the file and the key.
using System.Text.Json;

namespace SwiftKV.Model.Tokenization;

internal static class CheckpointJson
{
    /// <summary>Parses <paramref name="path"/> as a JSON object; null when the file does not exist.</summary>
    public static JsonElement? TryRead(string path)
    {
        if (!File.Exists(path)) return null;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { MaxDepth = 256 });
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new InvalidModelException($"{path}: the top level must be a JSON object, got {doc.RootElement.ValueKind}.");
            return doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new InvalidModelException($"{path}: not valid JSON ({e.Message}).", e);
        }
    }

    /// <summary>A property that is present and not null, else null.</summary>
    public static JsonElement? Get(JsonElement obj, string key) =>
        obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    /// <summary>A token written either as a plain string or as an AddedToken object {"content": ...}.</summary>
    public static string? TokenText(JsonElement obj, string key, string file)
    {
        if (Get(obj, key) is not { } v) return null;
        if (v.ValueKind == JsonValueKind.String) return v.GetString();
        if (v.ValueKind == JsonValueKind.Object && Get(v, "content") is { ValueKind: JsonValueKind.String } c) return c.GetString();
        throw new InvalidModelException($"{file}: '{key}' must be a string or an object with 'content', got {v.ValueKind}.");
    }

    /// <summary>An id written as an integer or a list of integers (eos_token_id); empty when absent.</summary>
    public static List<int> IdList(JsonElement obj, string key, string file)
    {
        var ids = new List<int>();
        if (Get(obj, key) is not { } v) return ids;
        if (v.ValueKind == JsonValueKind.Number) ids.Add(Int(v, key, file));
        else if (v.ValueKind == JsonValueKind.Array)
        {
            foreach (var item in v.EnumerateArray()) ids.Add(Int(item, key, file));
        }
        else throw new InvalidModelException($"{file}: '{key}' must be an integer or a list of integers, got {v.ValueKind}.");
        return ids;
    }

    public static int Int(JsonElement v, string key, string file)
    {
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int value) || value < 0)
            throw new InvalidModelException($"{file}: '{key}' must hold non-negative integers, got {v.GetRawText()}.");
        return value;
    }
}
