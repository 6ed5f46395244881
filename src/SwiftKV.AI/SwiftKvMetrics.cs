// The client's metrics on a System.Diagnostics.Metrics Meter named "SwiftKV.AI", so OpenTelemetry
// (.AddMeter("SwiftKV.AI")), dotnet-counters or a MeterListener can read them. Latency histograms use the
// OpenTelemetry GenAI semantic-convention names and units (seconds); token counters carry the same tags.
// NOTE: time to first token is measured from the call's start, so it includes waiting for the model — what a
// user feels — not only the prefill.
using System.Diagnostics.Metrics;

namespace SwiftKV.AI;

/// <summary>Instrument names of the "SwiftKV.AI" meter.</summary>
public static class SwiftKvMetrics
{
    public const string MeterName = "SwiftKV.AI";

    /// <summary>Histogram, seconds: call start to first generated token.</summary>
    public const string TimeToFirstToken = "gen_ai.server.time_to_first_token";
    /// <summary>Histogram, seconds: mean time per output token after the first.</summary>
    public const string TimePerOutputToken = "gen_ai.server.time_per_output_token";
    /// <summary>Histogram, tokens, tagged gen_ai.token.type = input | output (the GenAI convention).</summary>
    public const string TokenUsage = "gen_ai.client.token.usage";
    /// <summary>Counter, tokens: prompt tokens processed.</summary>
    public const string PromptTokens = "swiftkv.tokens.prompt";
    /// <summary>Counter, tokens: tokens generated.</summary>
    public const string CompletionTokens = "swiftkv.tokens.completion";
    /// <summary>Counter, tokens: prompt tokens that skipped the later layers thanks to SwiftKV.</summary>
    public const string PromptTokensSkipped = "swiftkv.tokens.prompt_skipped";
    /// <summary>Up-down counter, bytes: KV cache memory held by requests in flight.</summary>
    public const string KvCacheBytes = "swiftkv.kv_cache.usage";
    /// <summary>Observable gauge: bytes of the serving engine's paged KV pool in use, per loaded model.</summary>
    public const string KvPoolBytes = "swiftkv.kv_cache.pool_usage";
}

/// <summary>
/// One gauge over every loaded model's serving engine (blocks in use x bytes per block).
/// NOTE: a single process-wide instrument, not one per client, so creating clients does not grow the meter.
/// </summary>
internal static class KvPoolGauge
{
    // Weak keys: the gauge must not keep a model (its weights, its KV pool) alive after its clients are gone; a
    // dictionary held every model loaded in the process until a metrics listener happened to read the gauge.
    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<SwiftKV.Engine.LocalModel, object> s_models = new();

    static KvPoolGauge() =>
        SwiftKvInstruments.SharedMeter.CreateObservableGauge(SwiftKvMetrics.KvPoolBytes, Observe, "By",
            "KV cache bytes in use in the serving engine's block pool");

    static readonly object s_tracked = new();

    /// <summary>Called by every client of a model; a model is observed until it is disposed or collected.</summary>
    public static void Track(SwiftKV.Engine.LocalModel model)
    {
        if (model.Serving is not null) s_models.TryAdd(model, s_tracked);
    }

    static IEnumerable<Measurement<long>> Observe()
    {
        foreach (var (model, _) in s_models)
        {
            if (model.IsDisposed)
            {
                s_models.Remove(model);
                continue;
            }
            if (model.Serving is not { } engine) continue;
            var m = engine.Metrics;
            yield return new Measurement<long>(m.KvBlocksUsed * m.KvBytesPerBlock,
                new KeyValuePair<string, object?>("swiftkv.model.path", model.Path));
        }
    }
}

/// <summary>The instruments one client records to.</summary>
internal sealed class SwiftKvInstruments
{
    internal static readonly Meter SharedMeter = new(SwiftKvMetrics.MeterName);

    readonly Histogram<double> _ttft;
    readonly Histogram<double> _tpot;
    readonly Histogram<long> _usage;
    readonly Counter<long> _prompt;
    readonly Counter<long> _completion;
    readonly Counter<long> _skipped;
    readonly UpDownCounter<long> _kvBytes;
    readonly KeyValuePair<string, object?>[] _tags;

    public SwiftKvInstruments(IMeterFactory? factory, string modelId)
    {
        var meter = factory?.Create(SwiftKvMetrics.MeterName) ?? SharedMeter;
        // Bucket edges as the OpenTelemetry GenAI conventions advise: the default edges (0, 5, 10, ... 10000) put every
        // latency under 5 s in one bucket.
        _ttft = meter.CreateHistogram(SwiftKvMetrics.TimeToFirstToken, "s", "Time to first token", tags: null,
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0] });
        _tpot = meter.CreateHistogram(SwiftKvMetrics.TimePerOutputToken, "s", "Time per output token after the first", tags: null,
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5] });
        _usage = meter.CreateHistogram(SwiftKvMetrics.TokenUsage, "{token}", "Tokens per request", tags: null,
            advice: new InstrumentAdvice<long> { HistogramBucketBoundaries = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864] });
        _prompt = meter.CreateCounter<long>(SwiftKvMetrics.PromptTokens, "{token}", "Prompt tokens");
        _completion = meter.CreateCounter<long>(SwiftKvMetrics.CompletionTokens, "{token}", "Generated tokens");
        _skipped = meter.CreateCounter<long>(SwiftKvMetrics.PromptTokensSkipped, "{token}", "Prompt tokens that skipped layers l..L-1 (SwiftKV)");
        _kvBytes = meter.CreateUpDownCounter<long>(SwiftKvMetrics.KvCacheBytes, "By", "KV cache bytes held by requests in flight on backends without a serving engine");
        _tags =
        [
            new("gen_ai.operation.name", "chat"),
            new("gen_ai.provider.name", "swiftkv"),
            new("gen_ai.request.model", modelId),
        ];
    }

    public void FirstToken(TimeSpan sinceStart) => _ttft.Record(sinceStart.TotalSeconds, _tags);

    public void Completed(int promptTokens, int outputTokens, int skipped, TimeSpan firstToLast)
    {
        _prompt.Add(promptTokens, _tags);
        _completion.Add(outputTokens, _tags);
        _skipped.Add(skipped, _tags);
        _usage.Record(promptTokens, [.. _tags, new("gen_ai.token.type", "input")]);
        _usage.Record(outputTokens, [.. _tags, new("gen_ai.token.type", "output")]);
        if (outputTokens > 1) _tpot.Record(firstToLast.TotalSeconds / (outputTokens - 1), _tags);
    }

    public void KvCache(long deltaBytes) => _kvBytes.Add(deltaBytes, _tags);
}
