// The product's face: an in-process IChatClient over a local Llama / SwiftKV model.
// NOTE: requests are serialised on one model for now (a semaphore); continuous batching replaces this.
// The non-streaming call is built on the streaming one so both paths share every rule (stops, usage, finish,
// tool calls). Request preparation lives in ChatPromptBuilder, tool-call detection in ToolCallBuffer.
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

    readonly LocalModel _model;
    readonly bool _ownsModel;
    readonly SwiftKvOptions _options;
    readonly ChatClientMetadata _metadata;
    readonly Func<DateOnly> _today;
    readonly SwiftKvInstruments _metrics;
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
        _today = today ?? (() => DateOnly.FromDateTime(DateTime.Now));
        string modelId = options.ModelId ?? System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(model.Path));
        _metadata = new ChatClientMetadata("swiftkv", providerUri: null, defaultModelId: modelId);
        _metrics = new SwiftKvInstruments(meterFactory, modelId);
    }

    static LocalModel LoadModel(SwiftKvOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        return LocalModel.Load(options.ModelPath, options.Backend, options.SwiftKv);
    }

    /// <summary>The loaded model (config, tokenizer, backend).</summary>
    public LocalModel Model => _model;

    /// <inheritdoc />
    public async Task<ChatResponse> GetResponseAsync(
        IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default) =>
        await GetStreamingResponseAsync(messages, options, cancellationToken).ToChatResponseAsync(cancellationToken).ConfigureAwait(false);

    /// <inheritdoc />
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(
        IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(messages);
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        var clock = Stopwatch.StartNew();
        var request = ChatPromptBuilder.Prepare(_model, _options, messages, options, _today(), this);

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

        await _model.ExecutionGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var tokens = Channel.CreateUnbounded<int>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var stats = new GenerationStats();
        // The forward passes are CPU- or GPU-bound and synchronous: run them off the caller's thread and
        // stream token ids through a channel, so a slow consumer never blocks and cancellation is prompt.
        Task producer = Task.Run(() => Produce(request, stats, tokens.Writer, cts.Token), CancellationToken.None);
        try
        {
            var detok = new StreamingDetokenizer(_model.Tokenizer);
            var stops = new StopSequenceMatcher(request.StopSequences);
            var toolCalls = new ToolCallBuffer(request.ToolNames, request.Prefill);
            bool stoppedOnText = false;
            TimeSpan firstToken = TimeSpan.Zero, lastToken = TimeSpan.Zero;
            int received = 0;
            await foreach (int id in tokens.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
            {
                cancellationToken.ThrowIfCancellationRequested();
                lastToken = clock.Elapsed;
                if (received++ == 0)
                {
                    firstToken = lastToken;
                    _metrics.FirstToken(firstToken);
                }
                string text = toolCalls.Push(stops.Push(detok.Append(id), out stoppedOnText));
                if (text.Length > 0) yield return Update([new TextContent(text)]);
                if (stoppedOnText) break;
            }
            cts.Cancel();
            try
            {
                await producer.ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (stoppedOnText && !cancellationToken.IsCancellationRequested)
            {
            }
            cancellationToken.ThrowIfCancellationRequested();
            if (!stoppedOnText)
            {
                string tail = toolCalls.Push(stops.Flush(detok.Flush(), out stoppedOnText));
                if (tail.Length > 0) yield return Update([new TextContent(tail)]);
            }
            var (calls, heldText) = toolCalls.Finish();
            if (heldText.Length > 0) yield return Update([new TextContent(heldText)]);
            if (calls.Count > 0) yield return Update([.. calls]);

            // NOTE: JSON output cut off by MaxOutputTokens is returned as is, with FinishReason Length.
            var finish = calls.Count > 0 ? ChatFinishReason.ToolCalls
                : stoppedOnText || stats.FinishReason == FinishReason.Stop ? ChatFinishReason.Stop
                : ChatFinishReason.Length;
            int skipped = _model.Backend.SwiftKvEnabled ? Math.Max(0, stats.PromptTokens - 1) : 0;
            _metrics.Completed(stats.PromptTokens, stats.OutputTokens, skipped, lastToken - firstToken);
            var usage = new UsageDetails
            {
                InputTokenCount = stats.PromptTokens,
                OutputTokenCount = stats.OutputTokens,
                TotalTokenCount = stats.PromptTokens + stats.OutputTokens,
                AdditionalCounts = new() { [PromptTokensSkippedBySwiftKv] = skipped },
            };
            yield return Update([new UsageContent(usage)], finish);
        }
        finally
        {
            cts.Cancel();
            try { await producer.ConfigureAwait(false); } catch { /* surfaced above, or the caller walked away */ }
            _model.ExecutionGate.Release();
        }
    }

    void Produce(PreparedRequest request, GenerationStats stats, ChannelWriter<int> writer, CancellationToken ct)
    {
        try
        {
            using var cache = _model.Backend.CreateCache(request.CacheCapacity);
            long kvBytes = cache.KvBytes;
            _metrics.KvCache(kvBytes);
            try
            {
                foreach (int id in Generator.Generate(_model.Backend, cache, request.PromptTokens, request.Sampling,
                             request.MaxNewTokens, request.StopTokenIds, stats, ct, request.Constraint))
                {
                    writer.TryWrite(id);
                }
            }
            finally
            {
                _metrics.KvCache(-kvBytes);
            }
            writer.TryComplete();
        }
        catch (Exception e)
        {
            writer.TryComplete(e);
            throw;
        }
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
        if (_ownsModel)
        {
            // Wait for an in-flight request to leave the model before freeing it.
            _model.ExecutionGate.Wait();
            _model.Dispose();
            _model.ExecutionGate.Release();
        }
    }
}
