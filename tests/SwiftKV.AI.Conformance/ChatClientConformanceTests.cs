// The IChatClient contract every SwiftKV backend must keep, written once and run by a subclass per backend (the CPU
// one in CI, the CUDA one on the GPU machine): streaming and non-streaming agree, one UsageContent whose counts
// add up, finish reasons, stop sequences across token boundaries, cancellation, concurrency, options left
// untouched, a tool-call round trip under UseFunctionInvocation, and Semantic Kernel prompts and plugins.
// NOTE: the model may have random weights, so nothing here depends on what it says — only on the contract. Tool
// calls come from ToolMode RequireSpecific / RequireAny, which the client enforces by constrained decoding.
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.SemanticKernel;
using FunctionCallContent = Microsoft.Extensions.AI.FunctionCallContent;
using FunctionResultContent = Microsoft.Extensions.AI.FunctionResultContent;
using SwiftKV.Engine;
using Xunit;

namespace SwiftKV.AI.Conformance;

public abstract class ChatClientConformanceTests
{
    /// <summary>A fresh client over the backend under test; greedy defaults, a context of at least 2048 tokens.</summary>
    protected abstract IChatClient CreateClient();

    protected static readonly List<ChatMessage> Question = [new(ChatRole.User, "Tell me about the quarterly report of Northwind Logistics.")];
    protected static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task GetResponseAsync_EqualsConcatenatedStream()
    {
        using var client = CreateClient();
        var options = new ChatOptions { MaxOutputTokens = 12 };
        var response = await client.GetResponseAsync(Question, options, Ct);
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync(Question, options, Ct)) updates.Add(u);

        Assert.Equal(string.Concat(updates.Select(u => u.Text)), response.Text);
        Assert.Equal(updates.ToChatResponse().Text, response.Text);
        Assert.Equal(ChatFinishReason.Length, response.FinishReason);
        Assert.Equal(12, response.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task Stream_HasOneUsageWithConsistentCountsAndIds()
    {
        using var client = CreateClient();
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync(Question, new ChatOptions { MaxOutputTokens = 5 }, Ct)) updates.Add(u);

        var usage = Assert.Single(updates.SelectMany(u => u.Contents).OfType<UsageContent>()).Details;
        Assert.True(usage.InputTokenCount > 10);
        Assert.Equal(5, usage.OutputTokenCount);
        Assert.Equal(usage.InputTokenCount + usage.OutputTokenCount, usage.TotalTokenCount);
        long skipped = usage.AdditionalCounts![SwiftKvChatClient.PromptTokensSkippedBySwiftKv];
        bool swiftKv = client.GetService<LocalModel>()!.Backend.SwiftKvEnabled;
        long cached = usage.AdditionalCounts[SwiftKvChatClient.PromptTokensFromPrefixCache];
        Assert.InRange(cached, 0, usage.InputTokenCount!.Value - 1);
        Assert.Equal(swiftKv ? usage.InputTokenCount - cached - 1 : 0, skipped);

        Assert.Single(updates.Select(u => u.ResponseId).Distinct());
        Assert.Single(updates.Select(u => u.MessageId).Distinct());
        Assert.All(updates, u => Assert.Equal(ChatRole.Assistant, u.Role));
        Assert.All(updates, u => Assert.NotNull(u.CreatedAt));
        Assert.All(updates, u => Assert.Equal(client.GetService<ChatClientMetadata>()!.DefaultModelId, u.ModelId));
        Assert.Equal(ChatFinishReason.Length, updates[^1].FinishReason);
        Assert.Single(updates, u => u.FinishReason is not null);
    }

    [Fact]
    public async Task StopSequences_MatchedAcrossTokenBoundaries_StopTextNotReturned()
    {
        using var client = CreateClient();
        var tokenizer = client.GetService<LocalModel>()!.Tokenizer;
        var free = await client.GetResponseAsync(Question, new ChatOptions { MaxOutputTokens = 16 }, Ct);
        string text = free.Text;
        // A stop string that straddles a token boundary: the end of token 3 and the start of token 4.
        var ids = tokenizer.Encode(text);
        string head = tokenizer.Decode(ids.Take(3));
        Assert.StartsWith(head, text);
        int cut = head.Length;
        string stop = text.Substring(cut - 1, Math.Min(3, text.Length - cut + 1));
        Assert.True(stop.Length >= 2, $"model output too short to test: '{text}'");
        int expectedEnd = text.IndexOf(stop, StringComparison.Ordinal);

        var stopped = await client.GetResponseAsync(Question, new ChatOptions { MaxOutputTokens = 16, StopSequences = [stop] }, Ct);

        Assert.Equal(text[..expectedEnd], stopped.Text);
        Assert.Equal(ChatFinishReason.Stop, stopped.FinishReason);
    }

    [Fact]
    public async Task Options_AreNotMutated()
    {
        using var client = CreateClient();
        var tool = AIFunctionFactory.Create((string city) => "sunny", "get_weather", "Weather in a city");
        var options = new ChatOptions
        {
            MaxOutputTokens = 3, Temperature = 0.5f, TopP = 0.9f, TopK = 20, Seed = 3, StopSequences = ["zzz"],
            Instructions = "Be brief.", FrequencyPenalty = 0.5f, PresencePenalty = -0.5f, Tools = [tool],
            ToolMode = ChatToolMode.Auto, ResponseFormat = ChatResponseFormat.Json,
            AdditionalProperties = new() { ["some_vendor_knob"] = 42 },
        };
        string before = JsonSerializer.Serialize(options, AIJsonUtilities.DefaultOptions);
        await client.GetResponseAsync(Question, options, Ct);
        Assert.Equal(before, JsonSerializer.Serialize(options, AIJsonUtilities.DefaultOptions));
        Assert.Single(options.StopSequences!);
        Assert.Single(options.Tools!);
    }

    [Fact]
    public async Task Cancellation_StopsPromptly_AndClientStaysUsable()
    {
        using var client = CreateClient();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        int seen = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in client.GetStreamingResponseAsync(Question, new ChatOptions { MaxOutputTokens = 1000 }, cts.Token))
            {
                if (++seen == 2) cts.Cancel();
            }
        });
        Assert.InRange(seen, 2, 4);
        var after = await client.GetResponseAsync(Question, new ChatOptions { MaxOutputTokens = 2 }, Ct);
        Assert.Equal(2, after.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task ConcurrentCalls_EachGetsItsSoloAnswer()
    {
        using var client = CreateClient();
        var prompts = Enumerable.Range(0, 4).Select(i => new List<ChatMessage> { new(ChatRole.User, $"Question number {i}: why?") }).ToList();
        var solo = new List<string>();
        foreach (var p in prompts) solo.Add((await client.GetResponseAsync(p, new ChatOptions { MaxOutputTokens = 6 }, Ct)).Text);

        var together = await Task.WhenAll(prompts.Select(p => Task.Run(() => client.GetResponseAsync(p, new ChatOptions { MaxOutputTokens = 6 }, Ct))));

        Assert.Equal(solo, together.Select(r => r.Text));
    }

    public sealed record Ticket(
        [property: JsonPropertyName("title")] string Title,
        [property: JsonPropertyName("urgent")] bool Urgent,
        [property: JsonPropertyName("team")] Team Team,
        [property: JsonPropertyName("labels")] string[] Labels);

    [JsonConverter(typeof(JsonStringEnumConverter<Team>))]
    public enum Team { Billing, Shipping, Support }

    /// <summary>
    /// GetResponseAsync&lt;T&gt; from requests running together: decoding holds each answer to T's schema (the logits
    /// masks of one request never reach another's row), so each deserializes and equals its solo answer, finish reason included.
    /// </summary>
    [Fact]
    public async Task StructuredOutput_ConcurrentRequests_EachIsItsSoloT()
    {
        using var client = CreateClient();
        var prompts = Enumerable.Range(0, 3).Select(i => $"File ticket number {i} about the late parcels.").ToList();
        var options = new ChatOptions { MaxOutputTokens = 96 };
        var solo = new List<(string, ChatFinishReason?)>();
        foreach (var p in prompts)
        {
            var r = await client.GetResponseAsync<Ticket>(p, options, cancellationToken: Ct);
            solo.Add((r.Text, r.FinishReason));
        }

        var together = await Task.WhenAll(prompts.Select(p => Task.Run(() => client.GetResponseAsync<Ticket>(p, options, cancellationToken: Ct))));

        // Random weights rarely close a string themselves, so MaxOutputTokens often closes the document early: then the
        // answer is whole and ends with Length (the budget shaped it), solo and together alike.
        Assert.Equal(solo, together.Select(r => (r.Text, r.FinishReason)));
        foreach (var r in together)
        {
            Assert.True(r.TryGetResult(out var ticket), $"'{r.Text}' is not a Ticket");
            Assert.NotNull(ticket!.Labels);
            Assert.True(r.FinishReason == ChatFinishReason.Stop || r.FinishReason == ChatFinishReason.Length, $"{r.FinishReason}");
        }
    }

    [Fact]
    public async Task RequiredTool_GivesToolCallsFinish_AndParsableCall()
    {
        using var client = CreateClient();
        var tool = AIFunctionFactory.Create(() => "ok", "ping", "Checks the service");
        var r = await client.GetResponseAsync(Question,
            new ChatOptions { Tools = [tool], ToolMode = ChatToolMode.RequireSpecific("ping"), MaxOutputTokens = 24 }, Ct);

        Assert.Equal(ChatFinishReason.ToolCalls, r.FinishReason);
        var call = Assert.Single(r.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
        Assert.Equal("ping", call.Name);
        Assert.False(string.IsNullOrEmpty(call.CallId));
        Assert.NotNull(call.Arguments);
    }

    [Fact]
    public async Task ToolCallRoundTrip_UnderUseFunctionInvocation()
    {
        using var inner = CreateClient();
        using var client = inner.AsBuilder().UseFunctionInvocation().Build();
        int invoked = 0;
        var tool = AIFunctionFactory.Create(() => { invoked++; return "42 parcels"; }, "count_parcels", "Counts parcels in the depot");

        var r = await client.GetResponseAsync(Question,
            new ChatOptions { Tools = [tool], ToolMode = ChatToolMode.RequireAny, MaxOutputTokens = 24 }, Ct);

        Assert.Equal(1, invoked);
        var contents = r.Messages.SelectMany(m => m.Contents).ToList();
        var call = Assert.Single(contents.OfType<FunctionCallContent>());
        var result = Assert.Single(contents.OfType<FunctionResultContent>());
        Assert.Equal(call.CallId, result.CallId);
        Assert.Equal(ChatRole.Assistant, r.Messages[^1].Role);
        Assert.NotEqual(ChatFinishReason.ToolCalls, r.FinishReason);
    }

    static Kernel KernelOver(IChatClient client)
    {
        var builder = Kernel.CreateBuilder();
        // SK 1.x calls a registered IChatClient directly, so the pipeline must invoke functions itself.
        builder.Services.AddSingleton<IChatClient>(client.AsBuilder().UseFunctionInvocation().Build());
        return builder.Build();
    }

    [Fact]
    public async Task SemanticKernel_InvokePromptAsync_ReturnsTheModelsAnswer()
    {
        using var client = CreateClient();
        var kernel = KernelOver(client);
        var expected = await client.GetResponseAsync([new ChatMessage(ChatRole.User, "Summarise: trucks, depots, parcels.")], new ChatOptions { MaxOutputTokens = 8 }, Ct);

        var result = await kernel.InvokePromptAsync("Summarise: {{$topic}}.",
            new KernelArguments(new PromptExecutionSettings { ExtensionData = new Dictionary<string, object> { ["max_tokens"] = 8 } }) { ["topic"] = "trucks, depots, parcels" },
            cancellationToken: Ct);

        Assert.Equal(expected.Text, result.GetValue<string>());
    }

    [Fact]
    public async Task SemanticKernel_PluginIsInvokedAutomatically()
    {
        using var client = CreateClient();
        var kernel = KernelOver(client);
        int invoked = 0;
        kernel.Plugins.AddFromFunctions("depot", [KernelFunctionFactory.CreateFromMethod(() => { invoked++; return "17 trucks"; }, "count_trucks", "Counts trucks in the depot")]);

        var settings = new PromptExecutionSettings
        {
            FunctionChoiceBehavior = FunctionChoiceBehavior.Required(),
            ExtensionData = new Dictionary<string, object> { ["max_tokens"] = 16 },
        };
        var result = await kernel.InvokePromptAsync("How many trucks are in the depot?", new KernelArguments(settings), cancellationToken: Ct);

        Assert.Equal(1, invoked);
        Assert.NotNull(result.GetValue<string>());
    }
}
