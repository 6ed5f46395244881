// Map-reduce summarization of a long report through Semantic Kernel, with each stage's prefill cost measured with
// SwiftKV off and on: two clients on the same checkpoint (SwiftKv = false runs it as the original Llama), the
// same prompts, the same backend. Map prompts are long chunks of the report and produce a few lines each, so
// nearly all the work is prefill: the shape of workload SwiftKV was made for.
//   dotnet run --project samples/Summarization -c Release -- [--model DIR] [--sections N] [--chunk-tokens N]
//     [--max-chunks N | --all-chunks] [--map-tokens N] [--reduce-tokens N] [--quick]
using System.Diagnostics;
using Microsoft.Extensions.AI;
using Microsoft.SemanticKernel;
using SwiftKV.AI;
using SwiftKV.Engine;
using SwiftKV.Model;
using SwiftKV.Model.Tokenization;

namespace SwiftKV.Samples.Summarization;

/// <summary>What the summarization sample runs on.</summary>
public sealed record SummarizationOptions
{
    /// <summary>Checkpoint directory; null runs the demo model.</summary>
    public string? Model { get; init; }
    /// <summary>Sections of the generated report (about 250 tokens each; 120 make about 30,000 tokens).</summary>
    public int Sections { get; init; } = 120;
    /// <summary>Largest map chunk, in the model's tokens.</summary>
    public int ChunkTokens { get; init; } = 2048;
    /// <summary>Map only the first N chunks (0 = all), to bound the run time on a small CPU.</summary>
    public int MaxChunks { get; init; } = 4;
    public int MapTokens { get; init; } = 32;
    public int ReduceTokens { get; init; } = 64;

    /// <summary>A run of a few seconds (used by the tests).</summary>
    public static SummarizationOptions Quick(string? model = null) =>
        new() { Model = model, Sections = 6, ChunkTokens = 512, MaxChunks = 0, MapTokens = 4, ReduceTokens = 4 };
}

/// <summary>One measured model call: its prompt size and time to first token with SwiftKV off and on.</summary>
public sealed record StageCall(string Stage, int PromptTokens, TimeSpan Off, TimeSpan On);

/// <summary>The summarization sample.</summary>
public static class SummarizationSample
{
    const string MapTemplate = """
        <message role="system">You summarize parts of a transit operations review for the board. Reply with at most three short bullet points: the most important numbers and problems.</message>
        <message role="user">Part {{$index}} of {{$count}} of the review:

        {{$chunk}}</message>
        """;

    const string ReduceTemplate = """
        <message role="system">You write the executive summary of a transit operations review from the summaries of its parts. Reply with five bullet points.</message>
        <message role="user">Summaries of the parts:

        {{$summaries}}</message>
        """;

    const string Usage = "dotnet run --project samples/Summarization -c Release -- [--model DIR] [--sections N] [--chunk-tokens N] [--max-chunks N | --all-chunks] [--map-tokens N] [--reduce-tokens N] [--quick]";

    public static async Task<int> Main(string[] args)
    {
        if (SampleRun.ParseArgs("summarization", Usage, args, a =>
            {
                var d = a.Flag("quick") ? SummarizationOptions.Quick() : new SummarizationOptions();
                bool all = a.Flag("all-chunks");
                if (all && a.String("max-chunks") is not null) throw new ArgumentException("--all-chunks and --max-chunks contradict each other; give one");
                var o = d with
                {
                    Model = a.String("model"),
                    Sections = InRange(a.PositiveInt("sections", d.Sections), "sections", 10_000),
                    ChunkTokens = InRange(a.PositiveInt("chunk-tokens", d.ChunkTokens), "chunk-tokens", 1 << 20),
                    MaxChunks = all ? 0 : a.PositiveInt("max-chunks", d.MaxChunks),
                    MapTokens = a.PositiveInt("map-tokens", d.MapTokens),
                    ReduceTokens = a.PositiveInt("reduce-tokens", d.ReduceTokens),
                };
                a.RejectUnknown();
                return o;
            }, out var options) is int exit)
            return exit;
        return await SampleRun.Guarded("summarization", () => RunAsync(options, Console.Out));
    }

    static int InRange(int value, string name, int max) =>
        value <= max ? value : throw new ArgumentException($"--{name} must be at most {max:N0} (got {value:N0})");

    /// <summary>Runs map-reduce with SwiftKV on, measures every prompt with SwiftKV off too, and reports.</summary>
    public static async Task<IReadOnlyList<StageCall>> RunAsync(SummarizationOptions options, TextWriter output, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(output);
        var (modelPath, isDemo) = SampleModel.Resolve(options.Model, output);

        // The document is chunked before any model loads, so a run whose reduce prompt cannot fit the model's context
        // is refused before the map calls (it used to fail after all of them), and the context is sized for both stages.
        var tokenizer = LlamaTokenizer.Load(modelPath);
        string report = LongReport.Generate(options.Sections);
        var chunks = ChunkByTokens(report, tokenizer, options.ChunkTokens);
        int totalTokens = tokenizer.Encode(report).Count;
        var mapped = options.MaxChunks > 0 ? chunks.Take(options.MaxChunks).ToList() : chunks;
        int context = ContextLength(options, tokenizer, mapped.Count, LlamaConfig.Load(modelPath).MaxPositionEmbeddings);

        // NOTE: two clients load the checkpoint twice (the backend is built for one mode); fine for the demo and
        // for 8B on a large GPU, and it is what makes the comparison same-checkpoint, same-backend. Each gets a KV
        // budget of its own: left to the default, the first engine on a GPU would take the memory the second one's
        // weights need. The map calls run one at a time, so 4 GiB each is plenty.
        const long kvBytes = 4L << 30;
        using var on = new SwiftKvChatClient(new SwiftKvOptions { ModelPath = modelPath, SwiftKv = true, ContextLength = context, KvCacheBytes = kvBytes });
        using var off = new SwiftKvChatClient(new SwiftKvOptions { ModelPath = modelPath, SwiftKv = false, ContextLength = context, KvCacheBytes = kvBytes });
        LlamaConfig config = on.Model.Config;
        bool hasSwiftKv = on.Model.Backend.SwiftKvEnabled;
        var (onPipeline, onRecorder) = SampleKernel.Pipeline(on);
        var (offPipeline, offRecorder) = SampleKernel.Pipeline(off);
        Kernel kernelOn = SampleKernel.Create(onPipeline), kernelOff = SampleKernel.Create(offPipeline);

        output.WriteLine($"model: {modelPath} ({config.ModelType}, {config.NumHiddenLayers} layers" +
                         (config.SwiftKv ? $", SwiftKV from layer {config.NumKeyValueLayers}, AcrossKV groups of {config.KeyValueGroupSize})" : ")"));
        int longest = chunks.Max(c => tokenizer.Encode(c).Count);
        output.WriteLine($"document: {options.Sections} sections, {totalTokens:N0} tokens, {chunks.Count} chunks of sections " +
                         $"(target <= {options.ChunkTokens} tokens, longest {longest}; a longer section is split at sentence ends); " +
                         $"mapping {mapped.Count}{(mapped.Count < chunks.Count ? " (--max-chunks; --all-chunks maps the whole report)" : "")}");
        // Tiny chunks of a long report make thousands of calls (--quick --chunk-tokens 1: 1,756 chunks): said up front.
        if (mapped.Count > ManyChunks)
            output.WriteLine($"note: {mapped.Count:N0} chunks make {2 * mapped.Count:N0} model calls (each prompt runs with SwiftKV off and on); --max-chunks N maps fewer.");

        // Warm both paths (JIT, first touch of the weights) so the timings measure prefill, not start-up.
        // A mid-sized prompt, so the longer-sequence code paths are compiled too: part of the first chunk, which the
        // context was sized for (a fixed slice of the report did not fit a model of a short context).
        var warm = new ChatOptions { MaxOutputTokens = 1 };
        string warmText = chunks[0][..Math.Min(chunks[0].Length, 1500)];
        for (int i = 0; i < 2; i++)
        {
            await on.GetResponseAsync(warmText, warm, cancellationToken);
            await off.GetResponseAsync(warmText, warm, cancellationToken);
        }

        var calls = new List<StageCall>();
        async Task<string> Measure(string stage, string template, KernelArguments arguments, int maxTokens)
        {
            // SwiftKV off: prefill plus one token is all we need from the teacher.
            offRecorder.Clear();
            await kernelOff.InvokePromptAsync(template, With(arguments, SampleKernel.Settings(1)), cancellationToken: cancellationToken);
            onRecorder.Clear();
            var result = await kernelOn.InvokePromptAsync(template, With(arguments, SampleKernel.Settings(maxTokens)), cancellationToken: cancellationToken);
            var offCall = offRecorder.Calls[^1];
            var onCall = onRecorder.Calls[^1];
            calls.Add(new StageCall(stage, onCall.PromptTokens, offCall.TimeToFirstToken, onCall.TimeToFirstToken));
            output.WriteLine($"  {stage,-6} {onCall.PromptTokens,6} prompt tokens   SwiftKV off {offCall.TimeToFirstToken.TotalMilliseconds,7:F0} ms   " +
                             $"on {onCall.TimeToFirstToken.TotalMilliseconds,7:F0} ms to first token   ({onCall.PromptTokensSkipped} skipped the later layers)");
            return result.ToString().Trim();
        }

        output.WriteLine("\nmap:");
        var summaries = new List<string>();
        for (int i = 0; i < mapped.Count; i++)
        {
            var args = new KernelArguments { ["index"] = i + 1, ["count"] = chunks.Count, ["chunk"] = mapped[i] };
            summaries.Add(await Measure("map", MapTemplate, args, options.MapTokens));
        }
        output.WriteLine("reduce:");
        string joined = string.Join("\n\n", summaries.Select((s, i) => $"Part {i + 1}:\n{AtMostTokens(s, tokenizer, SummaryBudget(options))}"));
        string summary = await Measure("reduce", ReduceTemplate, new KernelArguments { ["summaries"] = joined }, options.ReduceTokens);
        output.WriteLine($"\nsummary (SwiftKV {(hasSwiftKv ? "on" : "off")}):\n{summary}\n");

        WriteCostTable(output, config, calls, hasSwiftKv);
        if (isDemo) output.WriteLine("\n" + SampleModel.GibberishNote);
        return calls;
    }

    /// <summary>
    /// Tokens one part's summary may take in the reduce prompt: twice what the map call generates, since decoded text
    /// re-encodes to about as many tokens for a real model but a random one's stray bytes become several U+FFFD tokens.
    /// </summary>
    static int SummaryBudget(SummarizationOptions options) => 2 * options.MapTokens;

    /// <summary>Above this many mapped chunks the run says how many model calls it will make.</summary>
    const int ManyChunks = 32;

    // A part's label and the blank line between parts, with room for tokens that merge differently at the joins.
    const int PartOverheadTokens = 16;

    /// <summary>
    /// The context both stages need: a map prompt (template, the longest chunk, its answer) and the reduce prompt (template,
    /// every part's summary within <see cref="SummaryBudget"/>, its answer); at least the chunk size plus 1,024 as before.
    /// Refused, naming the options to change, when it exceeds the model's max_position_embeddings.
    /// </summary>
    public static int ContextLength(SummarizationOptions options, LlamaTokenizer tokenizer, int mappedChunks, int maxPositions)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(tokenizer);
        // The templates' own text (tags included, so an upper bound) inside the chat format's headers.
        int Framing(string template) => Llama31ChatFormat.Encode(tokenizer, [new ChatTurn("user", template)], addGenerationPrompt: true).Count;
        long map = Framing(MapTemplate) + 16L + options.ChunkTokens + options.MapTokens;
        long reduce = Framing(ReduceTemplate) + (long)mappedChunks * (SummaryBudget(options) + PartOverheadTokens) + options.ReduceTokens;
        if (map > maxPositions)
            throw new ArgumentException($"--chunk-tokens {options.ChunkTokens} with --map-tokens {options.MapTokens} makes map prompts of up to {map:N0} tokens, " +
                                        $"more than the model's context of {maxPositions:N0} tokens (max_position_embeddings): give smaller chunks.");
        if (reduce > maxPositions)
            throw new ArgumentException($"the reduce prompt would hold {mappedChunks:N0} summaries of up to {SummaryBudget(options) + PartOverheadTokens} tokens " +
                                        $"(up to {reduce:N0} tokens with its answer), more than the model's context of {maxPositions:N0} tokens (max_position_embeddings): " +
                                        "map fewer chunks (--max-chunks), make them larger (--chunk-tokens) or their summaries shorter (--map-tokens).");
        return (int)Math.Max(Math.Max(map, reduce), Math.Min(options.ChunkTokens + 1024L, maxPositions));
    }

    static string AtMostTokens(string text, LlamaTokenizer tokenizer, int tokens)
    {
        var ids = tokenizer.Encode(text);
        return ids.Count <= tokens ? text : tokenizer.Decode(ids.Take(tokens));
    }

    /// <summary>Sections packed into chunks of at most <paramref name="maxTokens"/> tokens; a longer section is split
    /// at sentence ends (then whitespace), so every chunk fits the prompt the context was sized for.</summary>
    public static List<string> ChunkByTokens(string document, LlamaTokenizer tokenizer, int maxTokens) =>
        new TextSplitter(maxTokens, s => tokenizer.Encode(s).Count)
            .Chunk(document.Split("\n\n", StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries), "\n\n");

    static KernelArguments With(KernelArguments values, PromptExecutionSettings settings)
    {
        var arguments = new KernelArguments(settings);
        foreach (var (name, value) in values) arguments[name] = value;
        return arguments;
    }

    /// <summary>Below this much prefill time a stage's off/on difference is mostly timer and scheduling noise.</summary>
    const int NoiseMs = 100;

    /// <summary>The per-stage table: prefill time (off, on) and FLOPs of each stage and in total.</summary>
    public static void WriteCostTable(TextWriter output, LlamaConfig config, IReadOnlyList<StageCall> calls, bool hasSwiftKv)
    {
        output.WriteLine("per-stage prefill cost (same checkpoint, same backend; time = time to first token):");
        output.WriteLine($"  {"stage",-6} {"calls",5} {"prompt tok",10} {"off ms",9} {"on ms",9} {"saved",6} {"off GFLOP",10} {"on GFLOP",10} {"saved",6}");
        foreach (var group in calls.GroupBy(c => c.Stage).Append(calls.GroupBy(_ => "total").Single()))
        {
            double offMs = group.Sum(c => c.Off.TotalMilliseconds), onMs = group.Sum(c => c.On.TotalMilliseconds);
            double offFlops = group.Sum(c => PrefillCost.Estimate(config, c.PromptTokens, swiftKv: false).Total);
            double onFlops = hasSwiftKv ? group.Sum(c => PrefillCost.Estimate(config, c.PromptTokens, swiftKv: true).Total) : offFlops;
            // Without SwiftKV layers both runs are the same model: any difference in time is noise, not a saving.
            string savedTime = hasSwiftKv ? (1 - onMs / offMs).ToString("P0") : "-";
            output.WriteLine($"  {group.Key,-6} {group.Count(),5} {group.Sum(c => c.PromptTokens),10} {offMs,9:F0} {onMs,9:F0} {savedTime,6} " +
                             $"{offFlops / 1e9,10:F1} {onFlops / 1e9,10:F1} {1 - onFlops / offFlops,6:P0}");
        }
        if (!hasSwiftKv)
            output.WriteLine("  this checkpoint has no SwiftKV layers, so on = off (the times differ by noise only); make one with `swiftkv transform --model DIR --out DIR2 --swiftkv-layers N`.");
        else if (calls.GroupBy(c => c.Stage).Any(g => g.Sum(c => c.Off.TotalMilliseconds) < NoiseMs))
            output.WriteLine($"  a stage under {NoiseMs} ms is within timing noise here: its time saved may read 0 % or even negative (the GFLOP column is exact).");
    }
}
