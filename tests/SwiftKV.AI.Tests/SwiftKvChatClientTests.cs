// SwiftKV-specific behaviour of the chat client on the CPU backend with a made model (seeds, instructions, option
// validation, context limits, GetService, disposal). The IChatClient contract itself is CpuConformanceTests.
using Xunit;
using Microsoft.Extensions.AI;
using SwiftKV.Model.Tokenization;

namespace SwiftKV.AI.Tests;

public sealed class SwiftKvChatClientTests(TinyChatModel tiny)
{
    static readonly List<ChatMessage> Question = [new(ChatRole.User, "Tell me about the quarterly report of Northwind Logistics.")];
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory]
    [InlineData("DefaultMaxOutputTokens")]
    [InlineData("ContextLength")]
    [InlineData("ModelId")]
    public void LoadedModelConstructor_ValidatesTheRequestOptions(string option)
    {
        var options = new SwiftKvOptions { ModelPath = tiny.Directory };
        switch (option)
        {
            case "DefaultMaxOutputTokens": options.DefaultMaxOutputTokens = 0; break;
            case "ContextLength": options.ContextLength = -1; break;
            default: options.ModelId = "  "; break;
        }
        var e = Assert.ThrowsAny<ArgumentException>(() => new SwiftKvChatClient(tiny.Model, options));
        Assert.Equal(option, e.ParamName);
        Assert.Contains("SwiftKvOptions." + option, e.Message);
    }

    [Fact]
    public async Task Usage_InputTokensAreTheTemplatesLength()
    {
        using var client = tiny.Client();
        var r = await client.GetResponseAsync(Question, new ChatOptions { MaxOutputTokens = 5 }, Ct);
        int expectedPrompt = Llama31ChatFormat.Encode(tiny.Model.Tokenizer,
            [new ChatTurn("user", Question[0].Text)], addGenerationPrompt: true, new DateOnly(2026, 11, 26)).Count;
        Assert.Equal(expectedPrompt, r.Usage!.InputTokenCount);
        // Of the prompt tokens not served by the prefix cache, all but the last skip layers l..L-1.
        long cached = r.Usage.AdditionalCounts![SwiftKvChatClient.PromptTokensFromPrefixCache];
        Assert.Equal(expectedPrompt - cached - 1, r.Usage.AdditionalCounts[SwiftKvChatClient.PromptTokensSkippedBySwiftKv]);
    }

    [Fact]
    public async Task ResentConversation_HitsThePrefixCache()
    {
        using var client = tiny.Client();
        List<ChatMessage> history = [new(ChatRole.User, "A long question about the quarterly report, with enough words to fill a few KV blocks of sixteen tokens each.")];
        var first = await client.GetResponseAsync(history, new ChatOptions { MaxOutputTokens = 4 }, Ct);
        history.AddRange(first.Messages);
        history.Add(new(ChatRole.User, "And a follow-up."));
        var second = await client.GetResponseAsync(history, new ChatOptions { MaxOutputTokens = 4 }, Ct);

        long cached = second.Usage!.AdditionalCounts![SwiftKvChatClient.PromptTokensFromPrefixCache];
        // The whole first prompt (system block + first question) is a shared prefix: its full blocks are reused.
        Assert.True(cached >= (first.Usage!.InputTokenCount!.Value / 16) * 16 - 16, $"cached {cached} of {second.Usage.InputTokenCount}");
        Assert.True(cached > 0);
        // M.E.AI's own field carries it too (OpenTelemetry's gen_ai.usage.cache_read.input_tokens is filled from it).
        Assert.Equal(cached, second.Usage.CachedInputTokenCount);
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
        var e = await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => client.GetResponseAsync(Question, options, Ct));
        // Named as the caller set it, not as the engine's SamplingParams property.
        Assert.Equal("options", e.ParamName);
        Assert.Contains(temperature is not null ? "ChatOptions.Temperature" : topP is not null ? "ChatOptions.TopP" : "MaxOutputTokens", e.Message);
    }

    [Fact]
    public async Task PromptLongerThanContext_ThrowsNamingTheContext()
    {
        using var client = tiny.Client(contextLength: 64);
        var longText = string.Join(' ', Enumerable.Repeat("logistics", 200));
        var e = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync([new(ChatRole.User, longText)], cancellationToken: Ct));
        Assert.Contains("context of 64 tokens set by SwiftKvOptions.ContextLength; shorten the conversation or raise ContextLength (the model takes up to 131,072)", e.Message);
    }

    /// <summary>
    /// Past the model's max_position_embeddings, raising ContextLength cannot help: the message names the limit that
    /// applied (it used to advise raising ContextLength whatever the limit was).
    /// </summary>
    [Fact]
    public async Task PromptLongerThanTheModelsPositions_NamesThatLimit()
    {
        string dir = Path.Combine(Path.GetTempPath(), "swiftkv-ai-short-" + Guid.NewGuid().ToString("N"));
        try
        {
            var config = SwiftKV.Model.Checkpoint.ModelPresets.Get("tiny") with { MaxPositionEmbeddings = 32 };
            SwiftKV.Model.Checkpoint.ModelMaker.Write(dir, config.Validate(), new SwiftKV.Model.Checkpoint.ModelMakerOptions { Seed = 2 }, cancellationToken: TestContext.Current.CancellationToken);
            SwiftKV.Model.Tokenization.LlamaTokenizer.CreateDemo().Save(dir);
            using var client = new SwiftKvChatClient(new SwiftKvOptions { ModelPath = dir, Backend = SwiftKV.Engine.BackendKind.Cpu, ContextLength = 8192 });
            var e = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync(Question, cancellationToken: Ct));
            Assert.Contains("context of 32 tokens set by the model's max_position_embeddings; shorten the conversation, the model takes no more", e.Message);
            Assert.DoesNotContain("raise", e.Message);

            // A KV cache smaller than ContextLength's need: the pool is the limit, and KvCacheBytes what raises it.
            using var small = new SwiftKvChatClient(new SwiftKvOptions { ModelPath = dir, Backend = SwiftKV.Engine.BackendKind.Cpu, ContextLength = 8192, KvCacheBytes = 32 * 1024 });
            var p = await Assert.ThrowsAnyAsync<ArgumentException>(() => small.GetResponseAsync(Question, cancellationToken: Ct));
            Assert.Contains("set by the KV cache, which holds 16 tokens for one request; shorten the conversation or raise SwiftKvOptions.KvCacheBytes", p.Message);
        }
        finally
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>A document far past the context is refused after encoding about a context's worth of it.</summary>
    [Fact]
    public async Task DocumentFarPastTheContext_IsRefusedWithoutItsExactLength()
    {
        using var client = tiny.Client(contextLength: 256);
        var document = string.Concat(Enumerable.Repeat("The shipment left the warehouse on time. ", 200_000));   // ~8 MB
        var e = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync([new(ChatRole.User, document)], cancellationToken: Ct));
        Assert.Contains("more than 255 tokens", e.Message);
        Assert.Contains("context of 256 tokens", e.Message);
    }

    [Fact]
    public async Task CancelledBeforeTheStart_StopsWhileEncoding()
    {
        using var client = tiny.Client();
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var e = await Assert.ThrowsAnyAsync<OperationCanceledException>(() => client.GetResponseAsync([new(ChatRole.User, new string('x', 5000))], cancellationToken: cts.Token));
        Assert.Equal(cts.Token, e.CancellationToken);
        Assert.Contains(nameof(SwiftKV.Model.Tokenization.LlamaTokenizer), e.StackTrace);   // the encoder saw it, not a later check
    }

    /// <summary>
    /// A checkpoint whose vocab_size is padded past its tokenizer (common after fine-tuning): the padding ids decode
    /// to nothing, and sampled answers (which may pick them) and JSON mode (a per-id table) run without an exception.
    /// </summary>
    [Fact]
    public async Task PaddedVocabulary_SamplesAndDecodesWithoutThrowing()
    {
        string dir = Path.Combine(Path.GetTempPath(), "swiftkv-padded-vocab-" + Guid.NewGuid().ToString("N"));
        try
        {
            var config = SwiftKV.Model.Checkpoint.ModelPresets.Get("tiny") with { VocabSize = 140000 };
            SwiftKV.Model.Checkpoint.ModelMaker.Write(dir, config.Validate(), new SwiftKV.Model.Checkpoint.ModelMakerOptions { Seed = 9, InitStd = 0.1f }, cancellationToken: TestContext.Current.CancellationToken);
            SwiftKV.Model.Tokenization.LlamaTokenizer.CreateDemo().Save(dir);
            using var client = new SwiftKvChatClient(new SwiftKvOptions { ModelPath = dir, Backend = SwiftKV.Engine.BackendKind.Cpu, ContextLength = 512 });
            Assert.Equal(140000, client.Model.Tokenizer.VocabularySize);
            Assert.True(client.Model.Tokenizer.GetTokenBytes(139999).IsEmpty);
            for (int seed = 1; seed <= 3; seed++)
                await client.GetResponseAsync("Hello", new ChatOptions { MaxOutputTokens = 40, Temperature = 1.5f, Seed = seed }, Ct);
            await client.GetResponseAsync("Hello", new ChatOptions { MaxOutputTokens = 8, ResponseFormat = ChatResponseFormat.Json }, Ct);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Content the text model cannot read, and an empty conversation, are refused, not silently dropped.</summary>
    [Fact]
    public async Task ImageContentOrNoMessages_Throw()
    {
        using var client = tiny.Client();
        var image = new ChatMessage(ChatRole.User, [new TextContent("What is in this picture?"), new DataContent(new byte[] { 0x89, 0x50, 0x4e, 0x47 }, "image/png")]);
        var e = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync([image], cancellationToken: Ct));
        Assert.Contains("message 0 (user) holds DataContent", e.Message);
        var empty = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync(Array.Empty<ChatMessage>(), cancellationToken: Ct));
        Assert.Contains("message list is empty", empty.Message);
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
        Assert.Throws<ObjectDisposedException>(() => client.GetStreamingResponseAsync(Question, cancellationToken: Ct));   // at the call
    }

    /// <summary>IChatClient documents ArgumentNullException for null messages: thrown by the call, not by the first MoveNextAsync.</summary>
    [Fact]
    public void NullMessages_ThrowAtTheCall()
    {
        using var client = tiny.Client();
        Assert.Throws<ArgumentNullException>(() => client.GetStreamingResponseAsync(null!, cancellationToken: Ct));
    }
}
