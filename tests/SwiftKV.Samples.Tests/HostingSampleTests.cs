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
        Assert.IsAssignableFrom<ArgumentException>(e);
        Assert.DoesNotContain("System.Int32", e.Message);   // the binder's type names are not shown
        Assert.DoesNotContain("model:", output.ToString());   // the hosted service never ran
    }

    /// <summary>
    /// Settings the host would silently resolve or drop are refused: --model beside --SwiftKV:ModelPath (the later won),
    /// sub-keys under an option (ignored). A bad SwiftKV setting with no --model fails before the demo model is made.
    /// </summary>
    [Theory]
    [InlineData("--model and --SwiftKV:ModelPath name the same setting", "--SwiftKV:ModelPath", "{model}")]
    [InlineData("SwiftKV:ModelPath:x is not an option: SwiftKV:ModelPath takes a single value", "--SwiftKV:ModelPath:x", "1")]
    [InlineData("SwiftKV:Backend 'Gpu' is not one of Auto, Cpu, Cuda", "--SwiftKV:Backend", "Gpu")]
    public async Task RunAsync_ConflictingOrIgnoredSettings_AreRefused(string expected, string key, string value)
    {
        var e = await Assert.ThrowsAnyAsync<ArgumentException>(() =>
            HostingSample.RunAsync(["--model", model.Directory, key, value.Replace("{model}", model.Directory)], new StringWriter(), TestContext.Current.CancellationToken));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public async Task RunAsync_BadSettingWithoutModel_FailsBeforeTheDemoModelIsMade()
    {
        var output = new StringWriter();
        var e = await Assert.ThrowsAnyAsync<ArgumentException>(() =>
            HostingSample.RunAsync(["--SwiftKV:ContextLength", "0"], output, TestContext.Current.CancellationToken));
        Assert.Contains("ContextLength", e.Message);
        Assert.DoesNotContain("demo checkpoint", output.ToString());
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
