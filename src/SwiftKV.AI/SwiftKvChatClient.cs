// The product's face: an in-process IChatClient over a local Llama / SwiftKV model.
// NOTE: every call becomes a request of the model's ServingEngine (continuous batching, paged KV, prefix cache);
// backends without a batched step are served one request at a time (TokenRun).
// The non-streaming call is built on the streaming one so both paths share every rule (stops, usage, finish,
// tool calls). Request preparation lives in ChatPromptBuilder, tool-call detection in ToolCallBuffer.
using System.Collections.Frozen;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Microsoft.Extensions.AI;
using SwiftKV.Engine;
using SwiftKV.Engine.Generation;
using SwiftKV.Engine.Sampling;
using SwiftKV.Model;
using SwiftKV.Model.Tokenization;

namespace SwiftKV.AI;

/// <summary>An <see cref="IChatClient"/> that runs a Llama 3.x or SwiftKV checkpoint in this process.</summary>
public sealed class SwiftKvChatClient : IChatClient
{
    /// <summary>Key of <see cref="UsageDetails.AdditionalCounts"/>: prompt tokens that skipped the later layers thanks to SwiftKV.</summary>
    public const string PromptTokensSkippedBySwiftKv = "swiftkv.prompt_tokens_skipped";

    /// <summary>Key of <see cref="UsageDetails.AdditionalCounts"/>: prompt tokens whose KV came from the prefix cache (not computed).</summary>
    public const string PromptTokensFromPrefixCache = "swiftkv.prompt_tokens_cached";

    readonly LocalModel _model;
    readonly bool _ownsModel;
    readonly SwiftKvOptions _options;
    readonly ChatClientMetadata _metadata;
    readonly Func<DateOnly> _today;
    readonly SwiftKvInstruments _metrics;
    readonly FrozenSet<int> _hiddenTokens;         // every special token but <|python_tag|>
    readonly FrozenSet<int> _hiddenWithoutTools;   // every special token
    int _disposed;

    /// <summary>Loads the checkpoint named by <paramref name="options"/>; the client owns and disposes the model.</summary>
    public SwiftKvChatClient(SwiftKvOptions options)
        : this(LoadModel(options), options, ownsModel: true)
    {
    }

    /// <summary>
    /// Serves an already loaded model; <paramref name="ownsModel"/> says whether Dispose disposes it.
    /// <paramref name="today"/> fills the template's "Today Date" (default: the local date); metrics go to a meter
    /// from <paramref name="meterFactory"/> when given, else to a process-wide "SwiftKV.AI" meter.
    /// </summary>
    public SwiftKvChatClient(LocalModel model, SwiftKvOptions options, bool ownsModel = false, Func<DateOnly>? today = null, IMeterFactory? meterFactory = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        _model = model;
        _ownsModel = ownsModel;
        _options = options.Clone();
        try
        {
            // The loading constructor checked every option; a loaded model needs only those its requests read.
            _options.ValidateRequestOptions();
        }
        catch when (ownsModel)
        {
            model.Dispose();   // the caller handed it over
            throw;
        }
        _today = today ?? (() => DateOnly.FromDateTime(DateTime.Now));
        string modelId = options.ModelId ?? System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(model.Path));
        _metadata = new ChatClientMetadata("swiftkv", providerUri: null, defaultModelId: modelId);
        _metrics = new SwiftKvInstruments(meterFactory, modelId);
        _hiddenTokens = model.Tokenizer.SpecialTokens.Where(t => t.Key != ChatPromptBuilder.ShownSpecialToken).Select(t => t.Value).ToFrozenSet();
        _hiddenWithoutTools = model.Tokenizer.SpecialTokens.Values.ToFrozenSet();
        KvPoolGauge.Track(model);
    }

    static LocalModel LoadModel(SwiftKvOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        return options.LoadModel();
    }

    /// <summary>The loaded model (config, tokenizer, backend).</summary>
    public LocalModel Model => _model;

    /// <inheritdoc />
    public async Task<ChatResponse> GetResponseAsync(
        IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default) =>
        await GetStreamingResponseAsync(messages, options, cancellationToken).ToChatResponseAsync(cancellationToken).ConfigureAwait(false);

    /// <inheritdoc />
    public IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(
        IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        // Checked at the call, as IChatClient documents, not at the first MoveNextAsync of an iterator.
        ArgumentNullException.ThrowIfNull(messages);
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        return Stream(messages, options, cancellationToken);
    }

    async IAsyncEnumerable<ChatResponseUpdate> Stream(
        IEnumerable<ChatMessage> messages, ChatOptions? options, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        var clock = Stopwatch.StartNew();
        var request = ChatPromptBuilder.Prepare(_model, _options, messages, options, _today(), this, cancellationToken);

        string responseId = "swiftkv-" + Guid.NewGuid().ToString("N");
        string messageId = "msg-" + Guid.NewGuid().ToString("N");
        DateTimeOffset created = DateTimeOffset.UtcNow;
        string modelId = _metadata.DefaultModelId!;
        ChatResponseUpdate Update(IList<AIContent> contents, ChatFinishReason? finish = null) => new()
        {
            Role = ChatRole.Assistant,
            Contents = contents,
            ResponseId = responseId,
            MessageId = messageId,
            CreatedAt = created,
            ModelId = modelId,
            FinishReason = finish,
        };

        // Leaving early (stop text, cancellation, disposing the enumerator before its end) disposes the run, which
        // cancels the request and frees its KV blocks. An enumerator dropped without being disposed cannot be seen: its
        // request runs on to MaxOutputTokens (or the end of turn) and then frees them.
        await using var run = await TokenRun.StartAsync(_model, request, _metrics, cancellationToken).ConfigureAwait(false);
        var detok = new StreamingDetokenizer(_model.Tokenizer);
        var stops = new StopSequenceMatcher(request.StopSequences);
        var toolCalls = new ToolCallBuffer(request.ToolNames, request.Prefill, allowMultiple: options?.AllowMultipleToolCalls ?? true);
        // <|python_tag|> is shown only where it can open a call: with no tools offered it is markup like the others.
        var hidden = request.ToolNames.Count > 0 ? _hiddenTokens : _hiddenWithoutTools;
        bool stoppedOnText = false;
        char lastChar = '\0';   // of the text handed out so far
        TimeSpan firstToken = TimeSpan.Zero, lastToken = TimeSpan.Zero;
        int received = 0;
        await foreach (int id in run.Tokens.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
        {
            cancellationToken.ThrowIfCancellationRequested();
            lastToken = clock.Elapsed;
            if (received++ == 0)
            {
                firstToken = lastToken;
                _metrics.FirstToken(firstToken);
            }
            string text = toolCalls.Push(stops.Push(hidden.Contains(id) ? "" : detok.Append(id), out stoppedOnText));
            if (text.Length > 0)
            {
                lastChar = text[^1];
                yield return Update([new TextContent(text)]);
            }
            if (stoppedOnText) break;
        }
        var outcome = await run.FinishAsync(stoppedOnText).ConfigureAwait(false);
        cancellationToken.ThrowIfCancellationRequested();
        if (!stoppedOnText)
        {
            string tail = toolCalls.Push(stops.Flush(detok.Flush(), out stoppedOnText));
            if (tail.Length > 0)
            {
                lastChar = tail[^1];
                yield return Update([new TextContent(tail)]);
            }
        }
        // NOTE: JSON output cut off by MaxOutputTokens is returned as is, with FinishReason Length. So is JSON that the
        // budget rule may have closed early (BudgetShaped: a list or string ended so that the document fits; it errs
        // towards yes within a few tokens of the budget): whole, but maybe shorter than the model's answer; a call
        // shaped so is not made but returned as text, as a call cut off is. A document that closed without the rule
        // stepping in is complete: Stop (or ToolCalls), also when it closed on the last token the budget allowed. A
        // top-level number is complete after every digit yet may go on, so one the budget ended is Length.
        bool budgetShaped = !stoppedOnText && request.Constraint is IGrammarConstraint { BudgetShaped: true };
        var (calls, heldText) = toolCalls.Finish(asText: budgetShaped);
        if (heldText.Length > 0)
        {
            lastChar = heldText[^1];
            yield return Update([new TextContent(heldText)]);
        }
        if (calls.Count > 0) yield return Update([.. calls]);

        bool openNumber = outcome.FinishReason == FinishReason.Length && char.IsAsciiDigit(lastChar);
        bool jsonComplete = request.Constraint is IGrammarConstraint { IsComplete: true } && !openNumber;
        var finish = budgetShaped ? ChatFinishReason.Length
            : calls.Count > 0 ? ChatFinishReason.ToolCalls
            : stoppedOnText || outcome.FinishReason == FinishReason.Stop || jsonComplete ? ChatFinishReason.Stop
            : ChatFinishReason.Length;
        // Prompt tokens served from the prefix cache were not computed at all; of those computed, all but the
        // last (the last of each pass, on the one-at-a-time path) stop after layer l-1 when SwiftKV is on.
        int computed = outcome.PromptTokens - outcome.CachedPromptTokens;
        int skipped = _model.Backend.SwiftKvEnabled ? Math.Max(0, computed - outcome.PrefillPasses) : 0;
        _metrics.Completed(outcome.PromptTokens, outcome.OutputTokens, skipped, lastToken - firstToken);
        var usage = new UsageDetails
        {
            InputTokenCount = outcome.PromptTokens,
            OutputTokenCount = outcome.OutputTokens,
            TotalTokenCount = outcome.PromptTokens + outcome.OutputTokens,
            CachedInputTokenCount = outcome.CachedPromptTokens,   // within InputTokenCount, as M.E.AI counts it
            AdditionalCounts = new()
            {
                [PromptTokensSkippedBySwiftKv] = skipped,
                [PromptTokensFromPrefixCache] = outcome.CachedPromptTokens,
            },
        };
        yield return Update([new UsageContent(usage)], finish);
    }

    /// <inheritdoc />
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return _metadata;
        if (serviceType == typeof(LocalModel)) return _model;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        if (_ownsModel) _model.Dispose();
    }
}
