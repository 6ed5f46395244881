// Small, strict helpers for the JSON side files of a checkpoint (tokenizer.json, tokenizer_config.json,
// generation_config.json, config.json): every failure names the file and the key.
using System.Text.Json;
using System.Text.Unicode;

namespace SwiftKV.Model.Tokenization;

internal static class CheckpointJson
{
    /// <summary>Parses <paramref name="path"/> as a JSON object; null when the file does not exist.</summary>
    public static JsonElement? TryRead(string path)
    {
        if (!FileExists(path)) return null;
        var utf8 = ReadUtf8(path);
        RequireUtf8(utf8.Span, path);
        try
        {
            using var doc = JsonDocument.Parse(utf8, new JsonDocumentOptions { MaxDepth = 256 });
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new InvalidModelException($"{path}: the top level must be a JSON object, got {doc.RootElement.ValueKind}.");
            RequireText(doc.RootElement, utf8.Span, path);
            return doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new InvalidModelException($"{path}: not valid JSON ({e.Message}).", e);
        }
    }

    /// <summary>
    /// The bytes of a JSON file without a leading UTF-8 byte order mark. Editors on Windows write one, Python's json
    /// module and Hugging Face read past it, and System.Text.Json's byte parsers do not: every checkpoint JSON file is
    /// read through here so that config.json, the index and the tokenizer files all take it alike.
    /// </summary>
    public static ReadOnlyMemory<byte> ReadUtf8(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        Checkpoint.GitLfsPointer.Refuse(path, bytes, bytes.Length);
        return bytes.AsSpan().StartsWith(Utf8Bom) ? bytes.AsMemory(Utf8Bom.Length) : bytes;
    }

    static ReadOnlySpan<byte> Utf8Bom => [0xEF, 0xBB, 0xBF];

    /// <summary>
    /// Refuses bytes that are not UTF-8, naming the first bad byte. System.Text.Json parses past them and only fails
    /// when a key or string is read, with an InvalidOperationException that names neither the file nor the key (a
    /// tokenizer_config.json saved as Latin-1 or cp1252 by an editor is the usual cause).
    /// </summary>
    public static void RequireUtf8(ReadOnlySpan<byte> bytes, string source)
    {
        if (Utf8.IsValid(bytes)) return;
        Utf8.ToUtf16(bytes, new char[bytes.Length], out int valid, out _, replaceInvalidSequences: false);
        throw new InvalidModelException($"{source}: not UTF-8 text: byte {valid} (0x{bytes[valid]:X2}) starts no valid character. JSON files must be saved as UTF-8.");
    }

    /// <summary>
    /// Refuses keys and strings whose \u escapes are half of a UTF-16 surrogate pair (e.g. "\ud800" alone), naming
    /// where: valid JSON syntax, but not text, and System.Text.Json would throw an unexplained InvalidOperationException
    /// at the first read of it. The whole document is read only when its bytes hold a \uD800-\uDFFF escape at all.
    /// </summary>
    public static void RequireText(JsonElement root, ReadOnlySpan<byte> utf8, string source)
    {
        if (MayHoldSurrogateEscape(utf8) && JsonText.FindNotText(root) is { } notText)
            throw new InvalidModelException($"{source}: {notText} {JsonText.NotTextReason}.");
    }

    static bool MayHoldSurrogateEscape(ReadOnlySpan<byte> utf8)
    {
        for (int i = utf8.IndexOf("\\u"u8); i >= 0 && i + 3 < utf8.Length; )
        {
            if ((utf8[i + 2] | 0x20) == (byte)'d' && utf8[i + 3] is (byte)'8' or (byte)'9' or (>= (byte)'a' and <= (byte)'f') or (>= (byte)'A' and <= (byte)'F'))
                return true;
            int next = utf8[(i + 2)..].IndexOf("\\u"u8);
            i = next < 0 ? -1 : i + 2 + next;
        }
        return false;
    }

    /// <summary>
    /// Whether a checkpoint file is present; throws when a directory has its name, which would otherwise read as a
    /// missing file and give a message about something else.
    /// </summary>
    public static bool FileExists(string path) =>
        Directory.Exists(path)
            ? throw new InvalidModelException($"{path} is a directory, not a file.")
            : File.Exists(path);

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
        if (v.ValueKind != JsonValueKind.Number || !TryGetInt32(v, out int value) || value < 0)
            throw new InvalidModelException($"{file}: '{key}' must hold non-negative integers, got {v.GetRawText()}.");
        return value;
    }

    /// <summary>
    /// A JSON number that is a whole 32-bit integer, also when written as 128001.0 or 1e3 (Python's json module writes
    /// floats so, and transformers reads them as ints); 1.5 is not one. config.json's reader uses the same rule.
    /// </summary>
    public static bool TryGetInt32(JsonElement v, out int value)
    {
        if (v.TryGetInt32(out value)) return true;
        return v.TryGetDouble(out double d) && IsInt32(d, out value);
    }

    /// <summary>True when <paramref name="d"/> is a whole number in int's range.</summary>
    public static bool IsInt32(double d, out int value)
    {
        bool whole = d == Math.Floor(d) && d >= int.MinValue && d <= int.MaxValue;
        value = whole ? (int)d : 0;
        return whole;
    }
}
