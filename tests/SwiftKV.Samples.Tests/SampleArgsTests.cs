// The samples' tiny command-line parser: options, switches, and errors that name the option.
using Xunit;

namespace SwiftKV.Samples.Tests;

public sealed class SampleArgsTests
{
    [Fact]
    public void Parse_OptionsAndFlags_ReadBack()
    {
        var a = new SampleArgs(["--model", "/m", "--quick", "--top", "5"]);
        Assert.Equal("/m", a.String("model"));
        Assert.True(a.Flag("quick"));
        Assert.Equal(5, a.PositiveInt("top", 3));
        Assert.Equal(7, a.PositiveInt("absent", 7));
        a.RejectUnknown();
    }

    [Theory]
    [InlineData(new[] { "--top", "zero" }, "--top must be a positive integer")]
    [InlineData(new[] { "--top", "-1" }, "--top must be a positive integer")]
    [InlineData(new[] { "--modle", "x" }, "unknown option(s): --modle")]
    [InlineData(new[] { "stray" }, "unexpected argument 'stray'")]
    [InlineData(new[] { "--question", "" }, "--question needs a value (got an empty string)")]
    [InlineData(new[] { "--question", "  " }, "--question needs a value (got an empty string)")]
    [InlineData(new[] { "--top", "2", "--top", "3" }, "option --top given twice")]
    public void Parse_BadInput_NamesTheProblem(string[] args, string message)
    {
        var e = Assert.Throws<ArgumentException>(() =>
        {
            var a = new SampleArgs(args);
            a.PositiveInt("top", 1);
            a.String("question");
            a.RejectUnknown();
        });
        Assert.Contains(message, e.Message);
    }
}
