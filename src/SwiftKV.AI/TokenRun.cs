// One chat call's token stream, from whichever execution path the model has:
//  - a ServingEngine (continuous batching, paged KV, prefix cache) when the backend has a batched step;
//  - otherwise one request at a time on the backend behind LocalModel.ExecutionGate, generated off the caller's
//    thread and streamed through a channel.
// Either way the client reads token ids from a channel and gets the same outcome record at the end.
using System.Threading.Channels;
using SwiftKV.Engine;
using SwiftKV.Engine.Generation;
using SwiftKV.Engine.Serving;

namespace SwiftKV.AI;

/// <summary>How a chat call's generation ended, whichever path ran it.</summary>
/// <remarks><c>PrefillPasses</c>: passes whose last row ran every layer (the engine's chunks that do not end a prompt
/// stop after layer l-1 for every row, so it counts 1 there).</remarks>
internal sealed record RunOutcome(FinishReason? FinishReason, int PromptTokens, int OutputTokens, int CachedPromptTokens, int PrefillPasses = 1);

internal abstract class TokenRun : IAsyncDisposable
{
    public abstract ChannelReader<int> Tokens { get; }

    /// <summary>Ends the run after the reader stopped (<paramref name="stoppedEarly"/>: the client cut it on stop text).</summary>
    public abstract Task<RunOutcome> FinishAsync(bool stoppedEarly);

    public abstract ValueTask DisposeAsync();

    public static async Task<TokenRun> StartAsync(LocalModel model, PreparedRequest request, SwiftKvInstruments metrics, CancellationToken ct)
    {
        if (model.Serving is { } engine)
            return new EngineRun(engine.Submit(request.PromptTokens, request.Sampling, request.MaxNewTokens, request.StopTokenIds, ct, request.Constraint),
                request.PromptTokens.Count);
        using (var wait = CancellationTokenSource.CreateLinkedTokenSource(ct, model.Stopping))
        {
            try
            {
                await model.ExecutionGate.WaitAsync(wait.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                // Named by the caller's token when it was the caller's cancel (the linked token is ours).
                if (ct.IsCancellationRequested) throw new OperationCanceledException(ct);
                throw new ObjectDisposedException(nameof(LocalModel), "the model was disposed while this request waited for it.");
            }
        }
        return new SerialRun(model, request, metrics, ct);
    }

    sealed class EngineRun(ServingRequest request, int promptTokens) : TokenRun
    {
        int _read;

        public override ChannelReader<int> Tokens { get; } = new CountingReader(request.Tokens);

        public override async Task<RunOutcome> FinishAsync(bool stoppedEarly)
        {
            _read = ((CountingReader)Tokens).Consumed;
            if (stoppedEarly)
            {
                request.Stop();   // a finished request in the engine's metrics, not a cancelled one
                return new RunOutcome(FinishReason.Stop, promptTokens, _read, request.CachedPromptTokens);
            }
            var o = await request.Completion.ConfigureAwait(false);
            return new RunOutcome(o.FinishReason, o.PromptTokens, o.OutputTokens, o.CachedPromptTokens);
        }

        public override ValueTask DisposeAsync()
        {
            // A caller that walked away (exception, cancellation, abandoned enumerator) frees its blocks now.
            if (!request.Completion.IsCompleted) request.Cancel();
            return ValueTask.CompletedTask;
        }
    }

    /// <summary>Counts the tokens the client consumed, for usage when it cuts the stream itself.</summary>
    sealed class CountingReader(ChannelReader<int> inner) : ChannelReader<int>
    {
        public int Consumed;

        public override bool TryRead(out int item)
        {
            if (!inner.TryRead(out item)) return false;
            Consumed++;
            return true;
        }

        public override ValueTask<bool> WaitToReadAsync(CancellationToken cancellationToken = default) => inner.WaitToReadAsync(cancellationToken);
        public override Task Completion => inner.Completion;
    }

    sealed class SerialRun : TokenRun
    {
        // Prefill chunk of the serial path: the serving engine's default step for the backend (512 tokens on the CPU,
        // 2048-8192 on a GPU, where shorter passes stream the weights more often), or one pass for a backend without
        // one. A cancelled call returns at once (its stream is completed with the exception); the model is free again
        // at the end of the chunk in flight.
        static int PrefillChunk(IModelBackend backend) => (backend as IBatchedBackend)?.PreferredMaxBatchTokens ?? 0;

        readonly LocalModel _model;
        readonly CancellationToken _callerToken;
        readonly CancellationTokenSource _cts;
        readonly CancellationTokenRegistration _onCancel;
        readonly Channel<int> _tokens = Channel.CreateUnbounded<int>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        readonly GenerationStats _stats = new();
        readonly CountingReader _reader;
        readonly Task _producer;

        /// <summary>Starts generating; the caller has entered <see cref="LocalModel.ExecutionGate"/>, and the run
        /// releases it as soon as generation ends (not when the reader lets go: a slow or abandoned reader must not
        /// hold the model, since every token is buffered by then).</summary>
        public SerialRun(LocalModel model, PreparedRequest request, SwiftKvInstruments metrics, CancellationToken ct)
        {
            _model = model;
            _callerToken = ct;
            _reader = new CountingReader(_tokens.Reader);
            _cts = CancellationTokenSource.CreateLinkedTokenSource(ct, model.Stopping);
            _onCancel = ct.Register(static s => ((SerialRun)s!).Cancelled(), this);
            // Forward passes are synchronous and CPU- or GPU-bound: run them off the caller's thread.
            _producer = Task.Run(() => Produce(request, metrics, _cts.Token), CancellationToken.None);
        }

        public override ChannelReader<int> Tokens => _reader;

        // The caller's cancellation, named by the caller's token (as the engine path does), ends its stream now.
        void Cancelled() => _tokens.Writer.TryComplete(new OperationCanceledException(_callerToken));

        void Produce(PreparedRequest request, SwiftKvInstruments metrics, CancellationToken ct)
        {
            try
            {
                using var cache = _model.Backend.CreateCache(request.CacheCapacity);
                long kvBytes = cache.KvBytes;
                metrics.KvCache(kvBytes);
                try
                {
                    int chunk = PrefillChunk(_model.Backend);
                    foreach (int id in Generator.Generate(_model.Backend, cache, request.PromptTokens, request.Sampling,
                                 request.MaxNewTokens, request.StopTokenIds, _stats, ct, request.Constraint, chunk))
                        _tokens.Writer.TryWrite(id);
                }
                finally
                {
                    metrics.KvCache(-kvBytes);
                }
                _tokens.Writer.TryComplete();
            }
            catch (OperationCanceledException) when (_callerToken.IsCancellationRequested)
            {
                Cancelled();
            }
            catch (OperationCanceledException) when (_model.Stopping.IsCancellationRequested)
            {
                _tokens.Writer.TryComplete(new ObjectDisposedException(nameof(LocalModel), "the model was disposed while this request ran."));
            }
            catch (Exception e)
            {
                _tokens.Writer.TryComplete(e);
            }
            finally
            {
                _onCancel.Dispose();
                // Unlinks it from the model's Stopping token, which outlives this run (an abandoned stream is never
                // disposed); Cancel() tolerates the disposed source.
                _cts.Dispose();
                _model.ExecutionGate.Release();   // Dispose may be waiting for it, to free the backend after this pass
            }
        }

        public override async Task<RunOutcome> FinishAsync(bool stoppedEarly)
        {
            if (stoppedEarly) Cancel();
            await _producer.ConfigureAwait(false);
            if (!stoppedEarly && _tokens.Reader.Completion.IsFaulted) await _tokens.Reader.Completion.ConfigureAwait(false);
            return stoppedEarly
                ? new RunOutcome(FinishReason.Stop, _stats.PromptTokens, _reader.Consumed, CachedPromptTokens: 0, _stats.PrefillPasses)
                : new RunOutcome(_stats.FinishReason, _stats.PromptTokens, _stats.OutputTokens, CachedPromptTokens: 0, _stats.PrefillPasses);
        }

        /// <summary>Stops the generation and returns without waiting for the pass in flight, which ends on its own
        /// (its chunk or decode step) and then frees the cache and the model.</summary>
        public override ValueTask DisposeAsync()
        {
            Cancel();
            return ValueTask.CompletedTask;
        }

        void Cancel()
        {
            try { _cts.Cancel(); } catch (ObjectDisposedException) { }
        }
    }
}
