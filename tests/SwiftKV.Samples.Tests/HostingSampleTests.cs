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
    [InlineData("Logging:LogLevel:Default 'Verbose' is not a log level (one of Trace, Debug", "--Logging:LogLevel:Default", "Verbose")]
    [InlineData("Logging:Console:LogLevel:Default 'Loud' is not a log level", "--Logging:Console:LogLevel:Default", "Loud")]
    public async Task RunAsync_ConflictingOrIgnoredSettings_AreRefused(string expected, string key, string value)
    {
        var e = await Assert.ThrowsAnyAsync<ArgumentException>(() =>
            HostingSample.RunAsync(["--model", model.Directory, key, value.Replace("{model}", model.Directory)], new StringWriter(), TestContext.Current.CancellationToken));
        Assert.Contains(expected, e.Message);
    }

    [Theory]
    [InlineData("--SwiftKV:Backend and --swiftkv:backend name the same setting", "--SwiftKV:Backend", "cpu", "--swiftkv:backend", "cuda")]
    [InlineData("--Sample:Promt (did you mean --Sample:Prompt?)", "--Sample:Promt", "x")]
    public async Task RunAsync_RepeatsAndTypos_AreNamed(string expected, params string[] extra)
    {
        var e = await Assert.ThrowsAnyAsync<ArgumentException>(() =>
            HostingSample.RunAsync(["--model", model.Directory, .. extra], new StringWriter(), TestContext.Current.CancellationToken));
        Assert.Contains(expected, e.Message);
    }

    /// <summary>
    /// A Sample setting from the environment (Sample__Promt), which the command-line check cannot see, is named with
    /// the setting it was likely meant to be; a log level from the environment is checked as one from the command line.
    /// </summary>
    [Fact]
    public async Task RunAsync_TyposFromTheEnvironment_AreNamed()
    {
        try
        {
            Environment.SetEnvironmentVariable("Sample__Promt", "hello");
            var e = await Assert.ThrowsAnyAsync<ArgumentException>(() =>
                HostingSample.RunAsync(["--model", model.Directory], new StringWriter(), TestContext.Current.CancellationToken));
            Assert.Contains("Sample:Promt is not a setting of this sample (did you mean Sample:Prompt?)", e.Message);
            Environment.SetEnvironmentVariable("Sample__Promt", null);
            Environment.SetEnvironmentVariable("Logging__LogLevel__Default", "Verbose");
            e = await Assert.ThrowsAnyAsync<ArgumentException>(() =>
                HostingSample.RunAsync(["--model", model.Directory], new StringWriter(), TestContext.Current.CancellationToken));
            Assert.Contains("'Verbose' is not a log level", e.Message);
        }
        finally
        {
            Environment.SetEnvironmentVariable("Sample__Promt", null);
            Environment.SetEnvironmentVariable("Logging__LogLevel__Default", null);
        }
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

/// <summary>
/// Tests that set SWIFTKV_CACHE, which is process-wide: run alone, so no other test resolves the demo model meanwhile.
/// </summary>
[CollectionDefinition("SWIFTKV_CACHE", DisableParallelization = true)]
public sealed class DemoCacheCollection;

[Collection("SWIFTKV_CACHE")]
public sealed class HostingDemoCacheTests
{
    /// <summary>
    /// A bad SwiftKV setting with no --model stops the start before the demo model is made (a minute and ~120 MB on a
    /// first run): the demo cache, pointed at an empty folder, stays empty.
    /// </summary>
    [Fact]
    public async Task RunAsync_BadSettingWithoutModel_FailsBeforeTheDemoModelIsMade()
    {
        string? saved = Environment.GetEnvironmentVariable("SWIFTKV_CACHE");
        string cache = Path.Combine(Path.GetTempPath(), "swiftkv-empty-cache-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(cache);
        try
        {
            Environment.SetEnvironmentVariable("SWIFTKV_CACHE", cache);
            var e = await Assert.ThrowsAnyAsync<ArgumentException>(() =>
                HostingSample.RunAsync(["--SwiftKV:ContextLength", "0"], new StringWriter(), TestContext.Current.CancellationToken));
            Assert.Contains("ContextLength", e.Message);
            Assert.Empty(Directory.EnumerateFileSystemEntries(cache));
        }
        finally
        {
            Environment.SetEnvironmentVariable("SWIFTKV_CACHE", saved);
            Directory.Delete(cache, recursive: true);
        }
    }
}
