// Custom (JSON-based) tool calling in the Llama 3.1 Instruct format, as the official HF chat_template renders it
// with its default tools_in_user_message=true:
//   system block:     "Environment: ipython\n" before the date lines (Llama31ChatFormat's ipythonEnvironment)
//   first user turn:  instructions + each tool as {"type": "function", "function": {...}} (tojson, indent 4) + the
//                     user's own text
//   assistant call:   {"name": "f", "parameters": {...}}   (one line, Python json.dumps layout), ended by <|eot_id|>
//   tool result:      an "ipython" turn holding the result text
// The model answers a call with the same JSON, sometimes after <|python_tag|> and ended by <|eom_id|>.
// NOTE: the template accepts one call per assistant turn; several calls are rendered one per line and the parser
// accepts several objects (separated by white space, ';' or ','), or a JSON array of them. Anything that is not a
// well-formed call to a declared tool is left to the caller as plain text: a bad call never throws.
using System.Text;
using System.Text.Json;

namespace SwiftKV.Model.Tokenization;

/// <summary>A tool the model may call: its name, description and JSON schema of its parameters.</summary>
public sealed record ToolDefinition(string Name, string? Description, JsonElement? ParametersSchema);

/// <summary>A call parsed from the model's output: the tool's name and its arguments (a JSON object).</summary>
public sealed record ParsedToolCall(string Name, JsonElement Arguments);

/// <summary>Renders tool definitions and calls in the Llama 3.1 format and parses the model's calls.</summary>
public static class Llama31ToolFormat
{
    public const string PythonTag = "<|python_tag|>";

    /// <summary>The text the template puts before the tool definitions in the first user message.</summary>
    public const string Instructions =
        "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n"
        + "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n";

    /// <summary>The first user turn's content with the tool definitions in front of <paramref name="userText"/> (trimmed, as the template does).</summary>
    public static string FirstUserMessage(IReadOnlyList<ToolDefinition> tools, string userText)
    {
        ArgumentNullException.ThrowIfNull(tools);
        ArgumentNullException.ThrowIfNull(userText);
        var sb = new StringBuilder(Instructions);
        foreach (var tool in tools) sb.Append(RenderDefinition(tool)).Append("\n\n");
        return sb.Append(userText.Trim()).ToString();
    }

    /// <summary>One tool as the template's <c>t | tojson(indent=4)</c> of the HF function schema.</summary>
    public static string RenderDefinition(ToolDefinition tool)
    {
        ArgumentNullException.ThrowIfNull(tool);
        if (string.IsNullOrWhiteSpace(tool.Name)) throw new ArgumentException("A tool needs a name.", nameof(tool));
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("type", "function");
            w.WritePropertyName("function");
            w.WriteStartObject();
            w.WriteString("name", tool.Name);
            if (!string.IsNullOrEmpty(tool.Description)) w.WriteString("description", tool.Description);
            w.WritePropertyName("parameters");
            if (tool.ParametersSchema is { ValueKind: JsonValueKind.Object } schema) schema.WriteTo(w);
            else
            {
                w.WriteStartObject();
                w.WriteString("type", "object");
                w.WriteStartObject("properties");
                w.WriteEndObject();
                w.WriteEndObject();
            }
            w.WriteEndObject();
            w.WriteEndObject();
        }
        using var doc = JsonDocument.Parse(buffer.WrittenMemory);
        return PythonJson.Dumps(doc.RootElement, indent: 4);
    }

    /// <summary>An assistant's call as the template renders it: <c>{"name": "f", "parameters": {...}}</c>.</summary>
    public static string RenderCall(string name, JsonElement arguments)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        var sb = new StringBuilder("{\"name\": ");
        using (var nameDoc = JsonDocument.Parse(JsonSerializer.Serialize(name)))
            sb.Append(PythonJson.Dumps(nameDoc.RootElement));
        sb.Append(", \"parameters\": ");
        sb.Append(arguments.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null ? "{}" : PythonJson.Dumps(arguments));
        return sb.Append('}').ToString();
    }

    /// <summary>Renders a JSON value (a tool result) one-line, as the template's tojson does.</summary>
    public static string RenderJson(JsonElement value) => PythonJson.Dumps(value);

    /// <summary>
    /// Parses the model's answer as one or more calls. Null when it is not entirely well-formed calls to tools
    /// named in <paramref name="knownTools"/> (pass null to accept any name).
    /// </summary>
    public static IReadOnlyList<ParsedToolCall>? TryParseCalls(string output, IReadOnlyCollection<string>? knownTools)
    {
        ArgumentNullException.ThrowIfNull(output);
        string text = output.Trim();
        if (text.StartsWith(PythonTag, StringComparison.Ordinal)) text = text[PythonTag.Length..].TrimStart();
        if (text.Length == 0 || (text[0] != '{' && text[0] != '[')) return null;

        var calls = new List<ParsedToolCall>();
        byte[] utf8 = Encoding.UTF8.GetBytes(text);
        int at = 0;
        try
        {
            while (at < utf8.Length)
            {
                var reader = new Utf8JsonReader(utf8.AsSpan(at), new JsonReaderOptions { AllowMultipleValues = true });
                using var doc = JsonDocument.ParseValue(ref reader);
                at += (int)reader.BytesConsumed;
                if (JsonText.FindNotText(doc.RootElement) is not null) return null;   // not text: malformed, so not a call
                if (doc.RootElement.ValueKind == JsonValueKind.Array)
                {
                    foreach (var item in doc.RootElement.EnumerateArray())
                        if (!TryReadCall(item, knownTools, calls)) return null;
                }
                else if (!TryReadCall(doc.RootElement, knownTools, calls)) return null;
                while (at < utf8.Length && utf8[at] is (byte)' ' or (byte)'\t' or (byte)'\n' or (byte)'\r' or (byte)';' or (byte)',') at++;
            }
        }
        catch (JsonException)
        {
            return null;
        }
        return calls.Count > 0 ? calls : null;
    }

    static bool TryReadCall(JsonElement e, IReadOnlyCollection<string>? knownTools, List<ParsedToolCall> calls)
    {
        if (e.ValueKind != JsonValueKind.Object) return false;
        // A call holds its name and arguments (some fine-tunes add "type": "function"); an object with any other key is
        // an answer that happens to have a "name", not a call to run.
        foreach (var p in e.EnumerateObject())
            if (p.Name is not ("name" or "parameters" or "arguments" or "type")) return false;
        if (!e.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String) return false;
        string n = name.GetString()!;
        if (n.Length == 0 || (knownTools is not null && !knownTools.Contains(n))) return false;
        JsonElement args;
        if (!e.TryGetProperty("parameters", out args) && !e.TryGetProperty("arguments", out args))
        {
            calls.Add(new ParsedToolCall(n, JsonDocument.Parse("{}").RootElement.Clone()));
            return true;
        }
        if (args.ValueKind == JsonValueKind.String)
        {
            // Some fine-tunes put the arguments in a string of JSON.
            try
            {
                using var inner = JsonDocument.Parse(args.GetString()!);
                if (JsonText.FindNotText(inner.RootElement) is not null) return false;   // the outer check cannot see inside
                args = inner.RootElement.Clone();
            }
            catch (JsonException)
            {
                return false;
            }
        }
        if (args.ValueKind != JsonValueKind.Object) return false;
        calls.Add(new ParsedToolCall(n, args.Clone()));
        return true;
    }
}
