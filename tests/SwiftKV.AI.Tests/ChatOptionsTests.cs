// ChatOptions beyond the basics on the tiny random model: JSON response format (constrained, so even random weights
// give JSON that parses), OpenAI penalties, RawRepresentationFactory's engine-native SamplingParams, tolerated
// AdditionalProperties.
using System.Text.Json;
using Microsoft.Extensions.AI;
using SwiftKV.Engine.Sampling;
using Xunit;

namespace SwiftKV.AI.Tests;

public sealed class ChatOptionsTests(TinyChatModel tiny)
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory]
    [InlineData(6, 0f, 0L)]
    [InlineData(24, 1f, 1L)]
    [InlineData(24, 1f, 2L)]
    public async Task ResponseFormatJson_RandomModel_OutputParses(int maxTokens, float temperature, long seed)
    {
        using var client = tiny.Client();
        var r = await client.GetResponseAsync("Give me JSON.", new ChatOptions
        {
            ResponseFormat = ChatResponseFormat.Json, MaxOutputTokens = maxTokens, Temperature = temperature, Seed = seed,
        }, Ct);
        using var doc = JsonDocument.Parse(r.Text);
        Assert.Equal(JsonValueKind.Object, doc.RootElement.ValueKind);
    }

    /// <summary>
    /// A JSON answer that closes on the last token of its budget is complete: FinishReason Stop, not Length (callers
    /// treat Length as truncated). The review saw all four of these seeds parse and report Length.
    /// </summary>
    [Theory]
    [InlineData(1L)]
    [InlineData(2L)]
    [InlineData(3L)]
    [InlineData(4L)]
    public async Task ResponseFormatJson_CompleteAtTheBudget_IsStop(long seed)
    {
        using var client = tiny.Client();
        var r = await client.GetResponseAsync("Give me JSON.", new ChatOptions
        {
            ResponseFormat = ChatResponseFormat.Json, MaxOutputTokens = 12, Temperature = 1f, Seed = seed,
        }, Ct);
        var state = new JsonGrammarState();
        bool complete = state.Accept(System.Text.Encoding.UTF8.GetBytes(r.Text)) && state.IsComplete;
        Assert.Equal(complete ? ChatFinishReason.Stop : ChatFinishReason.Length, r.FinishReason);
    }

    [Fact]
    public async Task ResponseFormatJson_BudgetBelowShortestObject_IsLengthWithPartialText()
    {
        using var client = tiny.Client();
        var r = await client.GetResponseAsync("Give me JSON.", new ChatOptions { ResponseFormat = ChatResponseFormat.Json, MaxOutputTokens = 1 }, Ct);
        Assert.Equal(ChatFinishReason.Length, r.FinishReason);
        var state = new JsonGrammarState();
        Assert.True(state.Accept(System.Text.Encoding.UTF8.GetBytes(r.Text)), $"'{r.Text}' is not the start of a JSON object");
        Assert.False(state.IsComplete);
    }

    [Fact]
    public async Task Penalties_ChangeGreedyOutput_AndAreValidated()
    {
        using var client = tiny.Client();
        var plain = await client.GetResponseAsync("Repeat after me: la la la la", new ChatOptions { MaxOutputTokens = 16 }, Ct);
        var penalised = await client.GetResponseAsync("Repeat after me: la la la la", new ChatOptions { MaxOutputTokens = 16, FrequencyPenalty = 2f, PresencePenalty = 2f }, Ct);
        Assert.NotEqual(plain.Text, penalised.Text);
        var e = await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => client.GetResponseAsync("x", new ChatOptions { FrequencyPenalty = 2.5f }, Ct));
        Assert.Contains("FrequencyPenalty", e.Message);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => client.GetResponseAsync("x", new ChatOptions { PresencePenalty = -3f }, Ct));
    }

    [Fact]
    public async Task RawRepresentationFactory_SamplingParams_OverridesChatOptions()
    {
        using var client = tiny.Client();
        var native = new SamplingParams { Temperature = 1.0f, Seed = 5 };
        var viaNative = await client.GetResponseAsync("Hello", new ChatOptions
        {
            MaxOutputTokens = 10, Temperature = 0f, RawRepresentationFactory = c => { Assert.Same(client, c); return native; },
        }, Ct);
        var direct = await client.GetResponseAsync("Hello", new ChatOptions { MaxOutputTokens = 10, Temperature = 1.0f, Seed = 5 }, Ct);
        var greedy = await client.GetResponseAsync("Hello", new ChatOptions { MaxOutputTokens = 10 }, Ct);
        Assert.Equal(direct.Text, viaNative.Text);
        Assert.NotEqual(greedy.Text, viaNative.Text);

        var foreign = await client.GetResponseAsync("Hello", new ChatOptions { MaxOutputTokens = 10, RawRepresentationFactory = _ => "not ours" }, Ct);
        Assert.Equal(greedy.Text, foreign.Text);
    }

    [Fact]
    public async Task AdditionalProperties_AreTolerated()
    {
        using var client = tiny.Client();
        var r = await client.GetResponseAsync("Hello", new ChatOptions
        {
            MaxOutputTokens = 3, AdditionalProperties = new() { ["logit_bias"] = new Dictionary<string, int> { ["1"] = 5 }, ["user"] = "u1" },
        }, Ct);
        Assert.Equal(3, r.Usage!.OutputTokenCount);
    }
}
