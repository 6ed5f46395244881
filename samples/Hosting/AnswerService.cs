// The hosted service of the hosting sample: asks the registered IChatClient one question, streams the answer,
// prints the usage SwiftKV reports, and stops the host (so the exporters flush and the process exits).
using System.Diagnostics;
using System.Runtime.ExceptionServices;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using SwiftKV.AI;

namespace SwiftKV.Samples.Hosting;

/// <summary>The "Sample" section of appsettings.json.</summary>
public sealed class AnswerOptions
{
    public string Prompt { get; set; } = "Hello!";
    public int MaxTokens { get; set; } = 32;
}

/// <summary>Answers <see cref="AnswerOptions.Prompt"/> once, then stops the application.</summary>
public sealed class AnswerService(IChatClient client, IOptions<AnswerOptions> options, SampleOutput output, IHostApplicationLifetime lifetime)
    : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var w = output.Writer;
        try
        {
            var swiftKv = client.GetService<SwiftKvChatClient>()
                ?? throw new InvalidOperationException("the registered IChatClient pipeline does not wrap a SwiftKvChatClient");
            var config = swiftKv.Model.Config;
            w.WriteLine($"model: {swiftKv.Model.Path} ({config.ModelType}, {config.NumHiddenLayers} layers, backend {swiftKv.Model.Backend.Name}, SwiftKV {(swiftKv.Model.Backend.SwiftKvEnabled ? "on" : "off")})");
            w.WriteLine($"prompt: {options.Value.Prompt}");
            // Collected, then printed: the UseLogging() lines would otherwise interleave with the streamed text.
            var answer = new System.Text.StringBuilder();
            var clock = Stopwatch.StartNew();
            TimeSpan? firstToken = null;
            UsageDetails? usage = null;
            await foreach (var update in client.GetStreamingResponseAsync(options.Value.Prompt, new ChatOptions { MaxOutputTokens = options.Value.MaxTokens }, stoppingToken))
            {
                if (update.Text.Length > 0) firstToken ??= clock.Elapsed;
                answer.Append(update.Text);
                usage = update.Contents.OfType<UsageContent>().LastOrDefault()?.Details ?? usage;
            }
            w.WriteLine($"answer: {answer}");
            w.WriteLine($"prompt tokens: {usage?.InputTokenCount} | skipped by SwiftKV: {usage?.AdditionalCounts?.GetValueOrDefault(SwiftKvChatClient.PromptTokensSkippedBySwiftKv)} | " +
                        $"output tokens: {usage?.OutputTokenCount} | TTFT: {(firstToken ?? clock.Elapsed).TotalMilliseconds:F0} ms | total: {clock.Elapsed.TotalMilliseconds:F0} ms");
            w.WriteLine("(the TTFT of this first call includes the process's one-time start-up: compiling the code and first touching the weights)");
            if (swiftKv.Model.Path.Contains(SwiftKV.Model.Checkpoint.DemoModel.Name, StringComparison.Ordinal))
                w.WriteLine(SampleModel.GibberishNote);
            w.WriteLine("(OpenTelemetry: the traces above were exported as each call ended; the metrics follow as the host stops)");
            output.Answered = true;
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            output.Interrupted = true;   // Ctrl-C (or the host stopping) before the answer was complete
        }
        catch (Exception e)
        {
            output.Failure = ExceptionDispatchInfo.Capture(e);
        }
        finally
        {
            lifetime.StopApplication();
        }
    }
}
