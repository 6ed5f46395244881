// The tool agent end to end on the tiny model: a call forced with FunctionChoiceBehavior.Required (ToolMode
// RequireSpecific, which the client prefills and constrains to JSON) really reaches the plugin through Semantic
// Kernel and UseFunctionInvocation, and the result goes back to the model for a second round trip.
using Microsoft.Extensions.AI;
using SwiftKV.Samples.ToolAgent;
using Xunit;

namespace SwiftKV.Samples.Tests;

public sealed class ToolAgentSampleTests(TinySampleModel model)
{
    /// <summary>
    /// At the sample's default --max-tokens (64) the tiny model's greedy answer closes the topic string itself, so the
    /// call is whole and made; a call the budget closed early would come back as text, not run
    /// (ToolCallingTests.RequiredCall_ClosedEarlyByTheBudget_IsTextWithLength).
    /// </summary>
    [Fact]
    public async Task RunAsync_RequiredLookup_InvokesPluginAndSendsResultBack()
    {
        var output = new StringWriter();
        var result = await ToolAgentSample.RunAsync(new ToolAgentOptions { Model = model.Directory, Require = "lookup", MaxTokens = 64 }, output,
            TestContext.Current.CancellationToken);

        Assert.StartsWith("documents.lookup(", Assert.Single(result.ToolCalls));
        Assert.True(result.ModelCalls.Count >= 2, "the function result should go back to the model");
        Assert.Equal(ChatFinishReason.ToolCalls, result.ModelCalls[0].FinishReason);
        Assert.True(result.ModelCalls[1].PromptTokens > result.ModelCalls[0].PromptTokens, "the second turn carries the call and its result");
        Assert.Contains("tool calls: documents.lookup(", output.ToString());
        Assert.Contains("model call 2: prompt tokens: ", output.ToString());
        Assert.Contains("model call 1's TTFT includes this process's one-time start-up", output.ToString());
    }

    /// <summary>A required call that the token budget cuts short is said to be cut short, not blamed on the model's choice.</summary>
    [Fact]
    public async Task RunAsync_RequiredCallPastTheBudget_SaysTheBudgetRanOut()
    {
        var output = new StringWriter();
        var result = await ToolAgentSample.RunAsync(new ToolAgentOptions { Model = model.Directory, Require = "multiply", MaxTokens = 1 }, output,
            TestContext.Current.CancellationToken);
        Assert.Empty(result.ToolCalls);
        Assert.Contains("tool calls: none (the answer ran out of --max-tokens 1 before the call was whole)", output.ToString());
        Assert.DoesNotContain("try --require", output.ToString());
    }

    [Fact]
    public async Task RunAsync_UnknownRequiredFunction_NamesIt()
    {
        // Named before any model is looked at: the path below does not exist.
        var e = await Assert.ThrowsAsync<ArgumentException>(() =>
            ToolAgentSample.RunAsync(new ToolAgentOptions { Model = "/no/such/model", Require = "divide" }, new StringWriter(), TestContext.Current.CancellationToken));
        Assert.Contains("'divide'", e.Message);
        Assert.Contains("lookup", e.Message);
    }

    /// <summary>
    /// The question is text, not a template: "{{documents.lookup ...}}" in it is not run (it used to call the plugin,
    /// and "{{nosuch.fn}}" crashed the sample with the kernel's KeyNotFoundException).
    /// </summary>
    [Fact]
    public async Task RunAsync_QuestionWithTemplateSyntax_IsSentAsText()
    {
        const string question = "What does {{documents.lookup 'warranty'}} or {{nosuch.fn}} or {{$x}} mean?";
        var output = new StringWriter();
        var result = await ToolAgentSample.RunAsync(new ToolAgentOptions { Model = model.Directory, Question = question, MaxTokens = 2 }, output,
            TestContext.Current.CancellationToken);
        Assert.Empty(result.ToolCalls);
        Assert.Contains($"question: {question}", output.ToString());
    }

    [Fact]
    public void Plugins_Invoked_LogAndAnswer()
    {
        var log = new ToolLog();
        Assert.Equal(12, new CalculatorPlugin(log).Multiply(4, 3));
        Assert.Contains("2 years", new DocumentLookupPlugin(log).Lookup(" Warranty "));
        Assert.Contains("Known topics: warranty", new DocumentLookupPlugin(log).Lookup("weather"));
        Assert.Equal(["calculator.multiply(4, 3)", "documents.lookup(\" Warranty \")", "documents.lookup(\"weather\")"], log.Entries);
    }
}
