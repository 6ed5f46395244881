// Many concurrent IChatClient calls on one model share its serving engine: mixed streaming and non-streaming,
// greedy and seeded, 10% cancelled mid-stream. No exception, no hang, every finished answer equals its solo run,
// and the KV pool is back to no blocks in use afterwards.
using Microsoft.Extensions.AI;
using SwiftKV.Engine;
using Xunit;

namespace SwiftKV.AI.Tests;

public sealed class ChatClientLoadTests(TinyChatModel tiny)
{
    [Fact]
    public async Task MixedConcurrentCalls_MatchSoloRuns_AndFreeAllBlocks()
    {
        var ct = TestContext.Current.CancellationToken;
        // Its own model (same checkpoint), so other tests' requests never show in this engine's counters.
        using var model = LocalModel.Load(tiny.Directory, BackendKind.Cpu, swiftKv: true);
        using var client = new SwiftKvChatClient(model, new SwiftKvOptions { ModelPath = tiny.Directory, ContextLength = 2048 },
            ownsModel: false, today: () => new DateOnly(2026, 11, 26));
        const int Requests = 120;
        static List<ChatMessage> Prompt(int i) =>
            [new(ChatRole.User, i % 3 == 0 ? $"Short question {i % 2}?" : $"A longer question number {i % 3} about logistics, warehouses, trucks and parcels, with details.")];
        static ChatOptions Options(int i) => i % 2 == 0
            ? new ChatOptions { MaxOutputTokens = 3 + i % 3 }
            : new ChatOptions { MaxOutputTokens = 3 + i % 3, Temperature = 0.8f, Seed = i % 5 };
        static (int, int, int) Key(int i) => (i % 3 == 0 ? i % 2 : 100 + i % 3, i % 2 == 0 ? -1 : i % 5, i % 3);

        // Solo answers, one at a time (distinct prompt/options pairs only).
        var solo = new Dictionary<(int, int, int), string>();
        for (int i = 0; i < Requests; i++)
        {
            var key = Key(i);
            if (!solo.ContainsKey(key)) solo[key] = (await client.GetResponseAsync(Prompt(i), Options(i), ct)).Text;
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(120));
        int cancelled = 0;
        var tasks = Enumerable.Range(0, Requests).Select(i => Task.Run(async () =>
        {
            var key = Key(i);
            if (i % 10 == 7)
            {
                using var cts = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token);
                try
                {
                    await foreach (var _ in client.GetStreamingResponseAsync(Prompt(i), Options(i), cts.Token)) cts.Cancel();
                }
                catch (OperationCanceledException) { Interlocked.Increment(ref cancelled); }
                return;
            }
            string text = i % 4 < 2
                ? (await client.GetResponseAsync(Prompt(i), Options(i), timeout.Token)).Text
                : (await client.GetStreamingResponseAsync(Prompt(i), Options(i), timeout.Token).ToChatResponseAsync(timeout.Token)).Text;
            Assert.Equal(solo[key], text);
        }, timeout.Token)).ToArray();
        await Task.WhenAll(tasks);

        Assert.True(cancelled > 0);
        var engine = model.Serving!;
        // Cancelled requests free their blocks before the engine's next step: wait for it to go idle.
        for (int spin = 0; spin < 200 && (engine.Metrics.KvBlocksUsed > 0 || engine.Metrics.RunningSequences > 0); spin++)
            await Task.Delay(10, ct);
        Assert.Equal(0, engine.Metrics.KvBlocksUsed);
        Assert.Equal(0, engine.Metrics.RunningSequences);
        Assert.Equal(0, engine.Metrics.QueueLength);
    }
}
