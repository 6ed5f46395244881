// ErrorText: the text the CLI and the samples print for an error.
using SwiftKV.Model;
using Xunit;

namespace SwiftKV.Model.Tests;

public sealed class ErrorTextTests
{
    [Fact]
    public void ArgumentException_LosesTheParameterSuffix() =>
        Assert.Equal("SwiftKvOptions.ModelPath '/x' is not a directory.",
            ErrorText.ForConsole(new ArgumentException("SwiftKvOptions.ModelPath '/x' is not a directory.", "ModelPath")));

    [Fact]
    public void OutOfRange_BecomesOneLineWithTheValue() =>
        Assert.Equal("SwiftKvOptions.ContextLength must be > 0. (got 0)",
            ErrorText.ForConsole(new ArgumentOutOfRangeException("ContextLength", 0, "SwiftKvOptions.ContextLength must be > 0.")));

    [Fact]
    public void OtherErrors_KeepTheirMessageOnOneLine() =>
        Assert.Equal("config.json not found: /m/config.json (a checkpoint directory has one)",
            ErrorText.ForConsole(new InvalidModelException("config.json not found: /m/config.json\r\n(a checkpoint directory has one)")));

    /// <summary>The loader's list of problems keeps one item per line, indented; the sentence after it starts a line of its own.</summary>
    [Fact]
    public void AList_KeepsOneItemPerLine() =>
        Assert.Equal("checkpoint /m does not match: 2 problem(s):\n  - 'a' is missing\n  - 'b' has shape [2]\nThis checkpoint can only run with SwiftKV on.",
            ErrorText.ForConsole(new InvalidModelException(
                "checkpoint /m does not match: 2 problem(s):\n - 'a' is missing\n - 'b' has shape [2]\nThis checkpoint can only run with SwiftKV on.")));
}
