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
        var slow = Task.Run(async () =>
        {
            await foreach (var _ in client.GetStreamingResponseAsync("Tell me", new ChatOptions { MaxOutputTokens = 4 }, Ct))
                await reading.WaitAsync(Ct);   // holds every update until the other request is answered
        }, Ct);
        await Task.Delay(200, Ct);

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
        Assert.Equal(1, model.ExecutionGate.CurrentCount);
        Assert.NotNull((await client.GetResponseAsync("Hi", new ChatOptions { MaxOutputTokens = 2 }, Ct)).Usage);
    }

    /// <summary>A forward pass that takes <c>delay</c>, as a long prefill on a slow device does.</summary>
    sealed class SlowBackend(IModelBackend inner, TimeSpan delay) : IModelBackend
    {
        public string Name => "slow";
        public LlamaConfig Config => inner.Config;
        public bool SwiftKvEnabled => inner.SwiftKvEnabled;
        public ISequenceCache CreateCache(int capacity) => inner.CreateCache(capacity);
        public float[] Forward(ISequenceCache cache, ReadOnlySpan<int> tokens, LogitsSelection selection)
        {
            Thread.Sleep(delay);
            return inner.Forward(cache, tokens, selection);
        }
        public void Dispose() { }
    }

    [Fact]
    public async Task CancelledDuringAPass_ReturnsAtOnce_AndTheModelIsFreeWhenThePassEnds()
    {
        var slow = new SlowBackend(tiny.Model.Backend, TimeSpan.FromSeconds(3));
        var model = new LocalModel { Path = tiny.Directory, Config = tiny.Model.Config, Tokenizer = tiny.Model.Tokenizer, Backend = slow, BackendReason = "slow" };
        using var client = new SwiftKvChatClient(model, new SwiftKvOptions { ModelPath = tiny.Directory, DefaultMaxOutputTokens = 4 }, ownsModel: false);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        cts.CancelAfter(TimeSpan.FromMilliseconds(200));

        var clock = Stopwatch.StartNew();
        var e = await Assert.ThrowsAnyAsync<OperationCanceledException>(() => client.GetResponseAsync("Hello", cancellationToken: cts.Token));
        Assert.Equal(cts.Token, e.CancellationToken);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2), $"the cancelled call took {clock.Elapsed.TotalSeconds:F1} s, inside a 3 s pass");

        // The pass in flight ends on its own; then the model takes the next request.
        Assert.True(await model.ExecutionGate.WaitAsync(TimeSpan.FromSeconds(30), Ct), "the model was not released after the pass");
        model.ExecutionGate.Release();
    }
}
