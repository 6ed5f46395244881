// Turns a Microsoft.Extensions.AI conversation and ChatOptions into what the engine runs: prompt token ids in the
// Llama 3.1 format (tools, calls and results included), sampling settings, an optional decoding constraint and a
// prefilled start of the answer. Never changes the caller's messages or options.
// NOTE: ToolMode Require* is enforced by prefilling the answer with the start of a call — `{"name": "f",
// "parameters": {` for RequireSpecific (or RequireAny with a single tool), `{"name": "` for RequireAny with several —
// and by constraining the rest to a call of an offered tool with arguments of its parameter schema
// (JsonSchemaGrammar.ToolCall), so even an untrained model ends with a parseable call to a real function.
using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.AI;
using SwiftKV.Engine;
using SwiftKV.Engine.Sampling;
using SwiftKV.Model.Tokenization;

namespace SwiftKV.AI;

/// <summary>One request, ready for the engine.</summary>
internal sealed record PreparedRequest(
    IReadOnlyList<int> PromptTokens, SamplingParams Sampling, int MaxNewTokens, int CacheCapacity,
    IReadOnlySet<int> StopTokenIds, IReadOnlyList<string> StopSequences,
    IReadOnlyList<string> ToolNames, string? Prefill, ILogitsConstraint? Constraint)
{
    /// <summary>True when the answer may be a tool call (tools in the prompt, or a prefilled call).</summary>
    public bool ToolsActive => ToolNames.Count > 0;
}

internal static class ChatPromptBuilder
{
    static readonly ConditionalWeakTable<LlamaTokenizer, byte[]?[]> s_tokenBytes = new();

    public static PreparedRequest Prepare(
        LocalModel model, SwiftKvOptions clientOptions, IEnumerable<ChatMessage> messages, ChatOptions? options,
        DateOnly today, IChatClient client, CancellationToken cancellationToken = default)
    {
        if (options?.MaxOutputTokens is <= 0)
            throw new ArgumentOutOfRangeException(nameof(options), options.MaxOutputTokens, "ChatOptions.MaxOutputTokens must be > 0.");
        // Options this in-process, stateless client cannot honour are refused rather than dropped.
        if (options?.ConversationId is { Length: > 0 })
            throw new ArgumentException("ChatOptions.ConversationId is not supported: the client keeps no conversation state; send the history in the messages.", nameof(options));
        if (options?.ContinuationToken is not null)
            throw new ArgumentException("ChatOptions.ContinuationToken is not supported: this client answers in the foreground and never hands out a token to resume.", nameof(options));
        if (options?.Tools?.FirstOrDefault(t => t is not AIFunctionDeclaration) is { } hosted)
            throw new ArgumentException($"ChatOptions.Tools holds {hosted.GetType().Name} ('{hosted.Name}'): this client runs function tools only.", nameof(options));

        var tools = ToolsInPrompt(options);
        string? prefill = Prefill(options, tools);

        var turns = Turns(messages, options?.Instructions, tools);
        string? schemaRule = SchemaRule(options?.ResponseFormat, toolsOffered: tools.Count > 0);
        if (schemaRule is not null)
        {
            // Last in the system block, after the caller's own system text.
            if (turns[0].Role == "system") turns[0] = turns[0] with { Content = turns[0].Content + "\n\n" + schemaRule };
            else turns.Insert(0, new ChatTurn("system", schemaRule));
        }
        var (context, limit) = Context(model, clientOptions);
        // Encoding stops once the prompt cannot fit, so a document far past the context fails fast (and cancellably).
        var prompt = new List<int>();
        bool whole = Llama31ChatFormat.TryEncodeInto(model.Tokenizer, turns, addGenerationPrompt: true, prompt, context - 1, today,
            ipythonEnvironment: tools.Count > 0, cancellationToken, model.ChatTemplate);
        if (whole && prefill is not null) prompt.AddRange(model.Tokenizer.Encode(prefill));
        if (context < 2)
            throw new ArgumentException($"No prompt fits with room for an answer: the context is {context} token{(context == 1 ? "" : "s")}, set by {limit}.", nameof(messages));
        if (!whole || prompt.Count >= context)
            throw new ArgumentException($"The prompt is {(whole ? $"{prompt.Count}" : $"more than {context - 1}")} tokens, which does not fit the context of {context} tokens set by {limit}."
                + (schemaRule is not null ? " The response format's JSON schema is part of the prompt too." : ""), nameof(messages));
        int maxNew = Math.Min(options?.MaxOutputTokens ?? clientOptions.DefaultMaxOutputTokens, context - prompt.Count);

        // NOTE: an engine-native SamplingParams from RawRepresentationFactory replaces every sampling option of
        // ChatOptions (temperature, top-p/k, seed, penalties); anything else it returns is ignored.
        // Unset options take the engine's defaults (SamplingParams.DefaultTemperature: top-p or top-k imply sampling).
        var sampling = options?.RawRepresentationFactory?.Invoke(client) as SamplingParams ?? Sampling(options);

        var stopIds = model.Tokenizer.StopTokenIds.ToHashSet();
        var constraint = Constraint(model, options?.ResponseFormat as ChatResponseFormatJson, tools, prefill, stopIds, maxNew);

        var (requestStopIds, stopSequences) = StopRules(model.Tokenizer, options?.StopSequences, stopIds, pythonTagShown: tools.Count > 0);
        return new PreparedRequest(prompt, sampling, maxNew, prompt.Count + maxNew, requestStopIds, stopSequences,
            tools.Select(t => t.Name).ToArray(), prefill, constraint);
    }

    /// <summary>
    /// Special tokens are markup, not answer text (Hugging Face and vLLM skip them too), so the client streams none but
    /// this one where tools are offered: it is how a Llama 3.1 model opens a tool call, which the tool-call parser reads.
    /// </summary>
    internal const string ShownSpecialToken = "<|python_tag|>";

    /// <summary>
    /// The caller's stop sequences, split: one that is a hidden special token's text (say "&lt;|eom_id|&gt;") could never
    /// match the streamed text, which leaves that token out, so the engine stops on the token instead; the rest are
    /// matched in the text (&lt;|python_tag|&gt; too where tools are offered, since it is streamed then). Empty ones are dropped.
    /// </summary>
    internal static (IReadOnlySet<int> StopTokenIds, string[] StopSequences) StopRules(LlamaTokenizer tokenizer, IList<string>? requested, HashSet<int> stopIds,
        bool pythonTagShown = true)
    {
        var text = new List<string>();
        HashSet<int>? ids = null;
        foreach (var s in requested ?? [])
        {
            if (string.IsNullOrEmpty(s)) continue;
            if (!(pythonTagShown && s == ShownSpecialToken) && tokenizer.SpecialTokens.TryGetValue(s, out int id)) (ids ??= [.. stopIds]).Add(id);
            else text.Add(s);
        }
        return (ids ?? stopIds, text.ToArray());
    }

    /// <summary>The sampling options of <paramref name="options"/>; a value out of range is named as the ChatOptions property the caller set.</summary>
    static SamplingParams Sampling(ChatOptions? options)
    {
        try
        {
            return new SamplingParams
            {
                Temperature = SamplingParams.DefaultTemperature(options?.Temperature, options?.TopP, options?.TopK),
                TopP = options?.TopP ?? 1f,
                TopK = options?.TopK ?? 0,
                Seed = options?.Seed is long s ? unchecked((ulong)s) : null,
                FrequencyPenalty = options?.FrequencyPenalty ?? 0f,
                PresencePenalty = options?.PresencePenalty ?? 0f,
            };
        }
        catch (ArgumentOutOfRangeException e) when (e.ParamName is { } name)
        {
            // The engine's message without its "(Parameter 'TopP')" suffix, which names the engine's type, not the caller's.
            string rule = e.Message.Split(" (Parameter", 2)[0];
            string value = Convert.ToString(e.ActualValue, System.Globalization.CultureInfo.InvariantCulture) ?? "null";
            throw new ArgumentOutOfRangeException(nameof(options), e.ActualValue, $"ChatOptions.{name} is {value}: {rule}");
        }
    }

    /// <summary>
    /// The most tokens one request may hold (prompt and answer), and which limit sets it with what would raise it, for the
    /// error about a prompt that does not fit: raising ContextLength cannot help past the model's max_position_embeddings.
    /// </summary>
    static (int Context, string Limit) Context(LocalModel model, SwiftKvOptions clientOptions)
    {
        int positions = model.Config.MaxPositionEmbeddings;
        // The KV pool bounds one sequence too: a request may not hold more blocks than the pool has.
        int pool = model.Serving?.MaxSequenceLength ?? int.MaxValue;
        int context = Math.Min(Math.Min(clientOptions.ContextLength, positions), pool);
        string limit = context == positions
            ? "the model's max_position_embeddings; shorten the conversation, the model takes no more"
            : context == clientOptions.ContextLength
                ? $"SwiftKvOptions.ContextLength; shorten the conversation or raise ContextLength (the model takes up to {positions:N0})"
                : $"the KV cache, which holds {pool:N0} tokens for one request; shorten the conversation or raise SwiftKvOptions.KvCacheBytes";
        return (context, limit);
    }

    /// <summary>
    /// What decoding holds the answer to: a call to an offered tool with arguments of its schema when a call is required
    /// (the prefill starts it); a document of the response format's schema, or, with tools offered, that or a call; any
    /// JSON object for a Json format without a schema; nothing otherwise.
    /// </summary>
    static ILogitsConstraint? Constraint(LocalModel model, ChatResponseFormatJson? format, List<ToolDefinition> tools, string? prefill,
        IReadOnlySet<int> stopIds, int maxNew)
    {
        if (prefill is null && format is null) return null;
        var tokenBytes = TokenBytes(model.Tokenizer);
        if (prefill is null && format!.Schema is null) return new JsonConstraint(tokenBytes, stopIds, maxNew);
        var callable = tools.Select(t => (t.Name, t.ParametersSchema)).ToList();
        JsonElement? answer = prefill is null ? format!.Schema : null;
        // The same schemas come back request after request (GetResponseAsync<T>, an agent's tools): one compiled
        // grammar per set serves them all, and with it the vocabulary masks its requests share.
        string key = (prefill is null && tools.Count == 0 ? "schema\n" : "tools\n" + string.Concat(callable.Select(t => $"{t.Name}\n{t.ParametersSchema?.GetRawText()}\n")))
            + "answer\n" + answer?.GetRawText();
        if (!s_grammars.TryGetValue(key, out var grammar))
        {
            try
            {
                grammar = prefill is not null ? JsonSchemaGrammar.ToolCall(callable)
                    : tools.Count > 0 ? JsonSchemaGrammar.ToolCall(callable, answer)
                    : JsonSchemaGrammar.Compile(answer!.Value);
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"A JSON schema in ChatOptions cannot be enforced: {e.Message}", "options", e);
            }
            if (s_grammars.Count >= MaxGrammars) s_grammars.Clear();
            s_grammars[key] = grammar;
        }
        return new JsonSchemaConstraint(grammar, tokenBytes, stopIds, maxNew, Encoding.UTF8.GetBytes(prefill ?? ""));
    }

    static readonly ChatRole Developer = new("developer");   // ChatRole compares ignoring case, as System does
    static readonly JsonSerializerOptions s_compactJson = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
    static readonly ConcurrentDictionary<string, JsonSchemaGrammar> s_grammars = new(StringComparer.Ordinal);
    const int MaxGrammars = 16;   // each keeps up to JsonSchemaGrammar.MaxSharedMasks masks of 256 KB

    /// <summary>The function tools the prompt offers: none under ToolMode None.</summary>
    static List<ToolDefinition> ToolsInPrompt(ChatOptions? options)
    {
        if (options?.Tools is not { Count: > 0 } || options.ToolMode is NoneChatToolMode) return [];
        var tools = new List<ToolDefinition>();
        foreach (var t in options.Tools.OfType<AIFunctionDeclaration>())
        {
            // A call names its function: two different declarations of one name would leave the caller to invoke the
            // wrong one. The same declaration listed twice (tool lists merged) is offered once.
            if (tools.FirstOrDefault(d => d.Name == t.Name) is { } same)
            {
                if (same.Description == (string.IsNullOrWhiteSpace(t.Description) ? null : t.Description)
                    && (same.ParametersSchema?.GetRawText() ?? "") == (t.JsonSchema.ValueKind == JsonValueKind.Object ? t.JsonSchema.GetRawText() : ""))
                    continue;
                throw new ArgumentException($"ChatOptions.Tools declares two different functions named '{t.Name}'; a call names its function, so names must be unique.", nameof(options));
            }
            var schema = t.JsonSchema.ValueKind == JsonValueKind.Object ? t.JsonSchema : (JsonElement?)null;
            tools.Add(new ToolDefinition(t.Name, string.IsNullOrWhiteSpace(t.Description) ? null : t.Description, schema));
        }
        return tools;
    }

    // Decoding holds the answer to the schema's structure (Constraint), but the model still has to know what to write
    // in it: the schema also goes into the system text, where an instruct model reads it (field meanings, and the value
    // rules decoding leaves to the model, such as pattern or minimum). With tools offered the rule is about the final
    // answer, so it does not forbid the function calls that come first.
    static string? SchemaRule(ChatResponseFormat? format, bool toolsOffered)
    {
        if (format is not ChatResponseFormatJson { Schema: { } schema } json) return null;
        if (schema.ValueKind == JsonValueKind.Undefined)
            throw new ArgumentException("ChatOptions.ResponseFormat holds an undefined JsonElement as its schema; give a JSON schema or use ChatResponseFormat.Json.", "options");
        string about = (json.SchemaName, json.SchemaDescription) switch
        {
            ({ Length: > 0 } name, { Length: > 0 } description) => $" ({name}: {description})",
            ({ Length: > 0 } name, _) => $" ({name})",
            (_, { Length: > 0 } description) => $" ({description})",
            _ => "",
        };
        string when = toolsOffered ? "When you give your final answer rather than a function call, write it as" : "Answer with";
        return $"{when} one JSON object that conforms to this JSON schema{about}, and nothing else:\n{schema.GetRawText()}";
    }

    static string? Prefill(ChatOptions? options, List<ToolDefinition> tools)
    {
        if (options?.ToolMode is not RequiredChatToolMode required) return null;
        if (tools.Count == 0)
            throw new ArgumentException("ChatOptions.ToolMode requires a tool call but ChatOptions.Tools holds no function.", nameof(options));
        string? name = required.RequiredFunctionName;
        if (name is not null && !tools.Any(t => t.Name == name))
            throw new ArgumentException($"ChatOptions.ToolMode requires function '{name}', which is not in ChatOptions.Tools ({string.Join(", ", tools.Select(t => t.Name))}).", nameof(options));
        name ??= tools.Count == 1 ? tools[0].Name : null;
        // The name in its compact spelling, as the call grammar matches it (the default encoder would escape é or +).
        return name is null ? "{\"name\": \"" : "{\"name\": " + JsonSerializer.Serialize(name, s_compactJson) + ", \"parameters\": {";
    }

    static List<ChatTurn> Turns(IEnumerable<ChatMessage> messages, string? instructions, List<ToolDefinition> tools)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var turns = new List<ChatTurn>();
        if (!string.IsNullOrWhiteSpace(instructions)) turns.Add(new ChatTurn("system", instructions));
        int index = 0;
        foreach (var m in messages)
        {
            ArgumentNullException.ThrowIfNull(m, nameof(messages));
            // A Llama 3.x chat model reads text: an image or file would otherwise vanish from the prompt unnoticed.
            foreach (var c in m.Contents)
                if (c is not (TextContent or FunctionCallContent or FunctionResultContent or UsageContent or TextReasoningContent))
                    throw new ArgumentException($"message {index} ({m.Role}) holds {c.GetType().Name}: this model takes text, function calls and function results only.", nameof(messages));
            index++;
            // OpenAI's "developer" messages are what system messages were before it renamed them.
            string role = m.Role == ChatRole.System || m.Role == Developer ? "system"
                : m.Role == ChatRole.User ? "user"
                : m.Role == ChatRole.Assistant ? "assistant"
                : m.Role == ChatRole.Tool ? "ipython"
                : throw new ArgumentException($"Chat role '{m.Role}' is not supported by the Llama 3.1 chat format.", nameof(messages));

            var calls = m.Contents.OfType<FunctionCallContent>().ToList();
            if (m.Contents.Any(c => c is FunctionResultContent))
            {
                // Each result is an ipython turn; text beside them (a note the caller added) stays, in its place, as a
                // turn of the message's own role rather than vanishing (in a tool message that is ipython too: it reads
                // as more of the tool's output, which is what a tool message holds).
                var text = new StringBuilder();
                foreach (var c in m.Contents)
                {
                    if (c is TextContent t) text.Append(t.Text);
                    if (c is not FunctionResultContent r) continue;
                    if (!string.IsNullOrWhiteSpace(text.ToString())) turns.Add(new ChatTurn(role, text.ToString()));
                    text.Clear();
                    turns.Add(new ChatTurn("ipython", AsJson(() => RenderResult(r.Result), index - 1, m.Role, $"the result of call '{r.CallId}'")));
                }
                if (!string.IsNullOrWhiteSpace(text.ToString())) turns.Add(new ChatTurn(role, text.ToString()));
                continue;
            }
            // NOTE: an assistant message with calls is rendered as its calls alone, as Llama 3.1's own chat template
            // does: a text beside them ("Let me check.") is left out of the prompt, as the model was trained.
            string content = calls.Count > 0
                ? string.Join("\n", calls.Select(c => AsJson(() => Llama31ToolFormat.RenderCall(c.Name,
                    JsonSerializer.SerializeToElement(c.Arguments ?? new Dictionary<string, object?>(), AIJsonUtilities.DefaultOptions)), index - 1, m.Role, $"the arguments of call '{c.CallId}' ({c.Name})")))
                : m.Text;
            // Instructions and a leading system message are both system text: the template has one system block.
            if (role == "system" && turns.Count > 0 && turns[^1].Role == "system")
                turns[^1] = turns[^1] with { Content = turns[^1].Content + "\n\n" + content };
            else
                turns.Add(new ChatTurn(role, content));
        }

        if (index == 0) throw new ArgumentException("the message list is empty: there is nothing to answer.", nameof(messages));
        if (tools.Count > 0)
        {
            // The template moves the tool definitions into the first message after the system block.
            int first = turns.Count > 0 && turns[0].Role == "system" ? 1 : 0;
            if (first < turns.Count && turns[first].Role == "user")
                turns[first] = turns[first] with { Content = Llama31ToolFormat.FirstUserMessage(tools, turns[first].Content) };
            else
                turns.Insert(first, new ChatTurn("user", Llama31ToolFormat.FirstUserMessage(tools, "")));
        }
        return turns;
    }

    // A value the JSON serializer refuses (a cycle, a Type, an IntPtr, an undefined JsonElement) or a result that is
    // not text (an image a tool returned) is the caller's input: named by its message, like every other message
    // error, not thrown as the serializer's own exception or inlined as base64.
    static string AsJson(Func<string> render, int message, ChatRole role, string what)
    {
        try { return render(); }
        catch (Exception e) when (e is JsonException or NotSupportedException or InvalidOperationException)
        {
            throw new ArgumentException($"message {message} ({role}): {what} cannot go into the prompt as JSON: {e.Message}", "messages", e);
        }
    }

    static string RenderResult(object? result) => result switch
    {
        null => "null",
        string s => s,
        TextContent t => t.Text,
        AIContent c => throw new NotSupportedException($"it is {c.GetType().Name}, and this model takes text and JSON results only."),
        JsonElement e => Llama31ToolFormat.RenderJson(e),
        _ => Llama31ToolFormat.RenderJson(JsonSerializer.SerializeToElement(result, AIJsonUtilities.DefaultOptions.GetTypeInfo(result.GetType()))),
    };

    /// <summary>Bytes of every token id for the JSON constraint; special tokens are never allowed (null).</summary>
    static byte[]?[] TokenBytes(LlamaTokenizer tokenizer) => s_tokenBytes.GetValue(tokenizer, tok =>
    {
        var special = tok.SpecialTokens.Values.ToHashSet();
        var table = new byte[]?[tok.VocabularySize];
        for (int id = 0; id < table.Length; id++)
            table[id] = special.Contains(id) ? null : tok.GetTokenBytes(id).ToArray();
        return table;
    });
}
