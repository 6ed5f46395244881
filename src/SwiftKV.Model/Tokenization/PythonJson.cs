// JSON text as Python's json.dumps(ensure_ascii=False) writes it, which is what the HF chat templates' tojson filter
// emits: ", " and ": " separators when compact, 4-space indentation when indented, non-ASCII left as is. Llama 3.1
// saw tool definitions and calls in exactly this layout during fine-tuning, so the prompt reproduces it.
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace SwiftKV.Model.Tokenization;

internal static class PythonJson
{
    /// <summary>Serialises <paramref name="value"/>; <paramref name="indent"/> 0 is one line.</summary>
    public static string Dumps(JsonElement value, int indent = 0)
    {
        var sb = new StringBuilder();
        Write(sb, value, indent, 0);
        return sb.ToString();
    }

    static void Write(StringBuilder sb, JsonElement v, int indent, int level)
    {
        switch (v.ValueKind)
        {
            case JsonValueKind.Object:
                WriteContainer(sb, '{', '}', v.EnumerateObject().Select(p => ((string?)p.Name, p.Value)), indent, level);
                break;
            case JsonValueKind.Array:
                WriteContainer(sb, '[', ']', v.EnumerateArray().Select(e => ((string?)null, e)), indent, level);
                break;
            case JsonValueKind.String:
                WriteString(sb, v.GetString()!);
                break;
            case JsonValueKind.True: sb.Append("true"); break;
            case JsonValueKind.False: sb.Append("false"); break;
            case JsonValueKind.Null: sb.Append("null"); break;
            default: sb.Append(v.GetRawText()); break;
        }
    }

    static void WriteContainer(StringBuilder sb, char open, char close, IEnumerable<(string? Name, JsonElement Value)> items, int indent, int level)
    {
        var list = items.ToList();
        sb.Append(open);
        if (list.Count == 0)
        {
            sb.Append(close);
            return;
        }
        for (int i = 0; i < list.Count; i++)
        {
            if (i > 0) sb.Append(indent > 0 ? "," : ", ");
            if (indent > 0) sb.Append('\n').Append(' ', indent * (level + 1));
            if (list[i].Name is { } name)
            {
                WriteString(sb, name);
                sb.Append(": ");
            }
            Write(sb, list[i].Value, indent, level + 1);
        }
        if (indent > 0) sb.Append('\n').Append(' ', indent * level);
        sb.Append(close);
    }

    static void WriteString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}
