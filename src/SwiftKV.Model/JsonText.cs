// JSON that parses but is not text: a \u escape of half a UTF-16 surrogate pair ("\ud800" alone) is valid JSON
// syntax, and System.Text.Json accepts it while parsing, then throws an InvalidOperationException that names neither
// file nor key at the first read of that string. Readers of JSON from outside (checkpoints, training data, a model's
// tool calls, a caller's schema) look for it first, so they can say where it is or treat the value as malformed.
using System.Text.Json;

namespace SwiftKV.Model;

public static class JsonText
{
    /// <summary>
    /// Where the first key or string of <paramref name="e"/> that is not text sits, as a path from
    /// <paramref name="path"/> ("a key of $.model.vocab", "the string at $.messages[2].content"); null when all are text.
    /// </summary>
    public static string? FindNotText(JsonElement e, string path = "$")
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.Object:
                foreach (var p in e.EnumerateObject())
                {
                    string name;
                    try { name = p.Name; }
                    catch (InvalidOperationException) { return $"a key of {path}"; }
                    if (FindNotText(p.Value, $"{path}.{name}") is { } found) return found;
                }
                return null;
            case JsonValueKind.Array:
                int i = 0;
                foreach (var v in e.EnumerateArray())
                    if (FindNotText(v, $"{path}[{i++}]") is { } found) return found;
                return null;
            case JsonValueKind.String:
                try { _ = e.GetString(); return null; }
                catch (InvalidOperationException) { return $"the string at {path}"; }
            default:
                return null;
        }
    }

    /// <summary>The sentence that follows <see cref="FindNotText"/>'s answer in an error.</summary>
    public const string NotTextReason = "holds a \\u escape of half a UTF-16 surrogate pair (\\uD800-\\uDFFF without its other half), which is not text";
}
