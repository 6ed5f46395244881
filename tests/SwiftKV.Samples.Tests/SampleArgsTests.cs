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

    /// <summary>The samples' Main: --help gives exit code 0 (it was an unknown option), a bad option 2, good options run.</summary>
    [Fact]
    public void ParseArgs_HelpBadAndGood()
    {
        static string Parse(SampleArgs a) { string v = a.String("model") ?? "demo"; a.RejectUnknown(); return v; }
        Assert.Equal(0, SampleRun.ParseArgs<string>("t", "usage", ["--help"], Parse, out _));
        Assert.Equal(0, SampleRun.ParseArgs<string>("t", "usage", ["-h", "--model", "/m"], Parse, out _));
        Assert.Equal(0, SampleRun.ParseArgs<string>("t", "usage", ["--model", "/m", "--help"], Parse, out _));
        Assert.Null(SampleRun.ParseArgs<string>("t", "usage", ["--model", "-h"], Parse, out var value));   // "-h" as a value
        Assert.Equal("-h", value);
        Assert.Equal(2, SampleRun.ParseArgs<string>("t", "usage", ["--modle", "/m"], Parse, out _));
        Assert.Null(SampleRun.ParseArgs<string>("t", "usage", ["--model=/m"], Parse, out var model));
        Assert.Equal("/m", model);
    }

    /// <summary>--name=value as the CLI takes it; a misspelt option names the one meant.</summary>
    [Fact]
    public void Parse_EqualsForm_AndNearMisses()
    {
        var a = new SampleArgs(["--model=/m", "--question=--what?"]);
        Assert.Equal("/m", a.String("model"));
        Assert.Equal("--what?", a.String("question"));
        a.RejectUnknown();
        var typo = new SampleArgs(["--modle", "/m"]);
        typo.String("model");
        typo.String("question");
        Assert.Contains("--modle (did you mean --model?)", Assert.Throws<ArgumentException>(typo.RejectUnknown).Message);
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
