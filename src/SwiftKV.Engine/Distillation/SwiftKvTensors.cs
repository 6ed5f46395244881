// The tensors SwiftKV distillation trains (SWIFTKV.md, "Distillation": about 5% of 8B): norm_swiftkv, q_proj_swiftkv
// of every later layer, k/v_proj_swiftkv of each AcrossKV group leader, and their biases where attention_bias. The
// same shape holds the parameters (aliasing the student's weight arrays, so an optimizer step is seen by the next
// forward), their gradients, and Adam's two moments.
using SwiftKV.Model;
using static SwiftKV.Model.Checkpoint.LlamaTensorNames;

namespace SwiftKV.Engine.Distillation;

/// <summary>One fp32 array per trainable SwiftKV tensor, indexed by layer; null outside the trainable set.</summary>
public sealed class SwiftKvTensors
{
    SwiftKvTensors(LlamaConfig config)
    {
        Config = config;
        int layers = config.NumHiddenLayers;
        QProj = new float[layers][]; QBias = new float[layers][];
        KProj = new float[layers][]; KBias = new float[layers][];
        VProj = new float[layers][]; VBias = new float[layers][];
    }

    public LlamaConfig Config { get; }
    /// <summary>model.norm_swiftkv: (hidden_size)</summary>
    public float[] NormSwiftKv { get; private set; } = [];
    /// <summary>q_proj_swiftkv of layer j >= l: (num_attention_heads * head_dim, hidden_size); bias (num_attention_heads * head_dim).</summary>
    public float[]?[] QProj { get; }
    public float[]?[] QBias { get; }
    /// <summary>k/v_proj_swiftkv of a group leader: (num_key_value_heads * head_dim, hidden_size); bias (num_key_value_heads * head_dim).</summary>
    public float[]?[] KProj { get; }
    public float[]?[] KBias { get; }
    public float[]?[] VProj { get; }
    public float[]?[] VBias { get; }

    /// <summary>The student's own arrays (not copies): what an optimizer updates in place.</summary>
    public static SwiftKvTensors Of(LlamaWeights student)
    {
        ArgumentNullException.ThrowIfNull(student);
        if (!student.SwiftKvEnabled)
            throw new ArgumentException("the student must be loaded with SwiftKV on (its norm_swiftkv and *_swiftkv projections).", nameof(student));
        var t = new SwiftKvTensors(student.Config) { NormSwiftKv = student.NormSwiftKv! };
        for (int j = student.Config.NumKeyValueLayers; j < student.Config.NumHiddenLayers; j++)
        {
            var layer = student.Layers[j];
            t.QProj[j] = layer.QProjSwiftKv; t.QBias[j] = layer.QBiasSwiftKv;
            t.KProj[j] = layer.KProjSwiftKv; t.KBias[j] = layer.KBiasSwiftKv;
            t.VProj[j] = layer.VProjSwiftKv; t.VBias[j] = layer.VBiasSwiftKv;
        }
        return t;
    }

    /// <summary>New zero arrays of the same shapes (gradients, optimizer moments).</summary>
    public SwiftKvTensors ZerosLike()
    {
        static float[]? Z(float[]? a) => a is null ? null : new float[a.Length];
        var t = new SwiftKvTensors(Config) { NormSwiftKv = new float[NormSwiftKv.Length] };
        for (int j = 0; j < QProj.Length; j++)
        {
            t.QProj[j] = Z(QProj[j]); t.QBias[j] = Z(QBias[j]);
            t.KProj[j] = Z(KProj[j]); t.KBias[j] = Z(KBias[j]);
            t.VProj[j] = Z(VProj[j]); t.VBias[j] = Z(VBias[j]);
        }
        return t;
    }

    /// <summary>Every array under its checkpoint name, in one fixed order (the same for parameters and gradients).</summary>
    public IReadOnlyList<(string Name, float[] Values)> Named()
    {
        var list = new List<(string, float[])> { (Model.Checkpoint.LlamaTensorNames.NormSwiftKv, NormSwiftKv) };
        for (int j = 0; j < QProj.Length; j++)
        {
            void Add(float[]? a, string projection, bool bias)
            {
                if (a is not null) list.Add((Attention(j, projection, bias), a));
            }
            Add(QProj[j], QProjSwiftKv, false); Add(QBias[j], QProjSwiftKv, true);
            Add(KProj[j], KProjSwiftKv, false); Add(KBias[j], KProjSwiftKv, true);
            Add(VProj[j], VProjSwiftKv, false); Add(VBias[j], VProjSwiftKv, true);
        }
        return list;
    }

    /// <summary>Sets every value to zero (gradients between optimizer steps).</summary>
    public void Clear()
    {
        foreach (var (_, a) in Named()) Array.Clear(a);
    }

    /// <summary>How many values in all.</summary>
    public long Count => Named().Sum(t => (long)t.Values.Length);
}
