// Semantic Kernel with FunctionChoiceBehavior.Auto(): the model decides to call a plugin. A random model never
// decides that, so the scripted backend plays a model that does; the prompt renderer, the call parser, SK's function
// advertisement and UseFunctionInvocation are all the real ones.
using System.Text.RegularExpressions;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.SemanticKernel;
using SwiftKV.Engine;
using Xunit;

namespace SwiftKV.AI.Tests;

public sealed class SemanticKernelAutoTests(TinyChatModel tiny)
{
    (Kernel Kernel, ScriptedBackend Backend, Func<int> Invoked) Build(params string[] answers)
    {
        var (client, backend) = ScriptedBackend.Client(tiny, answers);
        var builder = Kernel.CreateBuilder();
        builder.Services.AddSingleton<IChatClient>(client.AsBuilder().UseFunctionInvocation().Build());
        var kernel = builder.Build();
        int invoked = 0;
        kernel.Plugins.AddFromFunctions("depot",
            [KernelFunctionFactory.CreateFromMethod((string site) => { invoked++; return $"17 trucks at {site}"; }, "count_trucks", "Counts trucks at a depot site")]);
        return (kernel, backend, () => invoked);
    }

    static KernelArguments Auto() => new(new PromptExecutionSettings { FunctionChoiceBehavior = FunctionChoiceBehavior.Auto() });

    [Fact]
    public async Task AutoChoice_ModelCallsThePlugin_AndAnswersWithItsResult()
    {
        var ct = TestContext.Current.CancellationToken;
        // First learn the name SK advertises for the function, from the prompt the model was given.
        var (probe, probeBackend, _) = Build("No tool needed.");
        await probe.InvokePromptAsync("How many trucks are in Oslo?", Auto(), cancellationToken: ct);
        string firstPrompt = tiny.Model.Tokenizer.Decode(probeBackend.Prompts[0]);
        string name = Regex.Match(firstPrompt, "\"name\": \"([^\"]*count_trucks)\"").Groups[1].Value;
        Assert.False(string.IsNullOrEmpty(name), "the plugin was not advertised in the prompt:\n" + firstPrompt);

        var (kernel, backend, invoked) = Build($"{{\"name\": \"{name}\", \"parameters\": {{\"site\": \"Oslo\"}}}}", "There are 17 trucks in Oslo.");
        var result = await kernel.InvokePromptAsync("How many trucks are in Oslo?", Auto(), cancellationToken: ct);

        Assert.Equal(1, invoked());
        Assert.Equal("There are 17 trucks in Oslo.", result.GetValue<string>());
        string second = tiny.Model.Tokenizer.Decode(backend.Prompts[1]);
        // The plugin's result goes back to the model as an ipython turn (SK hands it over as a JSON string).
        Assert.Matches("<\\|start_header_id\\|>ipython<\\|end_header_id\\|>\n\n\"?17 trucks at Oslo\"?<\\|eot_id\\|>", second);
    }
}
