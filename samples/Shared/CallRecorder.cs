// A chat-client middleware that records, for every call that reaches the model, the numbers the samples report:
// prompt tokens, prompt tokens SwiftKV let skip the later layers, output tokens, time to first token.
// NOTE: placed innermost in the pipeline (after UseFunctionInvocation), so each model round trip of a tool loop is
// one record. A non-streaming call is served through the streaming path so the first token can be timed.
using System.Diagnostics;
using Microsoft.Extensions.AI;
using SwiftKV.AI;

namespace SwiftKV.Samples;

/// <summary>One model call as the samples report it.</summary>
public sealed record CallRecord(
    int PromptTokens, int PromptTokensSkipped, int OutputTokens, TimeSpan TimeToFirstToken, TimeSpan Elapsed,
    ChatFinishReason? FinishReason, int PromptTokensCached = 0)
{
    /// <summary>
    /// One report line; the samples' tests look for these labels. Tokens served from the prefix cache (a tool loop's
    /// second call repeats the first one's prompt) were not prefilled again, so SwiftKV had nothing to skip in them.
    /// </summary>
    public override string ToString() =>
        $"prompt tokens: {PromptTokens} | skipped by SwiftKV: {PromptTokensSkipped} | output tokens: {OutputTokens} | "
        + $"TTFT: {TimeToFirstToken.TotalMilliseconds:F0} ms | total: {Elapsed.TotalMilliseconds:F0} ms | finish: {FinishReason}"
        + (PromptTokensCached > 0 ? $" | from the prefix cache (not prefilled again): {PromptTokensCached}" : "");
}

/// <summary>Records every call that passes through it (thread-safe).</summary>
public sealed class CallRecorder(IChatClient inner) : DelegatingChatClient(inner)
{
    readonly List<CallRecord> _calls = [];

    /// <summary>The calls recorded so far, oldest first.</summary>
    public IReadOnlyList<CallRecord> Calls
    {
        get { lock (_calls) return _calls.ToArray(); }
    }

    /// <summary>Forgets the calls recorded so far.</summary>
    public void Clear()
    {
        lock (_calls) _calls.Clear();
    }

    /// <inheritdoc />
    public override Task<ChatResponse> GetResponseAsync(
        IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default) =>
        GetStreamingResponseAsync(messages, options, cancellationToken).ToChatResponseAsync(cancellationToken);

    /// <inheritdoc />
    public override async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(
        IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var clock = Stopwatch.StartNew();
        TimeSpan? first = null;
        UsageDetails? usage = null;
        ChatFinishReason? finish = null;
        await foreach (var update in base.GetStreamingResponseAsync(messages, options, cancellationToken).ConfigureAwait(false))
        {
            first ??= clock.Elapsed;
            usage = update.Contents.OfType<UsageContent>().LastOrDefault()?.Details ?? usage;
            finish = update.FinishReason ?? finish;
            yield return update;
        }
        long skipped = usage?.AdditionalCounts?.GetValueOrDefault(SwiftKvChatClient.PromptTokensSkippedBySwiftKv) ?? 0;
        long cached = usage?.AdditionalCounts?.GetValueOrDefault(SwiftKvChatClient.PromptTokensFromPrefixCache) ?? 0;
        var record = new CallRecord((int)(usage?.InputTokenCount ?? 0), (int)skipped, (int)(usage?.OutputTokenCount ?? 0),
            first ?? clock.Elapsed, clock.Elapsed, finish, (int)cached);
        lock (_calls) _calls.Add(record);
    }
}
