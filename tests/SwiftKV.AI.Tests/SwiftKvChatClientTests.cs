// The IChatClient contract on the CPU backend with a made model: streaming and non-streaming agree, usage,
// finish reasons, stop sequences across token boundaries, cancellation, concurrency, option handling.
using Xunit;
using Microsoft.Extensions.AI;
using SwiftKV.Model.Tokenization;

namespace SwiftKV.AI.Tests;

public sealed class SwiftKvChatClientTests(TinyChatModel tiny)
{
    static readonly List<ChatMessage> Question = [new(ChatRole.User, "Tell me about the quarterly report of Northwind Logistics.")];
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task GetResponseAsync_EqualsConcatenatedStream()
    {
        using var client = tiny.Client();
        var options = new ChatOptions { MaxOutputTokens = 12 };
        var response = await client.GetResponseAsync(Question, options, Ct);
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync(Question, options, Ct)) updates.Add(u);

        Assert.Equal(string.Concat(updates.Select(u => u.Text)), response.Text);
        Assert.Equal(ChatFinishReason.Length, response.FinishReason);
        Assert.Equal(12, response.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task Stream_HasOneUsageWithConsistentCountsAndIds()
    {
        using var client = tiny.Client();
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync(Question, new ChatOptions { MaxOutputTokens = 5 }, Ct)) updates.Add(u);

        var usage = Assert.Single(updates.SelectMany(u => u.Contents).OfType<UsageContent>()).Details;
        int expectedPrompt = Llama31ChatFormat.Encode(tiny.Model.Tokenizer,
            [new ChatTurn("user", Question[0].Text)], addGenerationPrompt: true, new DateOnly(2026, 11, 26)).Count;
        Assert.Equal(expectedPrompt, usage.InputTokenCount);
        Assert.Equal(5, usage.OutputTokenCount);
        Assert.Equal(usage.InputTokenCount + usage.OutputTokenCount, usage.TotalTokenCount);
        Assert.Equal(expectedPrompt - 1, usage.AdditionalCounts![SwiftKvChatClient.PromptTokensSkippedBySwiftKv]);

        Assert.Single(updates.Select(u => u.ResponseId).Distinct());
        Assert.Single(updates.Select(u => u.MessageId).Distinct());
        Assert.All(updates, u => Assert.Equal(ChatRole.Assistant, u.Role));
        Assert.All(updates, u => Assert.NotNull(u.CreatedAt));
        Assert.All(updates, u => Assert.Equal(Path.GetFileName(tiny.Directory), u.ModelId));
        Assert.Equal(ChatFinishReason.Length, updates[^1].FinishReason);
    }

    [Fact]
    public async Task StopSequences_MatchedAcrossTokenBoundaries_StopTextNotReturned()
    {
        using var client = tiny.Client();
        var free = await client.GetResponseAsync(Question, new ChatOptions { MaxOutputTokens = 16 }, Ct);
        string text = free.Text;
        // Pick a stop string that straddles a token boundary: the end of token 3 and the start of token 4.
        var ids = tiny.Model.Tokenizer.Encode(text);
        string head = tiny.Model.Tokenizer.Decode(ids.Take(3));
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
        using var client = tiny.Client();
        var options = new ChatOptions { MaxOutputTokens = 3, Temperature = 0.5f, TopP = 0.9f, TopK = 20, Seed = 3, StopSequences = ["zzz"], Instructions = "Be brief." };
        string before = System.Text.Json.JsonSerializer.Serialize(options);
        await client.GetResponseAsync(Question, options, Ct);
        Assert.Equal(before, System.Text.Json.JsonSerializer.Serialize(options));
        Assert.Single(options.StopSequences!);
    }

    [Fact]
    public async Task Seed_SameSeedSameText()
    {
        using var client = tiny.Client();
        ChatOptions O(long seed) => new() { MaxOutputTokens = 10, Temperature = 1.0f, Seed = seed };
        var a = await client.GetResponseAsync(Question, O(42), Ct);
        var b = await client.GetResponseAsync(Question, O(42), Ct);
        var c = await client.GetResponseAsync(Question, O(43), Ct);
        Assert.Equal(a.Text, b.Text);
        Assert.NotEqual(a.Text, c.Text);
    }

    [Fact]
    public async Task Instructions_AreTheSystemMessage()
    {
        using var client = tiny.Client();
        var viaInstructions = await client.GetResponseAsync(Question, new ChatOptions { MaxOutputTokens = 6, Instructions = "Answer in French." }, Ct);
        var viaSystem = await client.GetResponseAsync([new(ChatRole.System, "Answer in French."), .. Question], new ChatOptions { MaxOutputTokens = 6 }, Ct);
        Assert.Equal(viaSystem.Usage!.InputTokenCount, viaInstructions.Usage!.InputTokenCount);
        Assert.Equal(viaSystem.Text, viaInstructions.Text);
    }

    [Fact]
    public async Task Cancellation_StopsPromptly_AndClientStaysUsable()
    {
        using var client = tiny.Client();
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
        using var client = tiny.Client();
        var prompts = Enumerable.Range(0, 4).Select(i => new List<ChatMessage> { new(ChatRole.User, $"Question number {i}: why?") }).ToList();
        var solo = new List<string>();
        foreach (var p in prompts) solo.Add((await client.GetResponseAsync(p, new ChatOptions { MaxOutputTokens = 6 }, Ct)).Text);

        var together = await Task.WhenAll(prompts.Select(p => Task.Run(() => client.GetResponseAsync(p, new ChatOptions { MaxOutputTokens = 6 }, Ct))));

        Assert.Equal(solo, together.Select(r => r.Text));
    }

    [Theory]
    [InlineData(-0.5f, null, null)]
    [InlineData(null, 1.5f, null)]
    [InlineData(null, 0f, null)]
    [InlineData(null, null, 0)]
    [InlineData(null, null, -3)]
    public async Task InvalidOptions_Throw(float? temperature, float? topP, int? maxTokens)
    {
        using var client = tiny.Client();
        var options = new ChatOptions { Temperature = temperature, TopP = topP, MaxOutputTokens = maxTokens };
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => client.GetResponseAsync(Question, options, Ct));
    }

    [Fact]
    public async Task PromptLongerThanContext_ThrowsNamingTheContext()
    {
        using var client = tiny.Client(contextLength: 64);
        var longText = string.Join(' ', Enumerable.Repeat("logistics", 200));
        var e = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync([new(ChatRole.User, longText)], cancellationToken: Ct));
        Assert.Contains("context of 64 tokens", e.Message);
    }

    [Fact]
    public void GetService_AnswersMetadataAndItself()
    {
        using var client = tiny.Client();
        var meta = client.GetService<ChatClientMetadata>();
        Assert.Equal("swiftkv", meta!.ProviderName);
        Assert.Equal(Path.GetFileName(tiny.Directory), meta.DefaultModelId);
        Assert.Same(client, client.GetService<SwiftKvChatClient>());
        Assert.Same(client, client.GetService<IChatClient>());
        Assert.Null(client.GetService<ChatClientMetadata>("some-key"));
        Assert.Null(client.GetService<string>());
    }

    [Fact]
    public async Task Disposed_Throws()
    {
        var client = tiny.Client();
        client.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => client.GetResponseAsync(Question, cancellationToken: Ct));
    }
}
