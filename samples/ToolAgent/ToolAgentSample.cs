// A Semantic Kernel agent with two plugins (calculator, document lookup) that the model calls on its own:
// FunctionChoiceBehavior.Auto() advertises the functions, SwiftKV's client writes them into the Llama 3.1 prompt
// and parses the model's JSON calls, and UseFunctionInvocation() in the chat pipeline runs them and sends the
// results back (SK 1.82 calls the registered IChatClient directly, so the pipeline must hold function invocation).
// Every model round trip is a prefill over the whole conversation so far, which is where SwiftKV saves.
//   dotnet run --project samples/ToolAgent -c Release -- [--model DIR] [--question TEXT] [--require lookup|multiply|add]
// NOTE: the demo model's weights are random, so under Auto it will not decide to call a tool; --require forces a
// call through ToolMode RequireSpecific (the client prefills the call and constrains it to JSON) to show the
// round trip anyway. A real instruct checkpoint calls the tools by itself.
using Microsoft.SemanticKernel;
using SwiftKV.AI;

namespace SwiftKV.Samples.ToolAgent;

/// <summary>What the tool agent runs on.</summary>
public sealed record ToolAgentOptions
{
    /// <summary>Checkpoint directory; null runs the demo model.</summary>
    public string? Model { get; init; }
    public string Question { get; init; } = "How many months is the Mow-3 battery covered, and what is that times 3?";
    /// <summary>Name of a function to require on the first turn (lookup, multiply, add), or null for Auto.</summary>
    public string? Require { get; init; }
    public int MaxTokens { get; init; } = 64;
}

/// <summary>What a run did: the answer, the tools called and the model round trips.</summary>
public sealed record ToolAgentResult(string Answer, IReadOnlyList<string> ToolCalls, IReadOnlyList<CallRecord> ModelCalls);

/// <summary>The tool-agent sample.</summary>
public static class ToolAgentSample
{
    const string Usage = "dotnet run --project samples/ToolAgent -c Release -- [--model DIR] [--question TEXT] [--require lookup|multiply|add] [--max-tokens N]";

    public static async Task<int> Main(string[] args)
    {
        if (SampleRun.ParseArgs("tool-agent", Usage, args, a =>
            {
                var d = new ToolAgentOptions();
                var o = new ToolAgentOptions
                {
                    Model = a.String("model"),
                    Question = a.String("question") ?? d.Question,
                    Require = a.String("require"),
                    MaxTokens = a.PositiveInt("max-tokens", d.MaxTokens),
                };
                a.RejectUnknown();
                return o;
            }, out var options) is int exit)
            return exit;
        return await SampleRun.Guarded("tool-agent", () => RunAsync(options, Console.Out));
    }

    /// <summary>Asks the question through a kernel with the plugins, and reports tools called and prefill numbers.</summary>
    public static async Task<ToolAgentResult> RunAsync(ToolAgentOptions options, TextWriter output, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(output);
        var log = new ToolLog();
        KernelPlugin[] plugins =
        [
            KernelPluginFactory.CreateFromObject(new CalculatorPlugin(log), "calculator"),
            KernelPluginFactory.CreateFromObject(new DocumentLookupPlugin(log), "documents"),
        ];
        // Checked before the model loads, so a typo costs nothing.
        KernelFunction? required = options.Require is null ? null
            : plugins.SelectMany(p => p).FirstOrDefault(f => f.Name == options.Require)
              ?? throw new ArgumentException($"--require '{options.Require}' is not a function of the agent ({string.Join(", ", plugins.SelectMany(p => p).Select(f => f.Name))})");
        var (modelPath, isDemo) = SampleModel.Resolve(options.Model, output);

        using var swiftKv = new SwiftKvChatClient(new SwiftKvOptions { ModelPath = modelPath });
        var (pipeline, recorder) = SampleKernel.Pipeline(swiftKv);
        var kernel = SampleKernel.Create(pipeline, b =>
        {
            foreach (var plugin in plugins) b.Plugins.Add(plugin);
        });
        var behavior = required is null ? FunctionChoiceBehavior.Auto() : FunctionChoiceBehavior.Required([required]);

        output.WriteLine($"tools: {string.Join(", ", kernel.Plugins.SelectMany(p => p.Select(f => $"{p.Name}.{f.Name}")))}; " +
                         $"choice: {(options.Require is null ? "Auto" : $"Required({options.Require}) on the first turn")}");
        output.WriteLine($"question: {options.Question}");
        // The question goes in as a variable, not as the template: text of its own such as {{x.y}} is not a call.
        var result = await kernel.InvokePromptAsync("""<message role="user">{{$question}}</message>""",
            new KernelArguments(SampleKernel.Settings(options.MaxTokens, behavior)) { ["question"] = options.Question },
            cancellationToken: cancellationToken);
        string answer = result.ToString().Trim();
        output.WriteLine($"answer: {answer}");

        var tools = log.Entries;
        var calls = recorder.Calls;
        bool cutShort = calls.Count > 0 && calls[^1].FinishReason == Microsoft.Extensions.AI.ChatFinishReason.Length;
        output.WriteLine(tools.Count > 0 ? $"tool calls: {string.Join(" -> ", tools)}"
            : "tool calls: none" + (cutShort && options.Require is not null ? $" (the answer ran out of --max-tokens {options.MaxTokens} before the call was whole)"
                : isDemo && options.Require is null ? " (the demo model's random weights never choose a tool; try --require lookup)" : ""));
        for (int i = 0; i < calls.Count; i++) output.WriteLine($"model call {i + 1}: {calls[i]}");
        if (calls.Count > 0)
            output.WriteLine("(model call 1's TTFT includes this process's one-time start-up: compiling the code and first touching the weights)");
        if (calls.Any(c => c.FinishReason == Microsoft.Extensions.AI.ChatFinishReason.ToolCalls))
            output.WriteLine("(a tool-call turn is returned whole once parsed, so its TTFT is its total time)");
        if (isDemo) output.WriteLine("\n" + SampleModel.GibberishNote);
        return new ToolAgentResult(answer, tools, calls);
    }
}
