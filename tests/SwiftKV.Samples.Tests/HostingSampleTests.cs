// The hosting sample's generic host end to end on the tiny model: configuration binding (appsettings.json plus
// command-line overrides), the middleware pipeline, the hosted service's answer, and validation at start-up.
using SwiftKV.Samples.Hosting;
using Xunit;

namespace SwiftKV.Samples.Tests;

public sealed class HostingSampleTests(TinySampleModel model)
{
    [Fact]
    public async Task RunAsync_TinyModel_AnswersThroughThePipelineAndStops()
    {
        var output = new StringWriter();
        await HostingSample.RunAsync(["--model", model.Directory, "--Sample:MaxTokens", "3"], output, TestContext.Current.CancellationToken);
        string text = output.ToString();

        Assert.Contains($"model: {model.Directory} (llama_swiftkv", text);
        Assert.Contains("SwiftKV on", text);
        Assert.Contains("prompt: In two sentences", text); // from appsettings.json
        Assert.Contains("answer: ", text);
        Assert.Contains("| skipped by SwiftKV: ", text);
        Assert.Contains("| output tokens: 3 |", text);
    }

    [Fact]
    public async Task RunAsync_SwiftKvOffFromCommandLine_SkipsNothing()
    {
        var output = new StringWriter();
        await HostingSample.RunAsync(["--model", model.Directory, "--Sample:MaxTokens", "1", "--SwiftKV:SwiftKv", "false"], output,
            TestContext.Current.CancellationToken);

        Assert.Contains("SwiftKV off", output.ToString());
        Assert.Contains("| skipped by SwiftKV: 0 |", output.ToString());
    }

    [Fact]
    public async Task RunAsync_InvalidConfiguration_FailsAtStartNamingTheOption()
    {
        var e = await Assert.ThrowsAnyAsync<ArgumentException>(() =>
            HostingSample.RunAsync(["--model", model.Directory, "--SwiftKV:ContextLength", "0"], new StringWriter(), TestContext.Current.CancellationToken));
        Assert.Contains("ContextLength", e.Message);
    }

    [Theory]
    [InlineData("--modle")]
    [InlineData("--foo")]
    [InlineData("--Sample:MaxToken")]
    public async Task RunAsync_UnknownOption_FailsNamingIt(string option)
    {
        var e = await Assert.ThrowsAnyAsync<ArgumentException>(() =>
            HostingSample.RunAsync(["--model", model.Directory, option, "1"], new StringWriter(), TestContext.Current.CancellationToken));
        Assert.Contains($"unknown option(s): {option}", e.Message);
    }

    [Fact]
    public async Task RunAsync_LoggingOverrideAndHostKeys_AreAccepted()
    {
        var output = new StringWriter();
        await HostingSample.RunAsync(["--Model", model.Directory, "--Sample:MaxTokens", "1", "--Logging:LogLevel:Microsoft.Extensions.AI", "Warning",
            "--environment", "Staging"], output, TestContext.Current.CancellationToken);
        Assert.Contains("answer: ", output.ToString());
    }

    [Theory]
    [InlineData("abc")]
    [InlineData("0")]
    public async Task RunAsync_BadSampleValue_FailsBeforeTheHostStarts(string value)
    {
        var output = new StringWriter();
        var e = await Assert.ThrowsAnyAsync<Exception>(() =>
            HostingSample.RunAsync(["--model", model.Directory, "--Sample:MaxTokens", value], output, TestContext.Current.CancellationToken));
        Assert.Contains("MaxTokens", e.Message);
        Assert.DoesNotContain("model:", output.ToString());   // the hosted service never ran
    }

    /// <summary>Stopping the host before the answer is complete (Ctrl-C) is an OperationCanceledException, exit code 130.</summary>
    [Fact]
    public async Task RunAsync_StoppedBeforeTheAnswer_IsInterruptedWith130()
    {
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            HostingSample.RunAsync(["--model", model.Directory, "--Sample:MaxTokens", "3"], new StringWriter(), cts.Token));
        Assert.Equal(130, await SampleRun.Guarded("hosting", () => Task.FromException(new OperationCanceledException("interrupted"))));
    }
}
