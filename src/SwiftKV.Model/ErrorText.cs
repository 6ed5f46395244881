// Errors as the command line prints them: one line. ArgumentException's Message appends " (Parameter 'name')" and
// ArgumentOutOfRangeException's a second line "Actual value was v."; the messages here already name the option.
namespace SwiftKV.Model;

/// <summary>One-line text of an error for a command line's "tool: message" output.</summary>
public static class ErrorText
{
    public static string OneLine(Exception e)
    {
        ArgumentNullException.ThrowIfNull(e);
        string message = e is ArgumentException { ParamName: { } name } a && a.Message.IndexOf($" (Parameter '{name}')", StringComparison.Ordinal) is int cut and >= 0
            ? a.Message[..cut]
            : e.Message;
        message = message.ReplaceLineEndings(" ").Trim();
        if (e is ArgumentOutOfRangeException { ActualValue: { } actual } && !message.Contains("Actual value", StringComparison.Ordinal))
            message += $" (got {actual})";
        return message;
    }
}
