// demo: a prompt-heavy summarization through the product's IChatClient (registered with AddSwiftKvChatClient),
// with the prefill cost measured with SwiftKV on and off in the same run, and FLOPs counted.
// NOTE: with no --model, a small random-weight SwiftKV checkpoint is made once under the user's cache
// directory; its answers are gibberish by construction — the point is the plumbing and the prefill saving.
using System.Diagnostics;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using SwiftKV.AI;
using SwiftKV.Engine;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;

namespace SwiftKV.Cli;

internal static class DemoCommand
{
    const string DemoModelName = DemoModel.Name;

    public static int Run(CliArgs a)
    {
        string? model = a.String("model");
        int maxTokens = a.Int("max-tokens") ?? 48;
        if (maxTokens <= 0) throw new UsageException($"--max-tokens must be > 0 (got {maxTokens})");
        a.RejectUnknown();
        model = model is null ? EnsureDemoModel() : CliArgs.CheckModelDirectory(model);
        return RunAsync(model, maxTokens).GetAwaiter().GetResult();
    }

    static async Task<int> RunAsync(string modelDir, int maxTokens)
    {
        // Two models share the GPU (the SwiftKV model and its teacher): each gets a KV budget of its own, or the first
        // engine would take the memory the second one's weights need. One request runs at a time: 4 GiB is plenty.
        const long kvBytes = 4L << 30;
        var services = new ServiceCollection();
        services.AddSwiftKvChatClient(o =>
        {
            o.ModelPath = modelDir;
            o.SwiftKv = true;
            o.ContextLength = 8192;
            o.KvCacheBytes = kvBytes;
        });
        await using var provider = services.BuildServiceProvider();
        var client = provider.GetRequiredService<IChatClient>();
        var swift = client.GetService<SwiftKvChatClient>()!;
        var config = swift.Model.Config;
        Console.WriteLine($"model: {modelDir}\n       {ModelCommands.Describe(config)}; backend {swift.Model.Backend.Name} ({swift.Model.BackendReason})");

        using var teacher = new SwiftKvChatClient(new SwiftKvOptions { ModelPath = modelDir, SwiftKv = false, ContextLength = 8192, KvCacheBytes = kvBytes });
        string document = LoadDocument();
        // Each call gets its own request number near the start, so a call reuses another's KV through the prefix
        // cache only for the chat template's fixed first KV block: the timings below are cold prefills of the
        // document, as for a new one.
        List<ChatMessage> Messages(int request) =>
        [
            new(ChatRole.System, $"Request {request}. You are a concise analyst. Answer with three short bullet points."),
            new(ChatRole.User, "Summarize the key results and risks in this report:\n\n" + document),
        ];

        // Warm both paths with the same long prompt (JIT of the long-prompt code, first touch of weights and KV pool),
        // then alternate off and on so start-up and drift fall on both alike: the ratio is SwiftKV's, not the order's.
        var (offMs, onMs, promptTokens) = await MedianFirstTokenMs(teacher, config.SwiftKv ? client : null, Messages);

        Console.WriteLine($"\nprompt: {promptTokens} tokens (system + report); answer: up to {maxTokens} tokens\n\nanswer (SwiftKV {(config.SwiftKv ? "on" : "off")}, streamed):");
        var options = new ChatOptions { MaxOutputTokens = maxTokens };
        UsageDetails? usage = null;
        ChatFinishReason? finish = null;
        await foreach (var update in client.GetStreamingResponseAsync(Messages(0), options))
        {
            Console.Write(update.Text);
            usage = update.Contents.OfType<UsageContent>().FirstOrDefault()?.Details ?? usage;
            finish = update.FinishReason ?? finish;
        }
        Console.WriteLine($"\n[finish: {finish}; tokens in {usage?.InputTokenCount}, out {usage?.OutputTokenCount}, total {usage?.TotalTokenCount}; "
            + $"{usage?.AdditionalCounts?.GetValueOrDefault(SwiftKvChatClient.PromptTokensFromPrefixCache)} prompt tokens from the prefix cache]");

        Console.WriteLine("\nprefill work for this prompt (same run, same checkpoint, same backend):");
        var flopsOff = PrefillCost.Estimate(config, promptTokens, swiftKv: false);
        Console.WriteLine($"  SwiftKV off: {offMs,8:F1} ms to first token   {flopsOff.Total / 1e9,8:F2} GFLOP");
        if (config.SwiftKv)
        {
            var flopsOn = PrefillCost.Estimate(config, promptTokens, swiftKv: true);
            Console.WriteLine($"  SwiftKV on:  {onMs,8:F1} ms to first token   {flopsOn.Total / 1e9,8:F2} GFLOP");
            Console.WriteLine($"  saved:       {1 - onMs / offMs,8:P0} of the time        {1 - flopsOn.Total / flopsOff.Total,8:P0} of the FLOPs");
            Console.WriteLine($"  KV cache:    {config.NumKvCaches(true)} of {config.NumHiddenLayers} layers' worth per token (AcrossKV g={config.KeyValueGroupSize})");
            Console.WriteLine($"  ({usage?.AdditionalCounts?.GetValueOrDefault(SwiftKvChatClient.PromptTokensSkippedBySwiftKv)} prompt tokens of the answer's request skipped layers {config.NumKeyValueLayers}..{config.NumHiddenLayers - 1})");
        }
        else
        {
            Console.WriteLine("  this checkpoint has no SwiftKV layers: make one with `swiftkv transform --model DIR --out DIR2 --swiftkv-layers N`.");
        }
        Console.WriteLine(Environment.GetEnvironmentVariable("SWIFTKV_DEMO_QUIET") is null && modelDir.Contains(DemoModelName)
            ? "\nnote: the demo model has random weights, so the answer above is gibberish by design. Point --model at a real\n"
              + "checkpoint (e.g. Snowflake/Llama-3.1-SwiftKV-8B-Instruct downloaded from Hugging Face) for real answers."
            : "");
        return 0;
    }

    /// <summary>
    /// Median over five rounds of the time to the first answer token (prefill + one lm_head + sampling) with SwiftKV
    /// off, and on when <paramref name="on"/> is given, the two alternating after one warm-up call each with the same
    /// prompt length. Every call has its own request number (no document reuse through the prefix cache).
    /// </summary>
    static async Task<(double OffMs, double OnMs, int PromptTokens)> MedianFirstTokenMs(IChatClient off, IChatClient? on, Func<int, List<ChatMessage>> messages)
    {
        var one = new ChatOptions { MaxOutputTokens = 1 };
        int request = 100;
        await off.GetResponseAsync(messages(request++), one);
        if (on is not null) await on.GetResponseAsync(messages(request++), one);
        var offTimes = new List<double>();
        var onTimes = new List<double>();
        int prompt = 0;
        for (int i = 0; i < 5; i++)
            foreach (var (client, times) in on is null ? [(off, offTimes)] : new[] { (off, offTimes), (on, onTimes) })
            {
                var sw = Stopwatch.StartNew();
                var r = await client.GetResponseAsync(messages(request++), one);
                times.Add(sw.Elapsed.TotalMilliseconds);
                prompt = (int)(r.Usage?.InputTokenCount ?? 0);
            }
        static double Median(List<double> t) { t.Sort(); return t[t.Count / 2]; }
        double offMs = Median(offTimes);
        return (offMs, on is null ? offMs : Median(onTimes), prompt);
    }

    static string LoadDocument()
    {
        using var s = typeof(DemoCommand).Assembly.GetManifestResourceStream("SwiftKV.Cli.Resources.quarterly-report.txt")
            ?? throw new InvalidOperationException("demo document resource missing from the build");
        return new StreamReader(s).ReadToEnd();
    }

    /// <summary>The default demo checkpoint: made once (a few seconds), then reused (shared with the samples).</summary>
    static string EnsureDemoModel() => DemoModel.Ensure(log: Console.WriteLine);
}
