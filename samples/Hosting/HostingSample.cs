// SwiftKV in a Microsoft.Extensions.Hosting app: the chat client registered from appsettings.json's "SwiftKV"
// section (validated at start-up), wrapped in the standard middleware
// (.UseFunctionInvocation().UseOpenTelemetry().UseLogging()), a hosted service that answers one prompt, and
// OpenTelemetry traces (printed as each call ends) and metrics (printed when the host stops) on the console
// exporter. The host stops once the prompt is answered: this is a worker, not a web server.
//   dotnet run --project samples/Hosting -c Release -- [--model DIR] [--Sample:Prompt "..."] [--Sample:MaxTokens N] [--SwiftKV:SwiftKv false]
// An empty SwiftKV:ModelPath runs the demo model. Swapping a remote model for a local one is this one line:
//   builder.Services.AddSwiftKvChatClient(builder.Configuration.GetSection("SwiftKV"))   // was AddOpenAIChatClient(...)
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace SwiftKV.Samples.Hosting;

/// <summary>The hosting sample.</summary>
public static class HostingSample
{
    /// <summary>Telemetry source and meter name of the chat pipeline.</summary>
    public const string TelemetrySource = "SwiftKV.Samples.Hosting";

    const string Usage = "dotnet run --project samples/Hosting -c Release -- [--model DIR] [--Sample:Prompt TEXT] [--Sample:MaxTokens N] [--SwiftKV:<option> VALUE] [--Logging:LogLevel:<category> LEVEL]";

    public static async Task<int> Main(string[] args)
    {
        if (SampleRun.WantsHelp(args))
        {
            Console.WriteLine("usage: " + Usage);
            return 0;
        }
        return await SampleRun.Guarded("hosting", () => RunAsync(args, Console.Out));
    }

    /// <summary>Builds and runs the host until the answer service has answered; <paramref name="output"/> receives the answer and report.</summary>
    public static async Task RunAsync(string[] args, TextWriter output, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(output);
        RejectUnknownOptions(args);
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings
        {
            Args = args,
            // appsettings.json sits beside the binary, whatever directory `dotnet run` starts from.
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Configuration.AddCommandLine(args, new Dictionary<string, string> { ["--model"] = "SwiftKV:ModelPath" });
        // A model that cannot load fails the host's start; SampleRun prints that as one line, so the host's own
        // "Hosting failed to start" log (the whole stack trace) is left out.
        builder.Logging.AddFilter("Microsoft.Extensions.Hosting.Internal.Host", LogLevel.None);
        // Checked here, so a bad value (--Sample:MaxTokens abc, --SwiftKV:Backend Gpu) stops the start before anything is
        // printed or the demo model is made.
        if (builder.Configuration["Sample:MaxTokens"] is { } maxTokens && !(int.TryParse(maxTokens, out int n) && n > 0))
            throw new ArgumentException($"Sample:MaxTokens must be a positive integer (got '{maxTokens}').");
        CheckSettings(builder.Configuration);
        SwiftKV.AI.SwiftKvOptions.FromConfiguration(builder.Configuration.GetSection("SwiftKV")).ValidateSettings();
        if (string.IsNullOrWhiteSpace(builder.Configuration["SwiftKV:ModelPath"]))
            builder.Configuration["SwiftKV:ModelPath"] = SampleModel.Resolve(null, output).Path;

        builder.Services.AddSwiftKvChatClient(builder.Configuration.GetSection("SwiftKV"))
            .UseFunctionInvocation()
            .UseOpenTelemetry(sourceName: TelemetrySource)
            .UseLogging();

        builder.Services.AddOpenTelemetry()
            .ConfigureResource(r => r.AddService("swiftkv-hosting-sample"))
            .WithMetrics(m => m.AddMeter(TelemetrySource, "SwiftKV.*").AddConsoleExporter())
            .WithTracing(t => t.AddSource(TelemetrySource, "SwiftKV.*").AddConsoleExporter());

        builder.Services.Configure<AnswerOptions>(builder.Configuration.GetSection("Sample"));
        var sampleOutput = new SampleOutput(output);
        builder.Services.AddSingleton(sampleOutput);
        builder.Services.AddHostedService<AnswerService>();

        using var host = builder.Build();
        await host.RunAsync(cancellationToken);
        sampleOutput.Failure?.Throw();
        // Interrupted mid-answer, or stopped (Ctrl-C) before the answering service ran at all.
        if (sampleOutput.Interrupted || !sampleOutput.Answered) throw new OperationCanceledException("interrupted before the answer was complete.");
    }

    static readonly string[] s_sampleKeys = ["Prompt", "MaxTokens"];
    static readonly string[] s_hostKeys = ["model", "environment", "contentRoot", "applicationName"];

    /// <summary>
    /// What the command line check cannot see, from every source (appsettings.json, environment variables such as
    /// Sample__Promt, the command line): a Sample key this sample does not read, and a log level the logging
    /// configuration would reject later with a stack trace ("Verbose" is Serilog's word; here it is Trace).
    /// </summary>
    static void CheckSettings(IConfiguration configuration)
    {
        foreach (var key in configuration.GetSection("Sample").GetChildren().Select(c => c.Key))
            if (!s_sampleKeys.Contains(key, StringComparer.OrdinalIgnoreCase))
                throw new ArgumentException($"Sample:{key} is not a setting of this sample" +
                    (SwiftKV.Model.Spelling.Nearest(key, s_sampleKeys, StringComparison.OrdinalIgnoreCase) is { } near ? $" (did you mean Sample:{near}?)" : "") +
                    $"; it reads {string.Join(", ", s_sampleKeys.Select(k => "Sample:" + k))}.");
        foreach (var (key, value) in configuration.GetSection("Logging").AsEnumerable())
        {
            bool isLevel = key.Split(':') is [.., "LogLevel" or "loglevel" or "Loglevel", _] || key.Contains(":LogLevel:", StringComparison.OrdinalIgnoreCase);
            if (isLevel && value is not null && !(Enum.TryParse<LogLevel>(value, ignoreCase: true, out var level) && Enum.IsDefined(level)))
                throw new ArgumentException($"{key} '{value}' is not a log level (one of {string.Join(", ", Enum.GetNames<LogLevel>())}).");
        }
    }

    /// <summary>
    /// Options this sample or its host reads: --model, --Sample:Prompt / MaxTokens, --SwiftKV:&lt;option&gt; (which the
    /// registration checks itself), --Logging:&lt;key&gt; and the host's own --environment / --contentRoot /
    /// --applicationName. The host would ignore anything else, so a typo would silently do nothing.
    /// </summary>
    static void RejectUnknownOptions(IReadOnlyList<string> args)
    {
        static bool Under(string name, string section) => name.StartsWith(section + ":", StringComparison.OrdinalIgnoreCase);
        var parsed = new SampleArgs(args);
        // Every option takes a value; the host would drop a value-less one silently (--model alone ran the demo model).
        foreach (var name in parsed.Names) parsed.String(name);
        // The host's keys ignore case, so --SwiftKV:Backend and --swiftkv:backend are one setting given twice.
        if (parsed.Names.GroupBy(n => n, StringComparer.OrdinalIgnoreCase).FirstOrDefault(g => g.Count() > 1) is { } twice)
            throw new ArgumentException($"{string.Join(" and ", twice.Select(n => "--" + n))} name the same setting; give one");
        // Two names for one setting: the host would keep the later one without a word.
        if (parsed.Names.Contains("model", StringComparer.OrdinalIgnoreCase) && parsed.Names.Contains("SwiftKV:ModelPath", StringComparer.OrdinalIgnoreCase))
            throw new ArgumentException("--model and --SwiftKV:ModelPath name the same setting; give one");
        var unknown = parsed.Names.Where(name =>
            !s_hostKeys.Contains(name, StringComparer.OrdinalIgnoreCase) && !Under(name, "SwiftKV") && !Under(name, "Logging")
            && !(Under(name, "Sample") && s_sampleKeys.Contains(name["Sample:".Length..], StringComparer.OrdinalIgnoreCase))).ToList();
        string[] known = [.. s_hostKeys, .. s_sampleKeys.Select(k => "Sample:" + k)];
        string Describe(string n) => SwiftKV.Model.Spelling.Nearest(n, known, StringComparison.OrdinalIgnoreCase) is { } near ? $"--{n} (did you mean --{near}?)" : "--" + n;
        if (unknown.Count > 0)
            throw new ArgumentException($"unknown option(s): {string.Join(", ", unknown.Select(Describe))} (this sample takes --model DIR, --Sample:Prompt TEXT, " +
                "--Sample:MaxTokens N, --SwiftKV:<option> VALUE, --Logging:<key> VALUE and the host's --environment, --contentRoot, --applicationName)");
    }
}

/// <summary>Where the sample writes its answer (the console, or a test's writer), and how answering ended.</summary>
public sealed class SampleOutput(TextWriter writer)
{
    public TextWriter Writer { get; } = writer;
    /// <summary>Set when answering failed, so the caller of the host sees the error instead of a silent exit.</summary>
    public System.Runtime.ExceptionServices.ExceptionDispatchInfo? Failure { get; set; }
    /// <summary>Set when the host was stopped (Ctrl-C) before the answer was complete.</summary>
    public bool Interrupted { get; set; }
    /// <summary>Set once the whole answer was printed.</summary>
    public bool Answered { get; set; }
}
