// One engine per loaded model: every caller's requests go through one queue into one loop thread that runs
// batched steps (continuous batching: sequences join and leave between any two steps). Per step:
//   drain submissions and cancellations -> Scheduler.Schedule -> IBatchedBackend.ForwardBatch -> Scheduler.Complete
//   -> sample each sequence that got logits with its own Sampler -> stream, or finish and free its blocks.
// Each sequence samples with its own seeded Sampler and the backend's rows do not depend on the batch, so
// batching never changes what a request generates. Only the loop thread touches the scheduler and block manager;
// Submit and Cancel hand work over through concurrent queues and a wake-up event.
using System.Collections.Concurrent;
using System.Diagnostics;
using SwiftKV.Engine.Generation;
using SwiftKV.Engine.Sampling;
using System.Runtime.CompilerServices;

namespace SwiftKV.Engine.Serving;

/// <summary>Continuous-batching server of one model: thread-safe <see cref="Submit"/>, streamed token ids, metrics.</summary>
public sealed class ServingEngine : IDisposable
{
    readonly IModelBackend _model;
    readonly IBatchedBackend _backend;
    readonly IPagedKvCache _kv;
    readonly Scheduler _scheduler;
    readonly int _maxSequenceLength;
    readonly ConcurrentQueue<Entry> _submitted = new();
    readonly ConcurrentQueue<Entry> _cancelled = new();
    readonly ManualResetEventSlim _wake = new(false);
    readonly Thread _loop;
    readonly object _metricsLock = new();
    readonly LatencyWindow _ttft = new(4096), _tpot = new(4096);
    ServingMetrics _metrics;
    long _nextId, _steps, _computedTokens, _outputTokens, _finished, _cancelledCount;
    volatile bool _stopping;
    int _disposed, _loopExited;

    sealed class Entry(Sequence seq, ServingRequest request, Sampler sampler, IReadOnlySet<int> stops, ILogitsConstraint? constraint)
    {
        public ILogitsConstraint? Constraint { get; } = constraint;
        public Sequence Seq { get; } = seq;
        public ServingRequest Request { get; } = request;
        public Sampler Sampler { get; } = sampler;
        public IReadOnlySet<int> Stops { get; } = stops;
        public long SubmittedAt { get; } = Stopwatch.GetTimestamp();
        public long FirstTokenAt { get; set; }
        /// <summary>This request's last mask and the words it was made in, reused by its next (StartMasks).</summary>
        public LogitMask? LastMask { get; set; }
        public uint[]? MaskWords { get; set; }
        CancellationTokenRegistration _registration;
        bool _released;

        /// <summary>
        /// Keeps the caller's token registration until the request leaves the engine. The loop may finish the request
        /// before Submit gets here: then the registration is dropped at once (it would otherwise keep the request, its
        /// sequence and the engine reachable for as long as the caller's token lives).
        /// </summary>
        public void SetRegistration(CancellationTokenRegistration r)
        {
            lock (this)
            {
                if (!_released) { _registration = r; return; }
            }
            r.Dispose();
        }

        public void ReleaseRegistration()
        {
            CancellationTokenRegistration r;
            lock (this)
            {
                _released = true;
                r = _registration;
                _registration = default;
            }
            r.Dispose();
        }
    }

    /// <summary>
    /// Starts an engine over <paramref name="backend"/>, which must implement <see cref="IBatchedBackend"/>.
    /// The engine does not own the backend; it owns the KV pool it allocates.
    /// </summary>
    public ServingEngine(IModelBackend backend, ServingOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        options ??= new ServingOptions();
        options.Validate();
        _model = backend;
        _backend = backend as IBatchedBackend ?? throw new ArgumentException(
            $"backend '{backend.Name}' ({backend.GetType().Name}) does not implement IBatchedBackend, which batched serving needs.", nameof(backend));
        if (!_backend.SupportsBatchedStep)
            throw new ArgumentException($"backend '{backend.Name}' has no batched step for this model (SupportsBatchedStep is false); serve it serially.", nameof(backend));
        int maxRunning = MaxRunningSequences = options.MaxRunningSequences ?? _backend.PreferredMaxRunningSequences;
        if (maxRunning > _backend.MaxSequencesPerStep)
            throw new ArgumentOutOfRangeException(nameof(options), maxRunning,
                $"MaxRunningSequences {maxRunning} exceeds the {_backend.MaxSequencesPerStep} sequences one batched step of backend '{backend.Name}' can hold; lower it.");
        var cfg = backend.Config;
        _maxSequenceLength = Math.Min(options.MaxSequenceLength ?? cfg.MaxPositionEmbeddings, cfg.MaxPositionEmbeddings);
        int blockSize = BlockSize = options.BlockSize ?? _backend.PreferredBlockSize(options.KvCacheDtype);
        MaxBatchTokens = options.MaxBatchTokens ?? _backend.PreferredMaxBatchTokens;
        if (blockSize < 1 || MaxBatchTokens < 1 || maxRunning < 1)
            throw new InvalidOperationException($"backend '{backend.Name}' prefers block size {blockSize}, {MaxBatchTokens} tokens per step and {maxRunning} running sequences; each must be >= 1.");
        // The largest step's workspace first, so the pool sized next does not leave that step without memory.
        _backend.ReserveStepWorkspace(MaxBatchTokens, maxRunning);
        try
        {
            (_kv, _scheduler, KvCacheBytes) = CreatePool(backend, options, blockSize, maxRunning);
        }
        catch
        {
            _backend.ReleaseStepWorkspace(MaxBatchTokens, maxRunning);   // a refused configuration must not keep its workspace reserved
            throw;
        }
        Options = options;
        _metrics = Snapshot();
        _loop = new Thread(Loop) { IsBackground = true, Name = $"SwiftKV serving ({backend.Name})" };
        _loop.Start();
    }

    /// <summary>The KV pool (from the options, or the memory the backend has left) and the scheduler over it.</summary>
    (IPagedKvCache Kv, Scheduler Scheduler, long KvCacheBytes) CreatePool(IModelBackend backend, ServingOptions options, int blockSize, int maxRunning)
    {
        long blocksPerSequence = ((long)_maxSequenceLength + blockSize - 1) / blockSize;
        long bytesPerBlock = _backend.KvBytesPerTokenOf(options.KvCacheDtype) * blockSize;
        long neededBlocks = blocksPerSequence * maxRunning;
        long kvBytes = options.NumKvBlocks is null ? options.KvCacheBytes ?? _backend.PreferredKvCacheBytes() : 0;
        // Admission keeps a reserve free: 1% of the pool unless set, none when every request's outputs are reserved.
        long ReserveOf(long blocks) => options.AdmissionReserveBlocks ?? (options.ReserveOutputBlocks ? 0 : Math.Max(1, blocks / 100));
        // The cap covers maxRunning whole sequences beside that reserve (without it, one running sequence could not
        // reach the context length whatever KvCacheBytes said).
        long capped = neededBlocks + ReserveOf(neededBlocks);
        while (capped - ReserveOf(capped) < neededBlocks) capped++;
        long numBlocks = options.NumKvBlocks ?? Math.Min(kvBytes / bytesPerBlock, capped);
        if (numBlocks > int.MaxValue)
            throw new ArgumentException($"the KV pool would have {numBlocks} blocks, more than a pool can index ({int.MaxValue}): lower KvCacheBytes or MaxRunningSequences, or raise BlockSize.", nameof(options));
        if (numBlocks < 1)
            throw new ArgumentException(options.KvCacheBytes is null
                ? $"backend '{backend.Name}' has {kvBytes} bytes left for the KV cache once its weights and step workspace are allocated, less than one KV block ({bytesPerBlock} bytes): free GPU memory (other models or processes), lower MaxBatchTokens, or set KvCacheBytes."
                : $"KvCacheBytes {options.KvCacheBytes} is less than one KV block ({bytesPerBlock} bytes); raise KvCacheBytes (or lower the block size: ServingOptions.BlockSize, the chat client's KvBlockSize).", nameof(options));
        // NumKvBlocks and BlockSize are the caller's: their product must not wrap (the pool would be tiny and overrun).
        long poolBytes = numBlocks <= long.MaxValue / bytesPerBlock ? numBlocks * bytesPerBlock
            : throw new ArgumentException($"a KV pool of {numBlocks} blocks of {bytesPerBlock} bytes is too large to address: lower NumKvBlocks or BlockSize.", nameof(options));
        // With ReserveOutputBlocks every admitted request's growth is already held back: no extra slack by default.
        int reserve = (int)ReserveOf(numBlocks);
        if (reserve >= numBlocks)
            throw new ArgumentException($"AdmissionReserveBlocks {reserve} leaves no block of the {numBlocks} to admit anything: raise KvCacheBytes (or lower AdmissionReserveBlocks).", nameof(options));

        var kv = _backend.CreatePagedKvCache((int)numBlocks, blockSize, options.KvCacheDtype);
        try
        {
            var scheduler = new Scheduler(new KvBlockManager((int)numBlocks, blockSize, options.EnablePrefixCaching),
                MaxBatchTokens, maxRunning, reserve, options.ReserveOutputBlocks);
            return (kv, scheduler, poolBytes);
        }
        catch
        {
            kv.Dispose();
            throw;
        }
    }

    public ServingOptions Options { get; }

    /// <summary>Positions per KV block: <see cref="ServingOptions.BlockSize"/>, or the backend's preference when that is null.</summary>
    public int BlockSize { get; }

    /// <summary>Most tokens per step: <see cref="ServingOptions.MaxBatchTokens"/>, or the backend's preference when that is null.</summary>
    public int MaxBatchTokens { get; }

    /// <summary>Most sequences running at once: <see cref="ServingOptions.MaxRunningSequences"/>, or the backend's preference when that is null.</summary>
    public int MaxRunningSequences { get; }

    /// <summary>Bytes of the KV pool this engine allocated (its blocks times the bytes of one block).</summary>
    public long KvCacheBytes { get; }

    /// <summary>Longest prompt + output a request may have (blocks of the whole pool minus the admission reserve included).</summary>
    public int MaxSequenceLength => (int)Math.Min(_maxSequenceLength, (long)(_scheduler.Blocks.NumBlocks - _scheduler.ReserveBlocks) * BlockSize);

    /// <summary>The latest metrics (refreshed after every step and every finished request).</summary>
    public ServingMetrics Metrics
    {
        get
        {
            lock (_metricsLock)
            {
                return _metrics with
                {
                    TimeToFirstTokenP50 = _ttft.Percentile(0.5), TimeToFirstTokenP99 = _ttft.Percentile(0.99),
                    TimePerOutputTokenP50 = _tpot.Percentile(0.5), TimePerOutputTokenP99 = _tpot.Percentile(0.99),
                };
            }
        }
    }

    /// <summary>
    /// Queues a request. Thread-safe. Generation ends on a token in <paramref name="stopTokenIds"/> (not emitted)
    /// or after <paramref name="maxTokens"/> tokens; <paramref name="ct"/> cancels it. An optional
    /// <paramref name="constraint"/> masks each of this request's logits rows before sampling (e.g. a JSON grammar).
    /// </summary>
    /// <exception cref="ArgumentException">The prompt is empty, holds an id outside the vocabulary, or prompt + maxTokens exceeds <see cref="MaxSequenceLength"/>.</exception>
    // Optimized from the first call (they run once per request or step, over its tokens and rows): as tier-0 code,
    // the first request after start paid ~7 ms more TTFT on an H100 (2000 tokens: 49-51 ms against 43; NOTES, "The
    // first request after start").
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public ServingRequest Submit(IReadOnlyList<int> promptTokens, SamplingParams sampling, int maxTokens,
        IReadOnlySet<int>? stopTokenIds = null, CancellationToken ct = default, ILogitsConstraint? constraint = null)
    {
        ArgumentNullException.ThrowIfNull(promptTokens);
        ArgumentNullException.ThrowIfNull(sampling);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxTokens);
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        if (promptTokens.Count == 0) throw new ArgumentException("the prompt is empty.", nameof(promptTokens));
        int vocab = _model.Config.VocabSize;
        var prompt = new int[promptTokens.Count];
        for (int i = 0; i < prompt.Length; i++)
        {
            prompt[i] = promptTokens[i];
            if ((uint)prompt[i] >= (uint)vocab)
                throw new ArgumentException($"token id {prompt[i]} at index {i} is outside the vocabulary [0, {vocab}).", nameof(promptTokens));
        }
        if ((long)prompt.Length + maxTokens > MaxSequenceLength)
            throw new ArgumentException(
                $"prompt of {prompt.Length} tokens plus maxTokens {maxTokens} exceeds the engine's sequence limit of {MaxSequenceLength} tokens.", nameof(maxTokens));

        long id = Interlocked.Increment(ref _nextId);
        var seq = new Sequence(id, prompt, maxTokens);
        Entry? entry = null;
        var request = new ServingRequest(id, _ => { _cancelled.Enqueue(entry!); _wake.Set(); });
        entry = new Entry(seq, request, new Sampler(sampling), stopTokenIds ?? new HashSet<int>(), constraint);
        _submitted.Enqueue(entry);
        _wake.Set();
        if (ct.CanBeCanceled) entry.SetRegistration(ct.Register(static (r, token) => ((ServingRequest)r!).CancelBy(token), request));
        // Dispose may have raced this call past the check above: if the loop has already drained its queue for the
        // last time, nobody else will complete this request, so fail what is left here.
        if (Volatile.Read(ref _loopExited) != 0) FailQueued();
        return request;
    }

    void Loop()
    {
        var live = new Dictionary<Sequence, Entry>();
        while (true)
        {
            _wake.Reset();
            if (_stopping) break;
            try
            {
                while (_submitted.TryDequeue(out var e))
                {
                    if (e.Request.IsCancellationRequested) { Drop(e, live); continue; }
                    live[e.Seq] = e;
                    _scheduler.Add(e.Seq);
                }
                while (_cancelled.TryDequeue(out var e)) Drop(e, live);

                long t0 = Stopwatch.GetTimestamp();
                var step = _scheduler.HasWork ? _scheduler.Schedule() : null;
                if (step is null || step.IsEmpty)
                {
                    Publish();
                    if (step is null) _wake.Wait();
                    else _wake.Wait(1); // nothing fits right now (should not happen with validated sizes); stay responsive
                    continue;
                }
                RunStep(step, live, t0);
                Publish();
            }
            catch (Exception ex)
            {
                // An engine bug must not hang every caller: fail what is in flight and keep serving new requests.
                foreach (var e in live.Values.ToList())
                {
                    live.Remove(e.Seq);
                    try { _scheduler.Finish(e.Seq); } catch (InvalidOperationException) { }
                    e.ReleaseRegistration();
                    e.Request.Fail(new InvalidOperationException($"the serving loop failed: {ex.Message}", ex));
                }
            }
        }

        foreach (var e in live.Values)
        {
            e.ReleaseRegistration();
            e.Request.Fail(Shutdown());
        }
        Interlocked.Exchange(ref _loopExited, 1);   // before the last drain: a later Submit sees it and drains itself
        FailQueued();
        if (_releaseOnExit)
        {
            // The Dispose that asked for this has returned: an error here has nobody to go to, and must not end the process.
            try { Release(); }
            catch (Exception ex) { Trace.TraceError($"{_loop.Name}: releasing the KV pool after a Dispose from the loop thread failed: {ex}"); }
            _stopped.TrySetResult();
        }
    }

    static ObjectDisposedException Shutdown() => new(nameof(ServingEngine), "the serving engine was disposed.");

    void FailQueued()
    {
        while (_submitted.TryDequeue(out var e))
        {
            e.ReleaseRegistration();
            e.Request.Fail(Shutdown());
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    void RunStep(ScheduledStep step, Dictionary<Sequence, Entry> live, long scheduledFrom)
    {
        long t1 = Stopwatch.GetTimestamp();
        var chunks = step.Chunks;
        // Every row's token is picked on the backend when it can (IGreedyBatchedBackend), else on the host. A sampled
        // request draws one uniform from its own generator per token, its penalties travel as the pick's bias and its
        // constraint's mask (computed on the thread pool while the step runs) as the pick's mask; both sides apply
        // RowSampling's rule, so a request's tokens do not depend on the other requests in the step (up to the GPU's
        // fp32 sums at a bucket edge).
        bool onBackend = _backend is IGreedyBatchedBackend;
        var masks = StartMasks(chunks, live);
        RowSampling[]? sampling = null;
        if (onBackend)
        {
            var picks = new RowSampling[chunks.Count];
            bool plainGreedy = true;
            for (int i = 0; i < chunks.Count; i++)
            {
                if (!chunks[i].NeedsLogits) continue;
                // Drawn once, whatever retries follow.
                picks[i] = live[chunks[i].Sequence].Sampler.NextRowSampling() with { Mask = masks?[i] };
                plainGreedy &= picks[i].Temperature == 0 && picks[i].Bias is null && picks[i].Mask is null;
            }
            if (!plainGreedy) sampling = picks;   // all plain greedy: ForwardBatchGreedy
        }
        var rows = new StepRow[chunks.Count];
        try
        {
            Forward(chunks, 0, chunks.Count, onBackend, sampling, rows, live, retried: false);
        }
        finally
        {
            // Every mask is done before its constraint is used again; a failure surfaces at its own row below. A mask
            // still running at its deadline fails its request there, and its constraint is never used again. Only the
            // completion is wanted here: WaitBits hands back the task's bits as they are (a flags copy of each, on this
            // thread, made the step 20-25% slower: docs/BENCHMARKS.md).
            if (masks is not null)
                foreach (var m in masks) m?.WaitBits();
        }
        long t2 = Stopwatch.GetTimestamp();
        _scheduler.Complete(step);   // skips the sequences that failed above (they left the scheduler)
        _steps++;
        for (int i = 0; i < chunks.Count; i++)
            if (!rows[i].Failed) _computedTokens += chunks[i].Count;

        int sampled = 0;
        var hostPicks = onBackend ? null : PickHostRows(chunks, rows, live, masks);
        for (int i = 0; i < chunks.Count; i++)
        {
            var c = chunks[i];
            if (!c.NeedsLogits || rows[i].Failed) continue;
            sampled++;
            var e = live[c.Sequence];
            if (e.Request.IsCancellationRequested) continue;
            var seq = c.Sequence;
            int token;
            bool stop;
            try
            {
                var row = rows[i];
                if (row.LogitsRow < 0)
                {
                    // Picked on the backend (argmax, or a draw with this request's uniform); -1 = no finite logit.
                    masks?[i]?.ThrowIfFailed();   // what its constraint threw, or its lateness: this request fails alone
                    int picked = row.Picked[row.PickedRow];
                    token = picked >= 0 ? picked : throw new NoFiniteLogitsException();
                    e.Sampler.Accept(token);   // its penalties count it, as Sample does on the host
                    e.Constraint?.Accept(token);
                }
                else
                {
                    var (picked, error) = hostPicks![i];
                    if (error is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(error);
                    token = picked;
                }
                stop = e.Stops.Contains(token);
            }
            catch (Exception ex)
            {
                // This sequence's logits, its constraint or its stop set (caller code) failed: it fails alone.
                Fail(e, live, ex);
                continue;
            }
            long now = Stopwatch.GetTimestamp();
            if (e.FirstTokenAt == 0)
            {
                e.FirstTokenAt = now;
                e.Request.CachedPromptTokens = Math.Max(0, seq.CachedPromptTokens);
            }
            if (stop)
            {
                Finish(e, live, FinishReason.Stop, now);
                continue;
            }
            seq.Append(token);
            _outputTokens++;
            e.Request.Emit(token);
            if (seq.OutputTokens >= seq.MaxTokens) Finish(e, live, FinishReason.Length, now);
        }
        if (Options.StepObserver is { } observe)
        {
            int decodes = 0;
            foreach (var c in chunks) if (c.Count == 1 && c.NeedsLogits) decodes++;
            long t3 = Stopwatch.GetTimestamp();
            try
            {
                observe(new ServingStepTrace(chunks.Count, step.NumTokens, decodes, sampled, onBackend ? 0 : sampled,
                    Stopwatch.GetElapsedTime(scheduledFrom, t1).TotalMilliseconds, Stopwatch.GetElapsedTime(t1, t2).TotalMilliseconds,
                    Stopwatch.GetElapsedTime(t2, t3).TotalMilliseconds));
            }
            catch (Exception ex)
            {
                // A diagnostics hook must not fail the requests it watches.
                Trace.TraceWarning($"SwiftKV serving: ServingOptions.StepObserver threw: {ex}");
            }
        }
    }

    /// <summary>
    /// Picks the step's rows on the host (a backend that cannot pick): the request's Sampler with its constraint's mask,
    /// then the constraint's Accept. Several rows run in parallel: each touches only its own request's sampler and
    /// constraint. A row's failure (caller code) is returned, not thrown, so it fails that request alone. Null when the
    /// step has no such row.
    /// </summary>
    (int Token, Exception? Error)[]? PickHostRows(IReadOnlyList<ScheduledChunk> chunks, StepRow[] rows, Dictionary<Sequence, Entry> live, LogitMask?[]? masks)
    {
        var host = new List<int>();
        for (int i = 0; i < chunks.Count; i++)
            if (chunks[i].NeedsLogits && !rows[i].Failed && rows[i].LogitsRow >= 0 && !live[chunks[i].Sequence].Request.IsCancellationRequested) host.Add(i);
        if (host.Count == 0) return null;
        int vocab = _model.Config.VocabSize;
        var picks = new (int, Exception?)[chunks.Count];
        void Pick(int i)
        {
            var e = live[chunks[i].Sequence];
            try
            {
                var row = rows[i];
                masks?[i]?.ThrowIfFailed();   // what its constraint threw, or its lateness
                int token = e.Sampler.Sample(row.Logits.AsSpan(row.LogitsRow * vocab, vocab), masks?[i]);
                e.Constraint?.Accept(token);
                picks[i] = (token, null);
            }
            catch (Exception ex)
            {
                picks[i] = (0, ex);
            }
        }
        if (host.Count == 1) Pick(host[0]);
        else Parallel.ForEach(host, Pick);
        return picks;
    }

    /// <summary>
    /// Starts the mask of each constrained request that gets logits in this step on the thread pool (LogitMask.Of), so
    /// a mask that costs a pass over the vocabulary (JSON: a few ms at 128K tokens) is computed while the backend runs
    /// the step. Null when the step has none.
    /// </summary>
    LogitMask?[]? StartMasks(IReadOnlyList<ScheduledChunk> chunks, Dictionary<Sequence, Entry> live)
    {
        LogitMask?[]? masks = null;
        for (int i = 0; i < chunks.Count; i++)
        {
            var e = live[chunks[i].Sequence];
            if (!chunks[i].NeedsLogits || e.Constraint is not { } constraint || e.Request.IsCancellationRequested) continue;
            masks ??= new LogitMask?[chunks.Count];
            // A request's masks reuse its own words (16 KB at Llama 3's vocabulary, 32 rows a step), never another
            // request's. Its last mask was read only in its own step, which has ended; if that mask is still running
            // (late: its request failed) it keeps its words and this one gets new ones.
            int vocab = _model.Config.VocabSize;
            if (e.MaskWords is null || e.LastMask is { IsCompleted: false })
                e.MaskWords = new uint[SwiftKV.Cuda.Kernels.SamplingKernel.MaskWords(vocab)];
            masks[i] = e.LastMask = LogitMask.Of(constraint, vocab, Options.ConstraintTimeout, e.MaskWords);
        }
        return masks;
    }

    /// <summary>
    /// Where a chunk's logits row landed: a row of logits on the host (<see cref="LogitsRow"/> >= 0), or an id picked on
    /// the backend (<see cref="Picked"/>[<see cref="PickedRow"/>]).
    /// </summary>
    readonly record struct StepRow(float[] Logits, int LogitsRow, int[] Picked, int PickedRow, bool Failed = false);

    /// <summary>
    /// Runs chunks [lo, hi) as one batched step and records each logits row's place in <paramref name="rows"/>. When
    /// the step throws (out of memory while growing a workspace, for one), the two halves run on their own: the
    /// sequences are independent, and a step rewrites the K/V of its positions, so a part that succeeds is exactly
    /// its share of the step. A single chunk is tried twice; if it fails again, only its request fails.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    void Forward(IReadOnlyList<ScheduledChunk> chunks, int lo, int hi, bool onBackend, RowSampling[]? sampling,
        StepRow[] rows, Dictionary<Sequence, Entry> live, bool retried)
    {
        var batch = new BatchSequence[hi - lo];
        var picks = new List<RowSampling>();
        for (int i = lo; i < hi; i++)
        {
            var c = chunks[i];
            batch[i - lo] = new BatchSequence(c.Sequence.TokenMemory(c.Start, c.Count), c.Start, c.Sequence.Blocks.Blocks, c.NeedsLogits);
            if (sampling is not null && c.NeedsLogits) picks.Add(sampling[i]);
        }
        try
        {
            float[] logits = [];
            int[] picked = [];
            var greedy = _backend as IGreedyBatchedBackend;
            if (onBackend && sampling is not null) picked = greedy!.ForwardBatchSample(_kv, batch, picks.ToArray());
            else if (onBackend) picked = greedy!.ForwardBatchGreedy(_kv, batch);
            else logits = _backend.ForwardBatch(_kv, batch);
            for (int i = lo, r = 0; i < hi; i++)
            {
                if (!chunks[i].NeedsLogits) continue;
                rows[i] = onBackend ? new StepRow([], -1, picked, r++) : new StepRow(logits, r++, [], -1);
            }
        }
        catch (Exception ex)
        {
            if (hi - lo > 1 || !retried)
            {
                Trace.TraceWarning($"SwiftKV serving: a batched step of {hi - lo} sequence(s) failed ({ex.Message}); running it {(hi - lo > 1 ? "in two halves" : "again")}.");
                int mid = hi - lo > 1 ? (lo + hi) / 2 : hi;
                Forward(chunks, lo, mid, onBackend, sampling, rows, live, retried: hi - lo == 1);
                if (mid < hi) Forward(chunks, mid, hi, onBackend, sampling, rows, live, retried: false);
                return;
            }
            rows[lo] = new StepRow([], -1, [], 0, Failed: true);
            Fail(live[chunks[lo].Sequence], live, new InvalidOperationException($"the batched forward step failed: {ex.Message}", ex));
        }
    }

    void Finish(Entry e, Dictionary<Sequence, Entry> live, FinishReason reason, long now)
    {
        var seq = e.Seq;
        Leave(e, live);
        var ttft = Stopwatch.GetElapsedTime(e.SubmittedAt, e.FirstTokenAt);
        var tpot = seq.OutputTokens > 1 ? Stopwatch.GetElapsedTime(e.FirstTokenAt, now) / (seq.OutputTokens - 1) : TimeSpan.Zero;
        lock (_metricsLock)
        {
            _ttft.Add(ttft);
            if (seq.OutputTokens > 1) _tpot.Add(tpot);
        }
        _finished++;
        Publish();
        e.Request.Succeed(new RequestOutcome(reason, seq.PromptLength, seq.OutputTokens, Math.Max(0, seq.CachedPromptTokens),
            seq.Preemptions, ttft, tpot));
    }

    /// <summary>A request leaves the engine: out of the live set and the scheduler (its blocks freed), its token released.</summary>
    void Leave(Entry e, Dictionary<Sequence, Entry> live)
    {
        live.Remove(e.Seq);
        _scheduler.Finish(e.Seq);
        e.ReleaseRegistration();
    }

    void Fail(Entry e, Dictionary<Sequence, Entry> live, Exception cause)
    {
        Leave(e, live);
        Publish();
        string where = $"the request failed at token {e.Seq.OutputTokens + 1}";
        e.Request.Fail(cause is NoFiniteLogitsException ? new NoFiniteLogitsException(where) : new InvalidOperationException($"{where}: {cause.Message}", cause));
    }

    void Drop(Entry e, Dictionary<Sequence, Entry> live)
    {
        if (e.Seq.Status == SequenceStatus.Finished) return;
        if (e.Request.IsStoppedByCaller && e.FirstTokenAt != 0)
        {
            Finish(e, live, FinishReason.Stop, Stopwatch.GetTimestamp());
            return;
        }
        Leave(e, live);
        _cancelledCount++;
        Publish();
        e.Request.Cancelled();
    }

    void Publish()
    {
        var m = Snapshot();
        lock (_metricsLock) _metrics = m;
    }

    ServingMetrics Snapshot()
    {
        var b = _scheduler.Blocks;
        return new ServingMetrics
        {
            QueueLength = _scheduler.WaitingCount + _submitted.Count,
            RunningSequences = _scheduler.RunningCount,
            KvBlocksTotal = b.NumBlocks,
            KvBlocksUsed = b.UsedBlocks,
            KvBlocksFree = b.FreeBlocks,
            KvBlocksCached = b.CachedFreeBlocks,
            KvBytesPerBlock = _kv.BytesPerBlock,
            PrefixCacheQueriedTokens = b.QueriedTokens,
            PrefixCacheHitTokens = b.HitTokens,
            PrefixCacheEvictions = b.Evictions,
            Preemptions = _scheduler.Preemptions,
            Steps = _steps,
            ComputedTokens = _computedTokens,
            OutputTokens = _outputTokens,
            FinishedRequests = _finished,
            CancelledRequests = _cancelledCount,
        };
    }

    /// <summary>Stops the loop after its current step; requests still in flight fail with <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _stopping = true;
        if (Thread.CurrentThread == _loop)
        {
            // Called from the loop itself (a step observer, a constraint, a stop set): joining would wait forever. The
            // loop stops after this step, fails what is in flight and releases the pool on its way out.
            _releaseOnExit = true;
            return;
        }
        _wake.Set();
        _loop.Join();
        try
        {
            Release();
        }
        finally
        {
            _stopped.TrySetResult();
        }
    }

    bool _releaseOnExit;
    readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Whether the calling thread is the engine's loop (a step observer, a constraint, a stop set run there).</summary>
    public bool IsLoopThread => Thread.CurrentThread == _loop;

    /// <summary>
    /// Completes once the loop has exited after <see cref="Dispose"/>, with the pool released: what a backend's owner
    /// waits for before freeing the weights when Dispose came from the loop thread and so returned before the step did.
    /// </summary>
    public Task Stopped => _stopped.Task;

    /// <summary>The pool, the step workspace and the wake event, once the loop has exited.</summary>
    void Release()
    {
        try
        {
            _kv.Dispose();
        }
        finally
        {
            try
            {
                _backend.ReleaseStepWorkspace(MaxBatchTokens, MaxRunningSequences);
            }
            finally
            {
                _wake.Dispose();
            }
        }
    }
}
