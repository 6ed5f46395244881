// Tool calling through the real prompt renderer and call parser, with a scripted "model" (ScriptedBackend) for
// exact calls and the tiny random model for the constrained ToolMode paths.
using System.Text.Json;
using Microsoft.Extensions.AI;
using SwiftKV.Engine;
using SwiftKV.Model.Tokenization;
using Xunit;

namespace SwiftKV.AI.Tests;

public sealed class ToolCallingTests(TinyChatModel tiny)
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    (SwiftKvChatClient Client, ScriptedBackend Backend) Scripted(params string[] answers) => ScriptedBackend.Client(tiny, answers);

    string Prompt(ScriptedBackend b, int i) => tiny.Model.Tokenizer.Decode(b.Prompts[i]);

    public static TheoryData<string, object?> UnrenderableResults => new()
    {
        { "undefined JsonElement", default(System.Text.Json.JsonElement) },
        { "a Type", typeof(string) },
        { "an image", new DataContent(new byte[] { 1, 2, 3 }, "image/png") },
    };

    [Theory]
    [MemberData(nameof(UnrenderableResults))]
    public async Task ToolResultThatIsNotTextOrJson_IsNamedByItsMessage(string what, object? result)
    {
        var (client, _) = Scripted("unused");
        using var _c = client;
        List<ChatMessage> history =
        [
            new(ChatRole.User, "Weather?"),
            new(ChatRole.Assistant, [new FunctionCallContent("c1", "get_weather", new Dictionary<string, object?> { ["city"] = "Oslo" })]),
            new(ChatRole.Tool, [new FunctionResultContent("c1", result)]),
        ];
        var e = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync(history, cancellationToken: Ct));
        Assert.Equal("messages", e.ParamName);
        Assert.Contains("message 2 (tool)", e.Message);
        Assert.Contains("call 'c1'", e.Message);
        Assert.True(e.InnerException is not null || what == "an image", e.ToString());
    }

    /// <summary>
    /// Text beside function results in one message (a note the caller added) is kept in the prompt, in its place, as a
    /// turn of the message's role: only images and other non-text content are refused, never dropped silently.
    /// </summary>
    [Fact]
    public async Task TextBesideFunctionResults_StaysInThePrompt()
    {
        var (client, backend) = Scripted("done");
        using var _c = client;
        List<ChatMessage> history =
        [
            new(ChatRole.User, [new TextContent("Weather in Oslo, please; note that 'sunny' means clear sky."), new FunctionResultContent("c0", "pinned-result-0")]),
            new(ChatRole.Assistant, [new FunctionCallContent("c1", "get_weather", new Dictionary<string, object?> { ["city"] = "Oslo" })]),
            new(ChatRole.Tool, [new FunctionResultContent("c1", "pinned-result-1"), new TextContent("fetched 3 minutes ago")]),
        ];
        await client.GetResponseAsync(history, cancellationToken: Ct);
        string prompt = Prompt(backend, 0);
        int note = prompt.IndexOf("means clear sky", StringComparison.Ordinal), first = prompt.IndexOf("pinned-result-0", StringComparison.Ordinal);
        int second = prompt.IndexOf("pinned-result-1", StringComparison.Ordinal), after = prompt.IndexOf("fetched 3 minutes ago", StringComparison.Ordinal);
        Assert.True(note >= 0 && note < first && first < second && second < after, prompt);
        Assert.Contains("<|start_header_id|>user<|end_header_id|>\n\nWeather in Oslo", prompt);
        Assert.Contains("<|start_header_id|>ipython<|end_header_id|>\n\nfetched 3 minutes ago", prompt);
    }

    /// <summary>
    /// Two different tools of one name would leave the caller to invoke the wrong one: refused, naming it. The same
    /// declaration listed twice (tool lists merged) is offered once.
    /// </summary>
    [Fact]
    public async Task DuplicateToolNames_AreRefused()
    {
        var (client, _) = Scripted("unused");
        using var _c = client;
        var add = AIFunctionFactory.Create((int a, int b) => a + b, "add", "Adds");
        var other = AIFunctionFactory.Create((string x) => x, "add", "Another add");
        var e = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync("x", new ChatOptions { Tools = [add, other] }, Ct));
        Assert.Equal("options", e.ParamName);
        Assert.Contains("two different functions named 'add'", e.Message);
        // The same declaration twice (tool lists merged) is offered once, as if listed once.
        var (again, backend) = Scripted("a", "b");
        using var _a = again;
        await again.GetResponseAsync("x", new ChatOptions { Tools = [add, add] }, Ct);
        await again.GetResponseAsync("x", new ChatOptions { Tools = [add] }, Ct);
        Assert.Equal(Prompt(backend, 1), Prompt(backend, 0));
    }

    /// <summary>OpenAI's "developer" role is the system role by its newer name: the same prompt.</summary>
    [Fact]
    public async Task DeveloperRole_IsTheSystemRole()
    {
        var (client, backend) = Scripted("a", "b");
        using var _c = client;
        await client.GetResponseAsync([new(new ChatRole("Developer"), "Answer in French."), new(ChatRole.User, "Hi")], cancellationToken: Ct);
        await client.GetResponseAsync([new(ChatRole.System, "Answer in French."), new(ChatRole.User, "Hi")], cancellationToken: Ct);
        Assert.Equal(Prompt(backend, 1), Prompt(backend, 0));
        Assert.Contains("Answer in French.", Prompt(backend, 0));
    }

    public sealed record WeatherReport(
        [property: System.Text.Json.Serialization.JsonPropertyName("city")] string City,
        [property: System.Text.Json.Serialization.JsonPropertyName("celsius")] int Celsius);

    /// <summary>
    /// GetResponseAsync&lt;T&gt; sends T's JSON schema as the response format: decoding holds the answer to one JSON
    /// object, and the schema goes into the system text, where the model reads which fields to write.
    /// </summary>
    [Fact]
    public async Task StructuredOutput_SchemaIsInThePrompt_AndTheAnswerDeserializes()
    {
        var (client, backend) = Scripted("{\"city\": \"Oslo\", \"celsius\": -3}");
        using var _c = client;
        var r = await client.GetResponseAsync<WeatherReport>("Weather in Oslo?", cancellationToken: Ct);

        Assert.Equal(new WeatherReport("Oslo", -3), r.Result);
        string prompt = Prompt(backend, 0);
        Assert.Contains("conforms to this JSON schema", prompt);
        Assert.Contains("\"celsius\"", prompt);
        Assert.True(prompt.IndexOf("JSON schema", StringComparison.Ordinal) < prompt.IndexOf("Weather in Oslo?", StringComparison.Ordinal),
            "the schema belongs in the system text, before the question");
    }

    /// <summary>
    /// With tools offered, the schema rule is about the final answer (a function call may come first), and it stands last
    /// in the system text, after the caller's instructions; an undefined schema element is named.
    /// </summary>
    [Fact]
    public async Task StructuredOutput_WithTools_TheRuleLeavesRoomForCalls()
    {
        var (client, backend) = Scripted("{\"city\": \"Oslo\", \"celsius\": 2}");
        using var _c = client;
        var options = new ChatOptions { Instructions = "Be brief.", Tools = [Weather([])] };
        var r = await client.GetResponseAsync<WeatherReport>("Weather in Oslo?", options, cancellationToken: Ct);
        Assert.Equal(new WeatherReport("Oslo", 2), r.Result);
        string prompt = Prompt(backend, 0);
        Assert.Contains("When you give your final answer rather than a function call", prompt);
        Assert.True(prompt.IndexOf("Be brief.", StringComparison.Ordinal) < prompt.IndexOf("JSON schema", StringComparison.Ordinal));

        var e = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync("Hi",
            new ChatOptions { ResponseFormat = ChatResponseFormat.ForJsonSchema(default(JsonElement)) }, Ct));
        Assert.Contains("undefined JsonElement", e.Message);
    }

    /// <summary>Special tokens are markup, not answer text; &lt;|python_tag|&gt; is kept (PythonTagCalls_* shows it still opens a call).</summary>
    [Fact]
    public async Task SpecialTokensInTheAnswer_AreNotText()
    {
        var (client, _) = Scripted("Hi<|start_header_id|>user<|end_header_id|> there<|reserved_special_token_9|>!");
        using var _c = client;
        var r = await client.GetResponseAsync("Hello", cancellationToken: Ct);
        Assert.Equal("Hiuser there!", r.Text);
        Assert.Equal(ChatFinishReason.Stop, r.FinishReason);
    }

    /// <summary>
    /// With no tools offered, &lt;|python_tag|&gt; opens no call: it is markup like the other special tokens, not text.
    /// It was streamed as an update of its own.
    /// </summary>
    [Fact]
    public async Task PythonTag_WithoutTools_IsNotText()
    {
        var (client, _) = Scripted("<|python_tag|>print(1)<|eom_id|>", "<|python_tag|>print(1)<|eom_id|>");
        using var _c = client;
        Assert.Equal("print(1)", (await client.GetResponseAsync("Hi", cancellationToken: Ct)).Text);
        var updates = new List<string>();
        await foreach (var u in client.GetStreamingResponseAsync("Hi", cancellationToken: Ct)) updates.Add(u.Text);
        Assert.DoesNotContain(updates, t => t.Contains("python_tag"));
        Assert.Equal("print(1)", string.Concat(updates));
    }

    static AIFunction Weather(List<string> seen) =>
        AIFunctionFactory.Create((string city) => { seen.Add(city); return new { city, temperature = 21 }; }, "get_weather", "Current weather in a city");

    [Fact]
    public async Task UseFunctionInvocation_FullRoundTrip_RendersCallAndResultBack()
    {
        var (inner, backend) = Scripted("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}", "It is 21 degrees in Oslo.");
        using var client = inner.AsBuilder().UseFunctionInvocation().Build();
        var seen = new List<string>();

        var r = await client.GetResponseAsync("Weather in Oslo?", new ChatOptions { Tools = [Weather(seen)] }, Ct);

        Assert.Equal(["Oslo"], seen);
        Assert.Equal("It is 21 degrees in Oslo.", r.Text);
        Assert.Equal(ChatFinishReason.Stop, r.FinishReason);
        var first = Prompt(backend, 0);
        Assert.Contains("Environment: ipython\nCutting Knowledge Date", first);
        Assert.Contains(Llama31ToolFormat.Instructions, first);
        Assert.Contains("\"name\": \"get_weather\"", first);
        var second = Prompt(backend, 1);
        Assert.Contains("<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}<|eot_id|>", second);
        Assert.Contains("<|start_header_id|>ipython<|end_header_id|>\n\n{\"city\": \"Oslo\", \"temperature\": 21}<|eot_id|>", second);
        Assert.EndsWith("<|start_header_id|>assistant<|end_header_id|>\n\n", second);
    }

    [Fact]
    public async Task PythonTagCalls_SeveralCalls_EachGetsACallId()
    {
        var (client, _) = Scripted("<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}; {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}<|eom_id|>");
        using var _c = client;
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync("Weather in Oslo and Rome?", new ChatOptions { Tools = [Weather([])] }, Ct)) updates.Add(u);
        var r = updates.ToChatResponse();

        var calls = r.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>().ToList();
        Assert.Equal(2, calls.Count);
        Assert.Equal(["Oslo", "Rome"], calls.Select(c => ((JsonElement)c.Arguments!["city"]!).GetString()));
        Assert.Equal(2, calls.Select(c => c.CallId).Distinct().Count());
        Assert.Equal(ChatFinishReason.ToolCalls, r.FinishReason);
        Assert.Equal("", r.Text);
        Assert.Single(updates.SelectMany(u => u.Contents).OfType<UsageContent>());
    }

    [Theory]
    [InlineData("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"")]
    [InlineData("{\"name\": \"delete_everything\", \"parameters\": {}}")]
    [InlineData("{\"name\": \"get_weather\", \"parameters\": {}} and some words")]
    [InlineData("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\", \"city\": \"Rome\"}}")]   // a repeated argument
    public async Task MalformedCall_SurfacesAsText(string answer)
    {
        var (client, _) = Scripted(answer);
        using var _c = client;
        var r = await client.GetResponseAsync("Weather?", new ChatOptions { Tools = [Weather([])] }, Ct);
        Assert.Equal(answer, r.Text);
        Assert.Empty(r.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
        Assert.Equal(ChatFinishReason.Stop, r.FinishReason);
    }

    /// <summary>AllowMultipleToolCalls = false keeps the first of several calls; a hosted (non-function) tool and a
    /// ConversationId, which this stateless client cannot honour, are refused instead of dropped.</summary>
    [Fact]
    public async Task AllowMultipleToolCallsFalse_KeepsOne_HostedToolsAndConversationId_Throw()
    {
        const string two = "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}; {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}<|eom_id|>";
        var (client, _) = Scripted(two);
        using var _c = client;
        var r = await client.GetResponseAsync("Weather in Oslo and Rome?", new ChatOptions { Tools = [Weather([])], AllowMultipleToolCalls = false }, Ct);
        var calls = r.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>().ToList();
        Assert.Equal(["Oslo"], calls.Select(c => ((JsonElement)c.Arguments!["city"]!).GetString()));
        var hosted = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync("Search", new ChatOptions { Tools = [new HostedWebSearchTool()] }, Ct));
        Assert.Contains("HostedWebSearchTool", hosted.Message);
        var conversation = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync("Hi", new ChatOptions { ConversationId = "c-1" }, Ct));
        Assert.Contains("ConversationId", conversation.Message);
    }

    [Fact]
    public async Task PlainAnswer_WithToolsOffered_StreamsAsText()
    {
        var (client, _) = Scripted("  No tool needed, it is sunny.");
        using var _c = client;
        var texts = new List<string>();
        await foreach (var u in client.GetStreamingResponseAsync("Hi", new ChatOptions { Tools = [Weather([])] }, Ct))
            if (u.Text.Length > 0) texts.Add(u.Text);
        Assert.True(texts.Count > 2, "text should stream token by token once it cannot be a call");
        Assert.Equal("  No tool needed, it is sunny.", string.Concat(texts));
    }

    [Fact]
    public async Task ToolModeNone_LeavesToolsOutOfThePrompt_ButRendersHistory()
    {
        var (client, backend) = Scripted("ok");
        using var _c = client;
        var history = new List<ChatMessage>
        {
            new(ChatRole.User, "Weather?"),
            new(ChatRole.Assistant, [new FunctionCallContent("c1", "get_weather", new Dictionary<string, object?> { ["city"] = "Oslo" })]),
            new(ChatRole.Tool, [new FunctionResultContent("c1", "sunny")]),
        };
        await client.GetResponseAsync(history, new ChatOptions { Tools = [Weather([])], ToolMode = ChatToolMode.None }, Ct);
        string prompt = Prompt(backend, 0);
        Assert.DoesNotContain("Environment: ipython", prompt);
        Assert.DoesNotContain(Llama31ToolFormat.Instructions, prompt);
        Assert.Contains("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}<|eot_id|>", prompt);
        Assert.Contains("<|start_header_id|>ipython<|end_header_id|>\n\nsunny<|eot_id|>", prompt);
    }

    /// <summary>
    /// MaxOutputTokens too small for the model's JSON answer: the budget rule closes the document early (whole, but a
    /// shorter list than the model's) and the answer says so, FinishReason Length. It said Stop, and
    /// GetResponseAsync&lt;T&gt; callers took a list the grammar had cut (and ended with a number of its own) as the answer.
    /// With room, the same answer is Stop.
    /// </summary>
    [Fact]
    public async Task StructuredOutput_ClosedEarlyByTheBudget_IsLength()
    {
        string answer = "{\"values\": [" + string.Join(", ", Enumerable.Range(1, 40)) + "]}";
        var (client, _) = Scripted(answer, answer);
        using var _c = client;
        var cut = await client.GetResponseAsync("List 40 numbers", new ChatOptions { ResponseFormat = ChatResponseFormat.Json, MaxOutputTokens = 30 }, Ct);
        Assert.Equal(ChatFinishReason.Length, cut.FinishReason);
        using (JsonDocument.Parse(cut.Text)) { }   // still whole
        Assert.NotEqual(answer, cut.Text);
        var full = await client.GetResponseAsync("List 40 numbers", new ChatOptions { ResponseFormat = ChatResponseFormat.Json, MaxOutputTokens = 200 }, Ct);
        Assert.Equal(answer, full.Text);
        Assert.Equal(ChatFinishReason.Stop, full.FinishReason);
    }

    /// <summary>
    /// A required call whose arguments the budget rule closed early ({"city": "San"}) is not made: it comes back as
    /// text, the prefilled start included, with FinishReason Length, as a call cut off does. It was returned as a call,
    /// and UseFunctionInvocation ran the function on the shortened argument. With room, the call is made whole.
    /// </summary>
    [Fact]
    public async Task RequiredCall_ClosedEarlyByTheBudget_IsTextWithLength()
    {
        const string City = "San Francisco, California, United States of America";
        string rest = "\"city\": \"" + City + "\"}}";
        var (inner, _) = Scripted(rest, rest);
        using var client = inner.AsBuilder().UseFunctionInvocation().Build();
        var seen = new List<string>();
        var options = new ChatOptions { Tools = [Weather(seen)], ToolMode = ChatToolMode.RequireSpecific("get_weather"), MaxOutputTokens = 8 };
        var cut = await client.GetResponseAsync("Weather in SF?", options, Ct);
        Assert.Empty(seen);
        Assert.Empty(cut.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
        Assert.Equal(ChatFinishReason.Length, cut.FinishReason);
        Assert.StartsWith("{\"name\": \"get_weather\", \"parameters\": {", cut.Text);

        options.MaxOutputTokens = 64;
        options.ToolMode = ChatToolMode.RequireSpecific("get_weather");
        var (inner2, _) = Scripted(rest, "It is 21 degrees.");
        using var client2 = inner2.AsBuilder().UseFunctionInvocation().Build();
        var whole = await client2.GetResponseAsync("Weather in SF?", options, Ct);
        Assert.Equal([City], seen);
    }

    /// <summary>
    /// The other side of the budget rule's flag: a whole call or JSON answer with room to spare (here about twice its
    /// tokens) was not shaped, so the call is made and the answer is Stop. Within a few tokens of the budget the flag
    /// errs towards Length (GrammarConstraint.BudgetShaped says why).
    /// </summary>
    [Fact]
    public async Task CallAndJson_WithRoomToSpare_AreNotFlagged()
    {
        var (inner, _) = Scripted("\"city\": \"Oslo\"}}", "It is 21 degrees.");
        using var client = inner.AsBuilder().UseFunctionInvocation().Build();
        var seen = new List<string>();
        var r = await client.GetResponseAsync("Weather in Oslo?",
            new ChatOptions { Tools = [Weather(seen)], ToolMode = ChatToolMode.RequireSpecific("get_weather"), MaxOutputTokens = 16 }, Ct);
        Assert.Equal(["Oslo"], seen);

        const string answer = "{\"values\": [1, 2, 3]}";
        var (json, _) = Scripted(answer);
        using var _j = json;
        var j = await json.GetResponseAsync("Three numbers", new ChatOptions { ResponseFormat = ChatResponseFormat.Json, MaxOutputTokens = 24 }, Ct);
        Assert.Equal(answer, j.Text);
        Assert.Equal(ChatFinishReason.Stop, j.FinishReason);
    }

    [Fact]
    public async Task RequireAny_SeveralTools_PrefillsTheCallStart()
    {
        var (client, backend) = Scripted("get_weather\", \"parameters\": {\"city\": \"Oslo\"}}");
        using var _c = client;
        var other = AIFunctionFactory.Create(() => 1, "other");
        var r = await client.GetResponseAsync("Weather?", new ChatOptions { Tools = [Weather([]), other], ToolMode = ChatToolMode.RequireAny }, Ct);
        Assert.EndsWith("<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"", Prompt(backend, 0));
        var call = Assert.Single(r.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
        Assert.Equal("get_weather", call.Name);
        Assert.Equal(ChatFinishReason.ToolCalls, r.FinishReason);
    }

    [Fact]
    public async Task RequireSpecific_RandomModel_CallsThatFunction()
    {
        using var client = tiny.Client();
        var tools = new List<AITool> { Weather([]), AIFunctionFactory.Create(() => 1, "other") };
        var r = await client.GetResponseAsync("Weather?", new ChatOptions { Tools = tools, ToolMode = ChatToolMode.RequireSpecific("other"), MaxOutputTokens = 20 }, Ct);
        Assert.Equal("other", TheCall(r, ["get_weather", "other"]).Name);
    }

    /// <summary>
    /// The call a required-call answer holds: made (FinishReason ToolCalls), or, where MaxOutputTokens closed its
    /// arguments early (a random model's strings run until the budget rule ends them), given back as text with
    /// FinishReason Length that still parses as one call.
    /// </summary>
    static (string Name, IDictionary<string, object?> Arguments) TheCall(ChatResponse r, IReadOnlyCollection<string> toolNames)
    {
        var made = r.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>().ToList();
        if (r.FinishReason == ChatFinishReason.ToolCalls) return (Assert.Single(made).Name, made[0].Arguments!);
        Assert.Equal(ChatFinishReason.Length, r.FinishReason);
        Assert.Empty(made);
        var parsed = Assert.Single(Llama31ToolFormat.TryParseCalls(r.Text, toolNames) ?? []);
        return (parsed.Name, parsed.Arguments.EnumerateObject().ToDictionary(p => p.Name, p => (object?)p.Value.Clone()));
    }

    [Fact]
    public async Task RequireSpecific_UnknownFunction_Throws()
    {
        using var client = tiny.Client();
        var e = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync("x",
            new ChatOptions { Tools = [Weather([])], ToolMode = ChatToolMode.RequireSpecific("nope") }, Ct));
        Assert.Contains("'nope'", e.Message);
        await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync("x", new ChatOptions { ToolMode = ChatToolMode.RequireAny }, Ct));
    }

    /// <summary>
    /// RequireAny over several tools on random weights: the call names an offered tool and its arguments are of that
    /// tool's parameter schema (get_weather's required string city), for every seed.
    /// </summary>
    [Theory]
    [InlineData(0L)]
    [InlineData(1L)]
    [InlineData(2L)]
    public async Task RequireAny_RandomModel_CallsAnOfferedToolWithItsArguments(long seed)
    {
        using var client = tiny.Client();
        var add = AIFunctionFactory.Create((int a, int b) => a + b, "add");
        var r = await client.GetResponseAsync("Weather?", new ChatOptions
        {
            Tools = [Weather([]), add], ToolMode = ChatToolMode.RequireAny, MaxOutputTokens = 40, Temperature = 1f, Seed = seed,
        }, Ct);
        var (name, arguments) = TheCall(r, ["get_weather", "add"]);
        if (name == "get_weather") Assert.Equal(JsonValueKind.String, Assert.IsType<JsonElement>(arguments["city"]).ValueKind);
        else Assert.True(arguments.ContainsKey("a") && arguments.ContainsKey("b"), string.Join(",", arguments.Keys));
    }

    /// <summary>
    /// Tools beside a response schema, random weights: the answer is either a call to an offered tool with its
    /// arguments, or an answer of the schema — never a third shape.
    /// </summary>
    [Theory]
    [InlineData(0L)]
    [InlineData(1L)]
    [InlineData(2L)]
    [InlineData(3L)]
    public async Task ToolsAndSchema_RandomModel_CallOrSchemaAnswer(long seed)
    {
        using var client = tiny.Client();
        var r = await client.GetResponseAsync<WeatherReport>("Weather in Oslo?",
            new ChatOptions { Tools = [Weather([])], MaxOutputTokens = 60, Temperature = 1f, Seed = seed }, cancellationToken: Ct);
        var calls = r.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>().ToList();
        if (calls.Count > 0)
        {
            Assert.Equal("get_weather", Assert.Single(calls).Name);
            Assert.True(calls[0].Arguments!.ContainsKey("city"));
        }
        else
        {
            // The answer has WeatherReport's fields with their JSON kinds (celsius may be an integer past int's range).
            using var answer = JsonDocument.Parse(r.Text);
            Assert.Equal(JsonValueKind.String, answer.RootElement.GetProperty("city").ValueKind);
            Assert.Equal(JsonValueKind.Number, answer.RootElement.GetProperty("celsius").ValueKind);
        }
    }
}
