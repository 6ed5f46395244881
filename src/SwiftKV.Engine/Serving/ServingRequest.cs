// The caller's handle on one submitted request: a stream of token ids and a completion with the outcome.
// The stream ends normally on a stop token (not emitted) or the length limit; it throws OperationCanceledException
// once the request is cancelled and the engine's exception if a step failed.
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using SwiftKV.Engine.Generation;

namespace SwiftKV.Engine.Serving;

/// <summary>How a finished request went.</summary>
/// <param name="FinishReason">Stop (a stop token was sampled, not emitted) or Length (max tokens or the sequence limit).</param>
/// <param name="PromptTokens">Tokens of the prompt.</param>
/// <param name="OutputTokens">Tokens emitted.</param>
/// <param name="CachedPromptTokens">Prompt tokens found in the prefix cache (not recomputed) when the request was first admitted.</param>
/// <param name="Preemptions">Times the request was preempted and its tokens recomputed.</param>
/// <param name="TimeToFirstToken">From Submit to the first sampled token.</param>
/// <param name="TimePerOutputToken">Mean time per output token after the first (zero with fewer than two tokens).</param>
public sealed record RequestOutcome(
    FinishReason FinishReason, int PromptTokens, int OutputTokens, int CachedPromptTokens, int Preemptions,
    TimeSpan TimeToFirstToken, TimeSpan TimePerOutputToken);

/// <summary>One request submitted to a <see cref="ServingEngine"/>.</summary>
public sealed class ServingRequest
{
    readonly Action<ServingRequest> _onCancel;
    readonly TaskCompletionSource<RequestOutcome> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly Channel<int> _tokens = Channel.CreateUnbounded<int>(new UnboundedChannelOptions { SingleReader = false, SingleWriter = true });
    // 0 live, 1 cancelled, 2 stopped by the caller (a finish the engine cannot see, such as a stop sequence in text).
    int _cancelled;

    internal ServingRequest(long id, Action<ServingRequest> onCancel)
    {
        Id = id;
        _onCancel = onCancel;
    }

    public long Id { get; }

    /// <summary>Token ids as they are sampled (a stop token is not written). After a cancel a raw reader may still
    /// drain tokens buffered before it; <see cref="ReadAllAsync"/> does not.</summary>
    public ChannelReader<int> Tokens => _tokens.Reader;

    /// <summary>Completes after the request left the engine and its KV blocks were freed; canceled if it was cancelled.</summary>
    public Task<RequestOutcome> Completion => _completion.Task;

    public bool IsCancellationRequested => Volatile.Read(ref _cancelled) is Cancelling or Stopping;

    /// <summary>True once <see cref="Stop"/> ended the request.</summary>
    public bool IsStoppedByCaller => Volatile.Read(ref _cancelled) == Stopping;

    /// <summary>Prompt tokens served from the prefix cache at first admission; known once the first token is out,
    /// so a caller that stops early (a stop sequence) can still report it.</summary>
    public int CachedPromptTokens { get; internal set; }

    /// <summary>
    /// Streams the token ids. Leaving the enumeration early (break, dispose, or <paramref name="ct"/>) cancels the
    /// request, so a caller that walks away frees its blocks.
    /// </summary>
    public async IAsyncEnumerable<int> ReadAllAsync([EnumeratorCancellation] CancellationToken ct = default)
    {
        bool done = false;
        try
        {
            await foreach (int id in _tokens.Reader.ReadAllAsync(ct).ConfigureAwait(false))
            {
                // Tokens already buffered are not delivered after a cancel: the stream ends at once.
                if (IsStoppedByCaller) yield break;
                if (IsCancellationRequested) throw new OperationCanceledException("the request was cancelled.", _cancelledBy);
                yield return id;
            }
            done = true;
        }
        finally
        {
            if (!done) Cancel();
        }
    }

    /// <summary>Cancels the request: its stream ends at once; its blocks are freed before the engine's next step.</summary>
    public void Cancel() => CancelBy(default);

    /// <summary>
    /// Ends the request as finished, on the caller's word: the caller saw the end in the text (a stop sequence). Its
    /// stream ends normally, its blocks are freed before the engine's next step, and once it has produced a token it
    /// counts as a finished request (FinishReason.Stop, its latencies recorded), not as a cancelled one. Stopped before
    /// its first token it has no answer to finish: it ends as a cancel (Completion canceled).
    /// </summary>
    public void Stop()
    {
        if (Interlocked.CompareExchange(ref _cancelled, Stopping, Open) != Open) return;
        _tokens.Writer.TryComplete();
        _onCancel(this);
    }

    /// <summary>Cancel on behalf of <paramref name="token"/> (the Submit token), which the stream's exception then carries.</summary>
    internal void CancelBy(CancellationToken token)
    {
        if (Interlocked.CompareExchange(ref _cancelled, Cancelling, Open) != Open) return;
        _cancelledBy = token;
        _tokens.Writer.TryComplete(new OperationCanceledException("the request was cancelled.", token));
        _onCancel(this);
    }

    CancellationToken _cancelledBy;

    // _cancelled's states. One compare-exchange from Open decides between the caller's Cancel / Stop and the engine's
    // end (success or failure): a late Cancel (a cleanup finally, a linked timeout) cannot turn a delivered answer into
    // a cancellation, and a Cancel that wins keeps its meaning.
    const int Open = 0, Cancelling = 1, Stopping = 2, Ended = 3;

    /// <summary>The engine's end claims the request unless a Cancel or Stop claimed it first.</summary>
    void ClaimEnd() => Interlocked.CompareExchange(ref _cancelled, Ended, Open);

    internal void Emit(int token) => _tokens.Writer.TryWrite(token);

    internal void Succeed(RequestOutcome outcome)
    {
        ClaimEnd();
        _tokens.Writer.TryComplete();
        _completion.TrySetResult(outcome);
    }

    internal void Cancelled()
    {
        _tokens.Writer.TryComplete(new OperationCanceledException("the request was cancelled.", _cancelledBy));
        _completion.TrySetCanceled(_cancelledBy);
    }

    internal void Fail(Exception e)
    {
        ClaimEnd();
        _tokens.Writer.TryComplete(e);
        _completion.TrySetException(e);
    }
}
