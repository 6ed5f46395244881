// Where a batched step's GPU time goes: CUDA events recorded on the backend's stream around the phases of one step
// (upload + embedding, attention per layer group, the layer stacks, SwiftKV's K/V projection, lm_head, argmax),
// read after the step's final synchronisation. Only every Every-th step is recorded, so the ~70 event records of a
// profiled step (a few microseconds of host time each, and a break in the programmatic-launch chain) touch few steps.
// Steps are bucketed by kind: "decode-only" (every sequence brings one token) and "mixed" (some prefill chunk).
using System.Globalization;
using System.Text;
using SwiftKV.Cuda;

namespace SwiftKV.Engine.Cuda;

/// <summary>Per-phase GPU time of sampled batched steps of one <see cref="CudaBackend"/> (set <see cref="CudaBackend.StepProfiler"/>).</summary>
public sealed class CudaStepProfiler : IDisposable
{
    readonly List<CudaEvent> _events = [];
    readonly List<(string Phase, int Start, int End)> _spans = [];
    readonly Dictionary<string, Dictionary<string, double>> _ms = [];
    readonly Dictionary<string, long> _steps = [];
    readonly List<string> _phaseOrder = [];
    long _seen;
    int _used;
    bool _active;
    string _kind = "";

    /// <param name="every">Record one step in this many (1 = every step).</param>
    public CudaStepProfiler(int every = 8)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(every);
        Every = every;
    }

    public int Every { get; }

    /// <summary>Profiled steps per kind.</summary>
    public IReadOnlyDictionary<string, long> Steps => _steps;

    /// <summary>Mean milliseconds per profiled step of <paramref name="kind"/> spent in <paramref name="phase"/> (0 if never seen).</summary>
    public double MeanMs(string kind, string phase) =>
        _ms.TryGetValue(kind, out var d) && d.TryGetValue(phase, out var v) && _steps.TryGetValue(kind, out var n) && n > 0 ? v / n : 0;

    /// <summary>Phases in first-seen order.</summary>
    public IReadOnlyList<string> Phases => _phaseOrder;

    internal void Begin(string kind)
    {
        _active = _seen++ % Every == 0;
        _used = 0;
        _spans.Clear();
        _kind = kind;
    }

    /// <summary>Records an event on the stream when this step is profiled; returns its index or -1.</summary>
    internal int Mark(CudaStream stream)
    {
        if (!_active) return -1;
        if (_used == _events.Count) _events.Add(new CudaEvent());
        _events[_used].Record(stream);
        return _used++;
    }

    internal void Span(string phase, int start, int end)
    {
        if (_active && start >= 0 && end >= 0) _spans.Add((phase, start, end));
    }

    /// <summary>After the step's last synchronisation: adds the step's spans to the totals.</summary>
    internal void Collect()
    {
        if (!_active) return;
        _active = false;
        if (!_ms.TryGetValue(_kind, out var d)) _ms[_kind] = d = [];
        foreach (var (phase, start, end) in _spans)
        {
            double ms = CudaEvent.ElapsedMs(_events[start], _events[end]);
            d[phase] = d.GetValueOrDefault(phase) + ms;
            if (!_phaseOrder.Contains(phase)) _phaseOrder.Add(phase);
        }
        if (_spans.Count > 0) _steps[_kind] = _steps.GetValueOrDefault(_kind) + 1;
    }

    /// <summary>Forgets the totals (e.g. after a warm-up).</summary>
    public void Reset()
    {
        _ms.Clear();
        _steps.Clear();
        _phaseOrder.Clear();
        _seen = 0;
    }

    /// <summary>A markdown table: one row per phase, one column per step kind (mean ms per profiled step).</summary>
    public string ToMarkdown()
    {
        var kinds = _steps.Keys.Order().ToArray();
        var sb = new StringBuilder();
        sb.AppendLine("| phase (GPU ms per step, CUDA events) | " + string.Join(" | ", kinds.Select(k => $"{k} ({_steps[k]} steps)")) + " |");
        sb.AppendLine("|---|" + string.Concat(kinds.Select(_ => "---|")));
        foreach (var p in _phaseOrder)
            sb.AppendLine($"| {p} | " + string.Join(" | ", kinds.Select(k => MeanMs(k, p).ToString("F2", CultureInfo.InvariantCulture))) + " |");
        return sb.ToString();
    }

    public void Dispose()
    {
        foreach (var e in _events) e.Dispose();
        _events.Clear();
    }
}
