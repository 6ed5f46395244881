// ErrorText: the one line the CLI and the samples print for an error.
using SwiftKV.Model;
using Xunit;

namespace SwiftKV.Model.Tests;

public sealed class ErrorTextTests
{
    [Fact]
    public void ArgumentException_LosesTheParameterSuffix() =>
        Assert.Equal("SwiftKvOptions.ModelPath '/x' is not a directory.",
            ErrorText.OneLine(new ArgumentException("SwiftKvOptions.ModelPath '/x' is not a directory.", "ModelPath")));

    [Fact]
    public void OutOfRange_BecomesOneLineWithTheValue() =>
        Assert.Equal("SwiftKvOptions.ContextLength must be > 0. (got 0)",
            ErrorText.OneLine(new ArgumentOutOfRangeException("ContextLength", 0, "SwiftKvOptions.ContextLength must be > 0.")));

    [Fact]
    public void OtherErrors_KeepTheirMessageOnOneLine() =>
        Assert.Equal("config.json not found: /m/config.json (a checkpoint directory has one)",
            ErrorText.OneLine(new InvalidModelException("config.json not found: /m/config.json\n(a checkpoint directory has one)")));
}
