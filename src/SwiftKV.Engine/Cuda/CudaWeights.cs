// The model's weights on the GPU, uploaded once from LlamaWeights: matrices as bf16 in the Hugging Face
// (out_features, in_features) layout, norms, biases and RoPE frequencies as fp32. Projections that read the
// same input are concatenated so one GEMM serves them: [q; k; v] of full layers, [gate; up] of every MLP,
// and [k_swiftkv; v_swiftkv] of ALL AcrossKV group leaders stacked, so SingleInputKV fills every later
// cache from norm_swiftkv(x_l) with a single GEMM.
using SwiftKV.Cuda;
using SwiftKV.Model;

namespace SwiftKV.Engine.Cuda;

internal sealed class CudaLayerWeights
{
    /// <summary>Full layer: [q; k; v] (q + 2 kv, hidden). SwiftKV layer: q_proj_swiftkv (q, hidden).</summary>
    public required DeviceBuffer<Bf16> QkvOrQ { get; init; }
    public DeviceBuffer<float>? QBias { get; init; }
    /// <summary>Full layers only (SwiftKV leaders' K/V biases live in <see cref="CudaWeights.SwiftKvBiases"/>).</summary>
    public DeviceBuffer<float>? KBias { get; init; }
    public DeviceBuffer<float>? VBias { get; init; }
    public required DeviceBuffer<Bf16> O { get; init; }
    public DeviceBuffer<float>? OBias { get; init; }
    /// <summary>[gate; up] (2 inter, hidden).</summary>
    public required DeviceBuffer<Bf16> GateUp { get; init; }
    public required DeviceBuffer<Bf16> Down { get; init; }
    public required DeviceBuffer<float> InputLayernorm { get; init; }
    public required DeviceBuffer<float> PostAttentionLayernorm { get; init; }
}

internal sealed class CudaWeights : IDisposable
{
    readonly List<IDisposable> _owned = [];

    public CudaWeights(LlamaWeights w, float[] invFreq)
    {
        var c = w.Config;
        Embed = Bf16Buffer(w.EmbedTokens);
        LmHead = ReferenceEquals(w.LmHead, w.EmbedTokens) ? Embed : Bf16Buffer(w.LmHead);
        Norm = F32(w.Norm)!;
        NormSwiftKv = w.SwiftKvEnabled ? F32(w.NormSwiftKv) : null;
        InvFreq = F32(invFreq)!;
        var layers = new List<CudaLayerWeights>();
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            var l = w.Layers[i];
            bool swift = w.SwiftKvEnabled && c.IsSwiftKvLayer(i);
            layers.Add(new CudaLayerWeights
            {
                QkvOrQ = swift ? Bf16Buffer(l.QProjSwiftKv!) : Bf16Buffer(l.QProj!, l.KProj!, l.VProj!),
                QBias = F32(swift ? l.QBiasSwiftKv : l.QBias),
                KBias = swift ? null : F32(l.KBias),
                VBias = swift ? null : F32(l.VBias),
                O = Bf16Buffer(l.OProj),
                OBias = F32(l.OBias),
                GateUp = Bf16Buffer(l.GateProj, l.UpProj),
                Down = Bf16Buffer(l.DownProj),
                InputLayernorm = F32(l.InputLayernorm)!,
                PostAttentionLayernorm = F32(l.PostAttentionLayernorm)!,
            });
        }
        Layers = layers;
        if (w.SwiftKvEnabled)
        {
            var leaders = Enumerable.Range(c.NumKeyValueLayers, c.NumHiddenLayers - c.NumKeyValueLayers).Where(c.IsKvGroupLeader).ToArray();
            SwiftKvLeaders = leaders;
            SwiftKvKv = Bf16Buffer(leaders.SelectMany(j => new[] { w.Layers[j].KProjSwiftKv!, w.Layers[j].VProjSwiftKv! }).ToArray());
            SwiftKvBiases = leaders.Select(j => (F32(w.Layers[j].KBiasSwiftKv), F32(w.Layers[j].VBiasSwiftKv))).ToArray();
        }
    }

    public DeviceBuffer<Bf16> Embed { get; }
    public DeviceBuffer<Bf16> LmHead { get; }
    public DeviceBuffer<float> Norm { get; }
    public DeviceBuffer<float>? NormSwiftKv { get; }
    public DeviceBuffer<float> InvFreq { get; }
    public IReadOnlyList<CudaLayerWeights> Layers { get; }
    /// <summary>Layer indices of the AcrossKV group leaders, in cache order.</summary>
    public int[] SwiftKvLeaders { get; } = [];
    /// <summary>[k_swiftkv; v_swiftkv] of every leader, stacked: (leaders · 2 kv, hidden).</summary>
    public DeviceBuffer<Bf16>? SwiftKvKv { get; }
    public (DeviceBuffer<float>? K, DeviceBuffer<float>? V)[] SwiftKvBiases { get; } = [];

    public long Bytes { get; private set; }

    DeviceBuffer<Bf16> Bf16Buffer(params float[][] parts)
    {
        var host = new Bf16[parts.Sum(p => (long)p.Length)];
        long at = 0;
        foreach (var p in parts)
        {
            for (int i = 0; i < p.Length; i++) host[at + i] = Bf16.FromSingle(p[i]);
            at += p.Length;
        }
        var b = new DeviceBuffer<Bf16>(host);
        _owned.Add(b);
        Bytes += b.ByteLength;
        return b;
    }

    DeviceBuffer<float>? F32(float[]? a)
    {
        if (a is null) return null;
        var b = new DeviceBuffer<float>(a);
        _owned.Add(b);
        Bytes += b.ByteLength;
        return b;
    }

    public void Dispose()
    {
        foreach (var d in _owned) d.Dispose();
        _owned.Clear();
    }
}
