// Errors as the command line and the samples print them. ArgumentException's Message appends " (Parameter 'name')"
// and ArgumentOutOfRangeException's a second line "Actual value was v."; the messages here already name the option.
// A message is one line, except that a list it carries (the loader's " - " problems) keeps one item per line: joined
// into one line, a checkpoint with five wrong tensors printed a single line hundreds of characters long.
namespace SwiftKV.Model;

/// <summary>The text of an error for a command line's "tool: message" output.</summary>
public static class ErrorText
{
    const string ListItem = " - ";

    public static string ForConsole(Exception e)
    {
        ArgumentNullException.ThrowIfNull(e);
        string message = e is ArgumentException { ParamName: { } name } a && a.Message.IndexOf($" (Parameter '{name}')", StringComparison.Ordinal) is int cut and >= 0
            ? a.Message[..cut]
            : e.Message;
        var lines = message.ReplaceLineEndings("\n").Split('\n');
        var text = new System.Text.StringBuilder(lines[0].Trim());
        for (int i = 1; i < lines.Length; i++)
        {
            bool item = lines[i].StartsWith(ListItem, StringComparison.Ordinal);
            bool afterList = lines[i - 1].StartsWith(ListItem, StringComparison.Ordinal);
            string line = lines[i].Trim();
            if (line.Length == 0) continue;
            // A list item, and the first line after a list, start their own line; any other break is a space.
            if (item) text.Append("\n  ").Append(line);
            else if (afterList) text.Append('\n').Append(line);
            else text.Append(' ').Append(line);
        }
        if (e is ArgumentOutOfRangeException { ActualValue: { } actual } && !message.Contains("Actual value", StringComparison.Ordinal))
            text.Append($" (got {actual})");
        return text.ToString();
    }
}
