// The "SwiftKV.AI" meter, read with a MeterListener as an OpenTelemetry exporter would: latency histograms, token
// counters (including SwiftKV's skipped prompt tokens) and KV cache bytes that return to zero after the request.
using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Microsoft.Extensions.AI;
using SwiftKV.Engine;
using Xunit;

namespace SwiftKV.AI.Tests;

public sealed class MetricsTests(TinyChatModel tiny)
{
    /// <summary>
    /// The KV-pool gauge observes every loaded model, but must not keep one alive: a client that loaded its own model,
    /// served a request and was disposed lets the model (weights, KV pool) be collected with no metrics listener
    /// ever reading the gauge (it used to hold every model in a static dictionary, ~290 MB per load).
    /// </summary>
    [Fact]
    public async Task DisposedClient_ModelIsCollected_WithoutAGaugeRead()
    {
        var weak = await LoadServeDispose(tiny.Directory);
        for (int i = 0; i < 50 && weak.IsAlive; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            await Task.Delay(20, TestContext.Current.CancellationToken);   // the engine's loop thread exits after Dispose
        }
        Assert.False(weak.IsAlive, "the disposed client's model is still reachable");
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    static async Task<WeakReference> LoadServeDispose(string dir)
    {
        using var client = new SwiftKvChatClient(new SwiftKvOptions { ModelPath = dir, Backend = BackendKind.Cpu, ContextLength = 256, DefaultMaxOutputTokens = 2 });
        await client.GetResponseAsync("Hello", cancellationToken: TestContext.Current.CancellationToken);
        return new WeakReference(client.Model);
    }

    /// <summary>
    /// An answer cut by a stop sequence is a finished request in the engine's metrics (its latencies recorded), not a
    /// cancelled one: the client sees the stop text, tells the engine, and the engine frees the blocks.
    /// </summary>
    [Fact]
    public async Task StopSequence_CountsAsFinished_NotCancelled()
    {
        var ct = TestContext.Current.CancellationToken;
        using var client = new SwiftKvChatClient(new SwiftKvOptions { ModelPath = tiny.Directory, Backend = BackendKind.Cpu, ContextLength = 256, DefaultMaxOutputTokens = 24 });
        var engine = client.Model.Serving!;
        string full = (await client.GetResponseAsync("Hello", cancellationToken: ct)).Text;
        Assert.True(full.Length > 8, $"the greedy answer is too short to cut: '{full}'");
        string stop = full.Substring(full.Length / 2, 3);
        var before = engine.Metrics;

        var cut = await client.GetResponseAsync("Hello", new ChatOptions { StopSequences = [stop] }, ct);

        Assert.Equal(ChatFinishReason.Stop, cut.FinishReason);
        Assert.Equal(full[..full.IndexOf(stop, StringComparison.Ordinal)], cut.Text);
        for (int i = 0; i < 200 && engine.Metrics.FinishedRequests == before.FinishedRequests; i++) await Task.Delay(10, ct);
        var after = engine.Metrics;
        Assert.Equal(before.FinishedRequests + 1, after.FinishedRequests);
        Assert.Equal(before.CancelledRequests, after.CancelledRequests);
        Assert.Equal(0, after.RunningSequences);
    }

    /// <summary>The latency histograms carry sub-second bucket edges (the default edges start at 5 s for seconds).</summary>
    [Fact]
    public void LatencyHistograms_AdviseSubSecondBuckets()
    {
        using var client = tiny.Client();
        var found = new ConcurrentDictionary<string, IReadOnlyList<double>>();
        using var listener = new MeterListener
        {
            InstrumentPublished = (instrument, _) =>
            {
                if (instrument.Meter.Name == SwiftKvMetrics.MeterName && instrument is Histogram<double> h && h.Advice?.HistogramBucketBoundaries is { } b)
                    found[instrument.Name] = b;
            },
        };
        listener.Start();
        Assert.Contains(0.1, found[SwiftKvMetrics.TimeToFirstToken]);
        Assert.Contains(0.05, found[SwiftKvMetrics.TimePerOutputToken]);
    }

    [Fact]
    public async Task Request_RecordsLatencyTokensAndKvCache()
    {
        using var client = tiny.Client();
        string modelId = client.GetService<ChatClientMetadata>()!.DefaultModelId!;
        var seen = new ConcurrentQueue<(string Name, double Value, string? Model, string? TokenType)>();
        using var listener = new MeterListener
        {
            InstrumentPublished = (instrument, l) => { if (instrument.Meter.Name == SwiftKvMetrics.MeterName) l.EnableMeasurementEvents(instrument); },
        };
        void Record(Instrument i, double v, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            string? model = null, type = null;
            foreach (var t in tags)
            {
                if (t.Key == "gen_ai.request.model") model = t.Value as string;
                if (t.Key == "gen_ai.token.type") type = t.Value as string;
            }
            // The shared meter may also see other tests' clients: keep only this model's... and this test's calls.
            seen.Enqueue((i.Name, v, model, type));
        }
        listener.SetMeasurementEventCallback<double>((i, v, tags, _) => Record(i, v, tags));
        listener.SetMeasurementEventCallback<long>((i, v, tags, _) => Record(i, v, tags));
        listener.Start();

        ChatResponse? r = null;
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync("Hello there", new ChatOptions { MaxOutputTokens = 6 }, TestContext.Current.CancellationToken))
        {
            // While the request holds blocks, the pool gauge reads them.
            if (updates.Count == 0) listener.RecordObservableInstruments();
            updates.Add(u);
        }
        r = updates.ToChatResponse();
        listener.Dispose();

        // Other tests run in parallel on clients of the same model id, so look for this request's exact values.
        var mine = seen.Where(m => m.Model == modelId).ToList();
        Assert.Contains(mine, m => m.Name == SwiftKvMetrics.TimeToFirstToken && m.Value > 0);
        Assert.Contains(mine, m => m.Name == SwiftKvMetrics.TimePerOutputToken && m.Value > 0);
        Assert.Contains(mine, m => m.Name == SwiftKvMetrics.PromptTokens && m.Value == r.Usage!.InputTokenCount);
        Assert.Contains(mine, m => m.Name == SwiftKvMetrics.CompletionTokens && m.Value == 6);
        long cached = r.Usage!.AdditionalCounts![SwiftKvChatClient.PromptTokensFromPrefixCache];
        Assert.Contains(mine, m => m.Name == SwiftKvMetrics.PromptTokensSkipped && m.Value == r.Usage!.InputTokenCount - cached - 1);
        Assert.Contains(mine, m => m.Name == SwiftKvMetrics.TokenUsage && m.TokenType == "input" && m.Value == r.Usage!.InputTokenCount);
        Assert.Contains(mine, m => m.Name == SwiftKvMetrics.TokenUsage && m.TokenType == "output" && m.Value == 6);
        // The CPU backend serves through the engine: KV use is the pool gauge, in whole blocks.
        Assert.Contains(seen, m => m.Name == SwiftKvMetrics.KvPoolBytes && m.Value > 0);
    }
}
