// Decides, while text streams, whether the model is writing a tool call. Text that starts (after white space) with
// '{', '[' or <|python_tag|> is held until the answer ends and then parsed; anything else streams as it comes.
// NOTE: a call must be parsed whole, so a call is never streamed piecemeal; if the held text does not parse as
// calls to declared tools, it is returned as ordinary text — a malformed call is text, never an exception.
using System.Text;
using Microsoft.Extensions.AI;
using SwiftKV.Model.Tokenization;

namespace SwiftKV.AI;

internal sealed class ToolCallBuffer(IReadOnlyList<string> toolNames, string? prefill, bool allowMultiple = true)
{
    enum State { Undecided, Streaming, Holding }

    readonly StringBuilder _held = new(prefill ?? "");
    State _state = toolNames.Count == 0 ? State.Streaming : prefill is not null ? State.Holding : State.Undecided;

    /// <summary>Adds streamed text; returns what may be passed on now.</summary>
    public string Push(string text)
    {
        if (_state == State.Streaming) return text;
        _held.Append(text);
        if (_state == State.Holding) return "";
        string start = _held.ToString().TrimStart();
        if (start.Length == 0) return "";
        if (start[0] is '{' or '[' || Llama31ToolFormat.PythonTag.StartsWith(start, StringComparison.Ordinal) || start.StartsWith(Llama31ToolFormat.PythonTag, StringComparison.Ordinal))
        {
            if (start[0] is '{' or '[' || start.StartsWith(Llama31ToolFormat.PythonTag, StringComparison.Ordinal)) _state = State.Holding;
            return "";
        }
        _state = State.Streaming;
        string all = _held.ToString();
        _held.Clear();
        return all;
    }

    /// <summary>
    /// End of the answer: the calls it held, or the held text to pass on as text (always, with <paramref name="asText"/>:
    /// for a call MaxOutputTokens shaped, which is not made).
    /// </summary>
    public (IReadOnlyList<FunctionCallContent> Calls, string Text) Finish(bool asText = false)
    {
        string held = _held.ToString();
        _held.Clear();
        if (asText || _state == State.Streaming || held.Length == 0) return ([], held);
        var parsed = Llama31ToolFormat.TryParseCalls(held, toolNames);
        if (parsed is null) return ([], held);
        var calls = new List<FunctionCallContent>();
        foreach (var c in parsed)
        {
            var arguments = new Dictionary<string, object?>(StringComparer.Ordinal);
            // JSON allows a repeated name; a call that names an argument twice is malformed: it goes back as text.
            foreach (var p in c.Arguments.EnumerateObject())
                if (!arguments.TryAdd(p.Name, p.Value.Clone())) return ([], held);
            calls.Add(new FunctionCallContent("call_" + Guid.NewGuid().ToString("N")[..24], c.Name, arguments) { RawRepresentation = c });
        }
        if (!allowMultiple && calls.Count > 1) calls.RemoveRange(1, calls.Count - 1);   // ChatOptions.AllowMultipleToolCalls = false
        return (calls, "");
    }
}
