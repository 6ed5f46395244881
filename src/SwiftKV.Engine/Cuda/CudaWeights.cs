// The model's weights on the GPU: matrices as bf16 in the Hugging Face (out_features, in_features) layout, norms,
// biases and RoPE frequencies as fp32. Projections that read the same input are concatenated so one GEMM serves
// them: [q; k; v] of full layers, [gate; up] of every MLP, and [k_swiftkv; v_swiftkv] of ALL AcrossKV group
// leaders stacked, so SingleInputKV fills every later cache from norm_swiftkv(x_l) with a single GEMM.
// Where the values come from is a WeightSource (fp32 LlamaWeights, a safetensors checkpoint streamed through
// pinned staging, or seeded random values made on the GPU); this class only decides the layout.
// With keepE4m3, a matrix whose every part the source holds as e4m3 codes with row scales (an FP8 checkpoint's
// per-channel or per-matrix scales) stays as those codes: half the bytes of bf16, so decode streams half and a model
// twice the size fits. Block-scaled matrices, and stacks with a part that is not e4m3, are dequantized to bf16 as before.
using SwiftKV.Cuda;
using SwiftKV.Cuda.Kernels;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;
using static SwiftKV.Model.Checkpoint.LlamaTensorNames;

namespace SwiftKV.Engine.Cuda;

/// <summary>A weight matrix (out, in) as the GPU holds it: bf16, or e4m3 codes with one fp32 scale per row.</summary>
internal sealed class CudaMatrix
{
    public required long Rows { get; init; }
    public required long Columns { get; init; }
    public DeviceBuffer<Bf16>? Values { get; init; }
    public DeviceBuffer<byte>? Codes { get; init; }
    public DeviceBuffer<float>? Scales { get; init; }

    public bool IsE4m3 => Codes is not null;
    /// <summary>The bf16 values; only for a matrix held in bf16 (the engine dequantizes an e4m3 one into a scratch first).</summary>
    public DeviceBuffer<Bf16> Bf16 => Values ?? throw new InvalidOperationException("this matrix is held as e4m3 codes: dequantize it first.");
    public E4m3Rows E4m3 => new(Codes?.Span ?? throw new InvalidOperationException("this matrix is held in bf16."), Scales!.Span);
    public long ElementCount => Rows * Columns;
}

internal sealed class CudaLayerWeights
{
    /// <summary>Full layer: [q; k; v] (q + 2 kv, hidden). SwiftKV layer: q_proj_swiftkv (q, hidden).</summary>
    public required CudaMatrix QkvOrQ { get; init; }
    public DeviceBuffer<float>? QBias { get; init; }
    /// <summary>Full layers only (SwiftKV leaders' K/V biases live in <see cref="CudaWeights.SwiftKvBiases"/>).</summary>
    public DeviceBuffer<float>? KBias { get; init; }
    public DeviceBuffer<float>? VBias { get; init; }
    public required CudaMatrix O { get; init; }
    public DeviceBuffer<float>? OBias { get; init; }
    /// <summary>[gate; up] (2 inter, hidden).</summary>
    public required CudaMatrix GateUp { get; init; }
    public required CudaMatrix Down { get; init; }
    public required DeviceBuffer<float> InputLayernorm { get; init; }
    public required DeviceBuffer<float> PostAttentionLayernorm { get; init; }
}

internal sealed class CudaWeights : IDisposable
{
    readonly List<IDisposable> _owned = [];
    readonly Dictionary<string, TensorSpec> _specs;
    readonly WeightSource _source;

    /// <summary>Allocates every buffer the model needs and fills it from <paramref name="source"/> (which it does not dispose).</summary>
    public CudaWeights(LlamaConfig c, bool swiftKvEnabled, WeightSource source, float[] invFreq, CudaStream stream, bool keepE4m3 = false)
    {
        _specs = ForModel(c, swiftKvEnabled).ToDictionary(s => s.Name, StringComparer.Ordinal);
        _source = source;
        _keepE4m3 = keepE4m3;
        try
        {
            // The embedding is gathered by row, in bf16 (and an FP8 checkpoint keeps it unquantized anyway).
            Embed = Matrix(allowE4m3: false, EmbedTokens).Bf16;
            var layers = new List<CudaLayerWeights>();
            for (int i = 0; i < c.NumHiddenLayers; i++)
            {
                bool swift = swiftKvEnabled && c.IsSwiftKvLayer(i);
                layers.Add(new CudaLayerWeights
                {
                    InputLayernorm = Vector(InputLayernorm(i))!,
                    QkvOrQ = Matrix(QkvOrQNames(c, swiftKvEnabled, i)),
                    QBias = Vector(Attention(i, swift ? QProjSwiftKv : QProj, bias: true)),
                    KBias = swift ? null : Vector(Attention(i, KProj, bias: true)),
                    VBias = swift ? null : Vector(Attention(i, VProj, bias: true)),
                    O = Matrix(OProjNames(i)),
                    OBias = Vector(Attention(i, OProj, bias: true)),
                    PostAttentionLayernorm = Vector(PostAttentionLayernorm(i))!,
                    GateUp = Matrix(GateUpNames(i)),
                    Down = Matrix(DownNames(i)),
                });
            }
            Layers = layers;
            if (swiftKvEnabled)
            {
                var leaders = Leaders(c);
                SwiftKvLeaders = leaders;
                SwiftKvKv = Matrix(SwiftKvKvNames(c));
                SwiftKvBiases = leaders.Select(j => (Vector(Attention(j, KProjSwiftKv, bias: true)), Vector(Attention(j, VProjSwiftKv, bias: true)))).ToArray();
                NormSwiftKv = Vector(LlamaTensorNames.NormSwiftKv);
            }
            Norm = Vector(LlamaTensorNames.Norm)!;
            // NOTE: tied embeddings share one buffer, as Hugging Face shares one parameter.
            LmHead = c.TieWordEmbeddings ? new CudaMatrix { Rows = c.VocabSize, Columns = c.HiddenSize, Values = Embed } : Matrix(LmHeadNames);
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
    public CudaMatrix LmHead { get; }
    public DeviceBuffer<float> Norm { get; }
    public DeviceBuffer<float>? NormSwiftKv { get; }
    public DeviceBuffer<float> InvFreq { get; }
    public IReadOnlyList<CudaLayerWeights> Layers { get; } = [];

    /// <summary>Whether any layer's attention has a q, k or v bias (attention_bias): the fused [q; k; v] GEMM adds none.</summary>
    public bool HasQkvBias => Layers.Any(l => l.QBias is not null || l.KBias is not null || l.VBias is not null);
    /// <summary>Layer indices of the AcrossKV group leaders, in cache order.</summary>
    public int[] SwiftKvLeaders { get; } = [];
    /// <summary>[k_swiftkv; v_swiftkv] of every leader, stacked: (leaders · 2 kv, hidden).</summary>
    public CudaMatrix? SwiftKvKv { get; }
    public (DeviceBuffer<float>? K, DeviceBuffer<float>? V)[] SwiftKvBiases { get; } = [];

    /// <summary>Whether any SingleInputKV K/V projection has a bias (the fused K/V GEMM adds none).</summary>
    public bool HasSwiftKvBias => SwiftKvBiases.Any(b => b.K is not null || b.V is not null);

    public long Bytes { get; private set; }

    // The stacks of tensors each held matrix is made of, named once for the loader and for E4m3Plan.
    static string[] QkvOrQNames(LlamaConfig c, bool swiftKvEnabled, int i) => swiftKvEnabled && c.IsSwiftKvLayer(i)
        ? [Attention(i, QProjSwiftKv)] : [Attention(i, QProj), Attention(i, KProj), Attention(i, VProj)];
    static string[] OProjNames(int i) => [Attention(i, OProj)];
    static string[] GateUpNames(int i) => [Mlp(i, GateProj), Mlp(i, UpProj)];
    static string[] DownNames(int i) => [Mlp(i, DownProj)];
    static int[] Leaders(LlamaConfig c) => Enumerable.Range(c.NumKeyValueLayers, c.NumHiddenLayers - c.NumKeyValueLayers).Where(c.IsKvGroupLeader).ToArray();
    static string[] SwiftKvKvNames(LlamaConfig c) => Leaders(c).SelectMany(j => new[] { Attention(j, KProjSwiftKv), Attention(j, VProjSwiftKv) }).ToArray();
    static readonly string[] LmHeadNames = [LlamaTensorNames.LmHead];

    /// <summary>Every matrix the model holds, as stacks of tensor names, the embedding (always bf16) left out.</summary>
    static IEnumerable<string[]> MatrixStacks(LlamaConfig c, bool swiftKvEnabled)
    {
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            yield return QkvOrQNames(c, swiftKvEnabled, i);
            yield return OProjNames(i);
            yield return GateUpNames(i);
            yield return DownNames(i);
        }
        if (swiftKvEnabled) yield return SwiftKvKvNames(c);
        if (!c.TieWordEmbeddings) yield return LmHeadNames;
    }

    /// <summary>
    /// What keeping <paramref name="source"/>'s e4m3 matrices would come to, before anything is allocated, by the rule
    /// the loader applies (<see cref="Keeps"/>): the device bytes saved against bf16 (a byte per element, less the row
    /// scales) and the largest kept matrix's elements (the engine's dequantize scratch, 2 bytes each). The memory rule
    /// and the refusal count these.
    /// </summary>
    public static (long SavedBytes, long LargestElements) E4m3Plan(LlamaConfig c, bool swiftKvEnabled, WeightSource source)
    {
        var specs = ForModel(c, swiftKvEnabled).ToDictionary(s => s.Name, StringComparer.Ordinal);
        long saved = 0, largest = 0;
        foreach (var names in MatrixStacks(c, swiftKvEnabled))
        {
            if (!names.All(specs.ContainsKey)) continue;   // the loader names the missing tensor
            var stack = names.Select(n => specs[n]).ToArray();
            if (Keeps(stack, source) is null) continue;
            long elements = stack.Sum(s => s.ElementCount), rows = stack.Sum(s => s.Shape[0]);
            saved += elements - 4 * rows;
            largest = Math.Max(largest, elements);
        }
        return (saved, largest);
    }

    /// <summary>The stack's row scales when every part is e4m3 with row-spanning scales and the rows are whole 16-byte chunks, else null.</summary>
    static float[][]? Keeps(TensorSpec[] stack, WeightSource source)
    {
        if (stack[0].Shape[^1] % 16 != 0) return null;
        var scales = new float[stack.Length][];
        for (int k = 0; k < stack.Length; k++)
            if ((scales[k] = source.E4m3RowScales(stack[k])!) is null) return null;
        return scales;
    }

    /// <summary>Device bytes the e4m3 matrices save against bf16 as loaded (E4m3Plan's figure, counted as it happened).</summary>
    public long E4m3SavedBytes { get; private set; }

    /// <summary>Matrices held as e4m3 codes, and the most elements one of them has (the engine's dequantizing scratch).</summary>
    public int E4m3Matrices { get; private set; }
    public long LargestE4m3Elements { get; private set; }

    readonly bool _keepE4m3;

    /// <summary>
    /// The named (out, in) matrices stacked along out, in order, as one matrix: e4m3 codes with row scales when kept
    /// (every part e4m3 with row-spanning scales), else bf16.
    /// </summary>
    CudaMatrix Matrix(params string[] names) => Matrix(true, names);

    CudaMatrix Matrix(bool allowE4m3, params string[] names)
    {
        var specs = names.Select(n => _specs.TryGetValue(n, out var s) ? s : throw new InvalidModelException($"the model needs tensor '{n}', which its config does not list.")).ToArray();
        long rows = specs.Sum(s => s.Shape[0]), columns = specs[0].Shape[^1], total = specs.Sum(s => s.ElementCount);
        if (_keepE4m3 && allowE4m3 && Keeps(specs, _source) is { } scales)
        {
            var codes = Own(new DeviceBuffer<byte>(total));
            var rowScales = Own(new DeviceBuffer<float>(rows));
            _source.E4m3Scales(rowScales.Span, scales.SelectMany(s => s).ToArray());
            long at = 0;
            foreach (var s in specs)
            {
                _source.E4m3Codes(codes.Span.Slice(at, s.ElementCount), s);
                at += s.ElementCount;
            }
            E4m3Matrices++;
            E4m3SavedBytes += total - 4 * rows;
            LargestE4m3Elements = Math.Max(LargestE4m3Elements, total);
            return new CudaMatrix { Rows = rows, Columns = columns, Codes = codes, Scales = rowScales };
        }
        var b = Own(new DeviceBuffer<Bf16>(total));
        long next = 0;
        foreach (var s in specs)
        {
            _source.Matrix(b.Span.Slice(next, s.ElementCount), s);
            next += s.ElementCount;
        }
        return new CudaMatrix { Rows = rows, Columns = columns, Values = b };
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
