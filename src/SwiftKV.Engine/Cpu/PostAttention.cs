// The part of a Llama decoder layer after attention, in fp32, shared by the CPU backend and the distillation trainer:
// o_proj, residual, post_attention_layernorm, SwiGLU MLP, residual. Shapes: x (num_tokens, hidden_size),
// attn (num_tokens, num_attention_heads * head_dim).
using System.Numerics.Tensors;
using SwiftKV.Model;

namespace SwiftKV.Engine.Cpu;

/// <summary>What a backward pass through <see cref="PostAttention.Run"/> reads again.</summary>
internal sealed class PostAttentionActivations
{
    /// <summary>x after attention's residual, before post_attention_layernorm: (num_tokens, hidden_size).</summary>
    public float[] Mid = [];
    /// <summary>gate_proj and up_proj outputs, before SwiGLU: (num_tokens, intermediate_size).</summary>
    public float[] Gate = [], Up = [];
}

internal static class PostAttention
{
    /// <summary>
    /// Updates x in place; fills <paramref name="keep"/> when given (training). <paramref name="input"/>, when given,
    /// maps each Linear's input (x, rows, in_features, weight) to what the Linear reads: W8A8's quantized rows.
    /// </summary>
    public static void Run(LlamaConfig cfg, float eps, float[] x, int rows, LlamaLayerWeights layer, float[] attn, PostAttentionActivations? keep = null,
        Func<float[], int, int, float[], float[]>? input = null)
    {
        int hidden = cfg.HiddenSize, inter = cfg.IntermediateSize;
        input ??= static (a, _, _, _) => a;
        var o = new float[rows * hidden];
        CpuKernels.Linear(input(attn, rows, cfg.QueryDim, layer.OProj), rows, cfg.QueryDim, layer.OProj, layer.OBias, hidden, o);
        TensorPrimitives.Add(x, o, x);

        var h2 = new float[x.Length];
        CpuKernels.RmsNorm(x, rows, hidden, layer.PostAttentionLayernorm, eps, h2);
        var gate = new float[rows * inter];
        var up = new float[rows * inter];
        CpuKernels.Linear(input(h2, rows, hidden, layer.GateProj), rows, hidden, layer.GateProj, null, inter, gate);
        CpuKernels.Linear(input(h2, rows, hidden, layer.UpProj), rows, hidden, layer.UpProj, null, inter, up);
        if (keep is not null)
        {
            keep.Mid = (float[])x.Clone();
            keep.Gate = (float[])gate.Clone();
            keep.Up = up;
        }
        CpuKernels.SwiGlu(gate, up);
        CpuKernels.Linear(input(gate, rows, inter, layer.DownProj), rows, inter, layer.DownProj, null, hidden, o);
        TensorPrimitives.Add(x, o, x);
    }
}
