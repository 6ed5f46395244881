// The model's weights on the GPU: matrices as bf16 in the Hugging Face (out_features, in_features) layout, norms,
// biases and RoPE frequencies as fp32. Projections that read the same input are concatenated so one GEMM serves
// them: [q; k; v] of full layers, [gate; up] of every MLP, and [k_swiftkv; v_swiftkv] of ALL AcrossKV group
// leaders stacked, so SingleInputKV fills every later cache from norm_swiftkv(x_l) with a single GEMM.
// Where the values come from is a WeightSource (fp32 LlamaWeights, a safetensors checkpoint streamed through
// pinned staging, or seeded random values made on the GPU); this class only decides the layout.
using SwiftKV.Cuda;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;
using static SwiftKV.Model.Checkpoint.LlamaTensorNames;

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
    readonly Dictionary<string, TensorSpec> _specs;
    readonly WeightSource _source;

    /// <summary>Allocates every buffer the model needs and fills it from <paramref name="source"/> (which it does not dispose).</summary>
    public CudaWeights(LlamaConfig c, bool swiftKvEnabled, WeightSource source, float[] invFreq, CudaStream stream)
    {
        _specs = ForModel(c, swiftKvEnabled).ToDictionary(s => s.Name, StringComparer.Ordinal);
        _source = source;
        try
        {
            Embed = Matrix(EmbedTokens);
            var layers = new List<CudaLayerWeights>();
            for (int i = 0; i < c.NumHiddenLayers; i++)
            {
                bool swift = swiftKvEnabled && c.IsSwiftKvLayer(i);
                layers.Add(new CudaLayerWeights
                {
                    InputLayernorm = Vector(InputLayernorm(i))!,
                    QkvOrQ = swift ? Matrix(Attention(i, QProjSwiftKv)) : Matrix(Attention(i, QProj), Attention(i, KProj), Attention(i, VProj)),
                    QBias = Vector(Attention(i, swift ? QProjSwiftKv : QProj, bias: true)),
                    KBias = swift ? null : Vector(Attention(i, KProj, bias: true)),
                    VBias = swift ? null : Vector(Attention(i, VProj, bias: true)),
                    O = Matrix(Attention(i, OProj)),
                    OBias = Vector(Attention(i, OProj, bias: true)),
                    PostAttentionLayernorm = Vector(PostAttentionLayernorm(i))!,
                    GateUp = Matrix(Mlp(i, GateProj), Mlp(i, UpProj)),
                    Down = Matrix(Mlp(i, DownProj)),
                });
            }
            Layers = layers;
            if (swiftKvEnabled)
            {
                var leaders = Enumerable.Range(c.NumKeyValueLayers, c.NumHiddenLayers - c.NumKeyValueLayers).Where(c.IsKvGroupLeader).ToArray();
                SwiftKvLeaders = leaders;
                SwiftKvKv = Matrix(leaders.SelectMany(j => new[] { Attention(j, KProjSwiftKv), Attention(j, VProjSwiftKv) }).ToArray());
                SwiftKvBiases = leaders.Select(j => (Vector(Attention(j, KProjSwiftKv, bias: true)), Vector(Attention(j, VProjSwiftKv, bias: true)))).ToArray();
                NormSwiftKv = Vector(LlamaTensorNames.NormSwiftKv);
            }
            Norm = Vector(LlamaTensorNames.Norm)!;
            // NOTE: tied embeddings share one buffer, as Hugging Face shares one parameter.
            LmHead = c.TieWordEmbeddings ? Embed : Matrix(LlamaTensorNames.LmHead);
            InvFreq = Own(new DeviceBuffer<float>(invFreq.Length));
            stream.Upload<float>(invFreq, InvFreq);   // on the backend's (non-blocking) stream, not the legacy one
            source.Finish();
        }
        catch
        {
            // Uploads and dequantizing kernels may still be queued into these buffers: let them finish before the
            // memory goes back (cuMemFree's own synchronisation is not a documented promise).
            try { stream.Synchronize(); } catch (CudaException) { }
            Dispose();
            throw;
        }
    }

    public DeviceBuffer<Bf16> Embed { get; }
    public DeviceBuffer<Bf16> LmHead { get; }
    public DeviceBuffer<float> Norm { get; }
    public DeviceBuffer<float>? NormSwiftKv { get; }
    public DeviceBuffer<float> InvFreq { get; }
    public IReadOnlyList<CudaLayerWeights> Layers { get; } = [];

    /// <summary>Whether any layer's attention has a q, k or v bias (attention_bias): the fused [q; k; v] GEMM adds none.</summary>
    public bool HasQkvBias => Layers.Any(l => l.QBias is not null || l.KBias is not null || l.VBias is not null);
    /// <summary>Layer indices of the AcrossKV group leaders, in cache order.</summary>
    public int[] SwiftKvLeaders { get; } = [];
    /// <summary>[k_swiftkv; v_swiftkv] of every leader, stacked: (leaders · 2 kv, hidden).</summary>
    public DeviceBuffer<Bf16>? SwiftKvKv { get; }
    public (DeviceBuffer<float>? K, DeviceBuffer<float>? V)[] SwiftKvBiases { get; } = [];

    /// <summary>Whether any SingleInputKV K/V projection has a bias (the fused K/V GEMM adds none).</summary>
    public bool HasSwiftKvBias => SwiftKvBiases.Any(b => b.K is not null || b.V is not null);

    public long Bytes { get; private set; }

    /// <summary>One bf16 buffer holding the named (out, in) matrices stacked along out, in order.</summary>
    DeviceBuffer<Bf16> Matrix(params string[] names)
    {
        var specs = names.Select(n => _specs.TryGetValue(n, out var s) ? s : throw new InvalidModelException($"the model needs tensor '{n}', which its config does not list.")).ToArray();
        var b = Own(new DeviceBuffer<Bf16>(specs.Sum(s => s.ElementCount)));
        long at = 0;
        foreach (var s in specs)
        {
            _source.Matrix(b.Span.Slice(at, s.ElementCount), s);
            at += s.ElementCount;
        }
        return b;
    }

    /// <summary>An fp32 vector, or null when the config has no such tensor (biases of a bias-free model).</summary>
    DeviceBuffer<float>? Vector(string name)
    {
        if (!_specs.TryGetValue(name, out var spec)) return null;
        var b = Own(new DeviceBuffer<float>(spec.ElementCount));
        _source.Vector(b.Span, spec);
        return b;
    }

    DeviceBuffer<T> Own<T>(DeviceBuffer<T> b) where T : unmanaged
    {
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
