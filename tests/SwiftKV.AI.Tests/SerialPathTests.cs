// The one-request-at-a-time path (a backend without a batched step: pre-Ampere GPUs, head sizes the batched kernels
// do not take, or a model loaded without its serving engine): the model's lock is released when generation ends,
// not when a reader lets go, and a cancelled call returns at once with the caller's token while the pass in flight
// finishes on its own (GeneratorTests checks that the prefill stops between chunks).
using System.Diagnostics;
using Microsoft.Extensions.AI;
using SwiftKV.Engine;
using SwiftKV.Model;
using Xunit;

namespace SwiftKV.AI.Tests;

public sealed class SerialPathTests(TinyChatModel tiny)
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    SwiftKvChatClient SerialClient(out LocalModel model)
    {
        model = LocalModel.Load(tiny.Directory, BackendKind.Cpu, swiftKv: true, startServing: false);
        Assert.Null(model.Serving);
        return new SwiftKvChatClient(model, new SwiftKvOptions { ModelPath = tiny.Directory, ContextLength = 2048, DefaultMaxOutputTokens = 8 },
            ownsModel: true, today: () => new DateOnly(2026, 11, 26));
    }

    [Fact]
    public async Task AbandonedStream_DoesNotHoldTheModel()
    {
        using var client = SerialClient(out var model);
        // Read one update and walk away without disposing the enumerator (a bug in a caller, or a lost reference).
        var abandoned = client.GetStreamingResponseAsync("Tell me a story", new ChatOptions { MaxOutputTokens = 6 }, Ct).GetAsyncEnumerator(Ct);
        Assert.True(await abandoned.MoveNextAsync());

        var next = client.GetResponseAsync("Hi", new ChatOptions { MaxOutputTokens = 3 }, Ct);
        var r = await next.WaitAsync(TimeSpan.FromSeconds(60), Ct);   // it used to wait for the abandoned enumerator forever
        Assert.NotNull(r.Usage);
        Assert.Equal(1, model.ExecutionGate.CurrentCount);
        await abandoned.DisposeAsync();
        Assert.Equal(1, model.ExecutionGate.CurrentCount);
    }

    [Fact]
    public async Task SlowReader_DoesNotDelayTheNextRequest()
    {
        using var client = SerialClient(out _);
        using var reading = new SemaphoreSlim(0);
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var slow = Task.Run(async () =>
        {
            await foreach (var _ in client.GetStreamingResponseAsync("Tell me", new ChatOptions { MaxOutputTokens = 4 }, Ct))
            {
                started.TrySetResult();        // the slow request has the model and its first token is out
                await reading.WaitAsync(Ct);   // holds every update until the other request is answered
            }
        }, Ct);
        await started.Task.WaitAsync(TimeSpan.FromSeconds(60), Ct);

        var r = await client.GetResponseAsync("Hi", new ChatOptions { MaxOutputTokens = 2 }, Ct).WaitAsync(TimeSpan.FromSeconds(60), Ct);
        Assert.NotNull(r.Usage);
        reading.Release(100);
        await slow.WaitAsync(TimeSpan.FromSeconds(60), Ct);
    }

    [Fact]
    public async Task CancelledLongPrompt_ThrowsWithTheCallersToken_AndFreesTheModel()
    {
        using var client = SerialClient(out var model);
        string longPrompt = string.Join(" ", Enumerable.Range(0, 400).Select(i => $"word{i}"));
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        cts.CancelAfter(TimeSpan.FromMilliseconds(50));

        var e = await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            client.GetResponseAsync(longPrompt, new ChatOptions { MaxOutputTokens = 100_000 }, cts.Token));   // runs to the context's end unless cancelled
        Assert.Equal(cts.Token, e.CancellationToken);
        // The pass in flight may still hold the model for a moment; the next request gets it once that pass ends.
        var next = await client.GetResponseAsync("Hi", new ChatOptions { MaxOutputTokens = 2 }, Ct).WaitAsync(TimeSpan.FromSeconds(60), Ct);
        Assert.NotNull(next.Usage);
    }

    /// <summary>A forward pass that takes <c>delay</c>, as a long prefill on a slow device does; records whether it
    /// was disposed while a pass ran.</summary>
    sealed class SlowBackend(IModelBackend inner, TimeSpan delay) : IModelBackend
    {
        int _inPass;
        public bool DisposedDuringAPass { get; private set; }
        public bool Disposed { get; private set; }
        public string Name => "slow";
        public LlamaConfig Config => inner.Config;
        public bool SwiftKvEnabled => inner.SwiftKvEnabled;
        public ISequenceCache CreateCache(int capacity) => inner.CreateCache(capacity);
        public float[] Forward(ISequenceCache cache, ReadOnlySpan<int> tokens, LogitsSelection selection)
        {
            Interlocked.Increment(ref _inPass);
            try
            {
                Thread.Sleep(delay);
                return inner.Forward(cache, tokens, selection);
            }
            finally { Interlocked.Decrement(ref _inPass); }
        }
        public void Dispose()
        {
            DisposedDuringAPass |= Volatile.Read(ref _inPass) > 0;
            Disposed = true;
        }
    }

    /// <summary>
    /// Disposing the model while a request's pass runs waits for that pass, then frees the backend: the request ends
    /// with ObjectDisposedException, and a request still waiting for the model gets one too instead of hanging.
    /// </summary>
    [Fact]
    public async Task DisposeDuringAPass_WaitsForIt_AndFailsTheRequestsCleanly()
    {
        var slow = new SlowBackend(tiny.Model.Backend, TimeSpan.FromSeconds(2));
        var model = new LocalModel { Path = tiny.Directory, Config = tiny.Model.Config, Tokenizer = tiny.Model.Tokenizer, Backend = slow, BackendReason = "slow" };
        var client = new SwiftKvChatClient(model, new SwiftKvOptions { ModelPath = tiny.Directory, DefaultMaxOutputTokens = 4 }, ownsModel: true);
        var running = client.GetResponseAsync("Hello", cancellationToken: Ct);
        await Task.Delay(300, Ct);
        var waiting = client.GetResponseAsync("Hi", cancellationToken: Ct);
        await Task.Delay(100, Ct);

        var first = Task.Run(client.Dispose, Ct);
        await Task.Delay(100, Ct);
        model.Dispose();   // a second, concurrent Dispose returns only once the first has freed the backend

        Assert.True(slow.Disposed);
        await first;
        Assert.False(slow.DisposedDuringAPass, "the backend was freed under a running pass");
        await Assert.ThrowsAsync<ObjectDisposedException>(() => running.WaitAsync(TimeSpan.FromSeconds(30), Ct));
        await Assert.ThrowsAsync<ObjectDisposedException>(() => waiting.WaitAsync(TimeSpan.FromSeconds(30), Ct));
    }

    [Fact]
    public async Task CancelledDuringAPass_ReturnsAtOnce_AndTheModelIsFreeWhenThePassEnds()
    {
        var slow = new SlowBackend(tiny.Model.Backend, TimeSpan.FromSeconds(8));
        var model = new LocalModel { Path = tiny.Directory, Config = tiny.Model.Config, Tokenizer = tiny.Model.Tokenizer, Backend = slow, BackendReason = "slow" };
        using var client = new SwiftKvChatClient(model, new SwiftKvOptions { ModelPath = tiny.Directory, DefaultMaxOutputTokens = 4 }, ownsModel: false);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        cts.CancelAfter(TimeSpan.FromMilliseconds(200));

        var clock = Stopwatch.StartNew();
        var e = await Assert.ThrowsAnyAsync<OperationCanceledException>(() => client.GetResponseAsync("Hello", cancellationToken: cts.Token));
        Assert.Equal(cts.Token, e.CancellationToken);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"the cancelled call took {clock.Elapsed.TotalSeconds:F1} s, inside an 8 s pass");

        // The pass in flight ends on its own; then the model takes the next request.
        Assert.True(await model.ExecutionGate.WaitAsync(TimeSpan.FromSeconds(30), Ct), "the model was not released after the pass");
        model.ExecutionGate.Release();
    }

    /// <summary>
    /// With SwiftKV, every pass's last row runs the later layers: a prompt prefilled in several passes (512 tokens each
    /// on the CPU) skips them for all its tokens but one per pass, and the usage says so.
    /// </summary>
    [Fact]
    public async Task SkippedPromptTokens_CountOneRowPerPrefillPass()
    {
        using var client = SerialClient(out _);
        string prompt = string.Join(" ", Enumerable.Range(0, 700).Select(i => $"w{i}"));
        var r = await client.GetResponseAsync(prompt, new ChatOptions { MaxOutputTokens = 1 }, Ct);
        int input = (int)r.Usage!.InputTokenCount!.Value;
        Assert.True(input > 1024 && input <= 1536, $"the prompt should take three passes of 512, got {input} tokens");
        Assert.Equal(input - 3, r.Usage.AdditionalCounts![SwiftKvChatClient.PromptTokensSkippedBySwiftKv]);
    }

    /// <summary>A caller cancelled while it waits for the model gets its own token in the exception, as everywhere.</summary>
    [Fact]
    public async Task CancelledWhileWaitingForTheModel_NamesTheCallersToken()
    {
        var slow = new SlowBackend(tiny.Model.Backend, TimeSpan.FromSeconds(2));
        var model = new LocalModel { Path = tiny.Directory, Config = tiny.Model.Config, Tokenizer = tiny.Model.Tokenizer, Backend = slow, BackendReason = "slow" };
        using var client = new SwiftKvChatClient(model, new SwiftKvOptions { ModelPath = tiny.Directory, DefaultMaxOutputTokens = 1 }, ownsModel: false);
        var running = client.GetResponseAsync("Hello", cancellationToken: Ct);
        await Task.Delay(200, Ct);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        cts.CancelAfter(TimeSpan.FromMilliseconds(300));

        var e = await Assert.ThrowsAnyAsync<OperationCanceledException>(() => client.GetResponseAsync("Hi", cancellationToken: cts.Token));
        Assert.Equal(cts.Token, e.CancellationToken);
        Assert.NotNull((await running.WaitAsync(TimeSpan.FromSeconds(30), Ct)).Usage);
    }
}
