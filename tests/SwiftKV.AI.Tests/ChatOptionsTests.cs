// ChatOptions beyond the basics on the tiny random model: JSON response format (constrained, so even random weights
// give JSON that parses), OpenAI penalties, RawRepresentationFactory's engine-native SamplingParams, tolerated
// AdditionalProperties.
using System.Text.Json;
using System.Text.Json.Serialization;
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

    /// <summary>
    /// Top-p / top-k only mean something when sampling: set without a temperature they sample at temperature 1 (the
    /// same tokens as asking for it explicitly with that seed), instead of being dropped by the greedy default.
    /// </summary>
    [Fact]
    public async Task TopPOrTopKWithoutTemperature_SampleAtTemperatureOne()
    {
        using var client = tiny.Client();
        async Task<string> Answer(ChatOptions o) { o.MaxOutputTokens = 12; return (await client.GetResponseAsync("Hello", o, Ct)).Text; }

        string greedy = await Answer(new ChatOptions());
        string topP1 = await Answer(new ChatOptions { TopP = 0.95f, Seed = 1 }), topP2 = await Answer(new ChatOptions { TopP = 0.95f, Seed = 2 });
        Assert.Equal(await Answer(new ChatOptions { Temperature = 1f, TopP = 0.95f, Seed = 1 }), topP1);
        Assert.Equal(await Answer(new ChatOptions { Temperature = 1f, TopK = 40, Seed = 3 }), await Answer(new ChatOptions { TopK = 40, Seed = 3 }));
        Assert.NotEqual(topP1, topP2);
        Assert.NotEqual(greedy, topP1);
        // A seed alone, or top-p 1, asks for nothing to sample: still greedy.
        Assert.Equal(greedy, await Answer(new ChatOptions { Seed = 4 }));
        Assert.Equal(greedy, await Answer(new ChatOptions { TopP = 1f, Seed = 4 }));
    }

    /// <summary>ChatOptions.ModelId is not a model switch (a drop-in caller may still set a remote model's name): the
    /// loaded model answers, and the response names it.</summary>
    [Fact]
    public async Task ModelIdOption_DoesNotSwitchModels_TheResponseNamesTheLoadedOne()
    {
        using var client = tiny.Client();
        string loaded = client.GetService<ChatClientMetadata>()!.DefaultModelId!;
        var asked = await client.GetResponseAsync("Hello", new ChatOptions { ModelId = "gpt-4o", MaxOutputTokens = 6 }, Ct);
        var plain = await client.GetResponseAsync("Hello", new ChatOptions { MaxOutputTokens = 6 }, Ct);
        Assert.Equal(loaded, asked.ModelId);
        Assert.Equal(plain.Text, asked.Text);
    }

    [Fact]
    public async Task ContinuationToken_IsRefused()
    {
        using var client = tiny.Client();
        var e = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync("Hello",
            new ChatOptions { ContinuationToken = ResponseContinuationToken.FromBytes(new byte[] { 1, 2, 3 }) }, Ct));
        Assert.Contains("ContinuationToken", e.Message);
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

    public sealed record Forecast(
        [property: JsonPropertyName("city")] string City,
        [property: JsonPropertyName("celsius")] int Celsius,
        [property: JsonPropertyName("sky")] Sky Sky,
        [property: JsonPropertyName("hours")] int[] Hours,
        [property: JsonPropertyName("rain")] double? Rain,
        [property: JsonPropertyName("next")] Forecast? Next);

    [JsonConverter(typeof(JsonStringEnumConverter<Sky>))]
    public enum Sky { Clear, Cloudy, Rain }

    /// <summary>Records the response format each request carries (the schema GetResponseAsync&lt;T&gt; made for T).</summary>
    sealed class FormatRecorder(IChatClient inner) : DelegatingChatClient(inner)
    {
        public ChatResponseFormatJson? Format;

        public override Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
        {
            Format = options?.ResponseFormat as ChatResponseFormatJson;
            return base.GetResponseAsync(messages, options, cancellationToken);
        }
    }

    /// <summary>
    /// GetResponseAsync&lt;T&gt; on random weights: decoding holds the answer to the schema M.E.AI made for T (required
    /// fields, an enum, an integer array, a nullable number, a recursive nullable object through "$ref"), so every
    /// seed's answer passes an independent JSON Schema validator, and deserializes into T
    /// whenever its integers fit an int (the schema says "integer", not int32's range). Before schemas were
    /// enforced, only "some JSON object" was, and T's fields were up to the model.
    /// </summary>
    [Theory]
    [InlineData(0f, 0L)]
    [InlineData(1f, 1L)]
    [InlineData(1f, 2L)]
    [InlineData(1.5f, 3L)]
    public async Task ResponseFormatSchema_RandomModel_AnswerFollowsTheSchema(float temperature, long seed)
    {
        using var recorder = new FormatRecorder(tiny.Client());
        var r = await recorder.GetResponseAsync<Forecast>("Forecast for Oslo?", new ChatOptions { MaxOutputTokens = 120, Temperature = temperature, Seed = seed },
            cancellationToken: Ct);
        // Stop, or Length where the budget rule closed a string early (random weights rarely close one themselves):
        // the document is whole either way.
        Assert.True(r.FinishReason == ChatFinishReason.Stop || r.FinishReason == ChatFinishReason.Length, $"{r.FinishReason}");
        var schema = Json.Schema.JsonSchema.FromText(recorder.Format!.Schema!.Value.GetRawText());
        using var answer = JsonDocument.Parse(r.Text);
        Assert.True(schema.Evaluate(answer.RootElement).IsValid, $"'{r.Text}' does not follow the schema");
        if (IntegersFitInt(answer.RootElement)) Assert.True(r.TryGetResult(out _), $"'{r.Text}' is not a Forecast");
    }

    static bool IntegersFitInt(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Number => !e.GetRawText().All(c => char.IsDigit(c) || c == '-') || e.TryGetInt32(out _),
        JsonValueKind.Array => e.EnumerateArray().All(IntegersFitInt),
        JsonValueKind.Object => e.EnumerateObject().All(p => IntegersFitInt(p.Value)),
        _ => true,
    };

    /// <summary>A schema decoding cannot enforce is refused before anything runs, naming where the problem is.</summary>
    [Fact]
    public async Task ResponseFormatSchema_Malformed_IsNamed()
    {
        using var client = tiny.Client();
        var schema = JsonDocument.Parse("""{"type":"object","properties":{"when":{"type":"date"}}}""").RootElement;
        var e = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync("x",
            new ChatOptions { ResponseFormat = ChatResponseFormat.ForJsonSchema(schema) }, Ct));
        Assert.Equal("options", e.ParamName);
        Assert.Contains("'date' is not a JSON schema type", e.Message);
        Assert.Contains("#/properties/when", e.Message);
    }
}
