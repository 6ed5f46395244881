// The backward passes distillation needs, in fp32 on the CPU, beside the forward kernels they invert (CpuKernels;
// RoPE's is RotaryEmbedding.RotateRows with inverse: true). Shapes follow the forward: activations (num_tokens, features) row-major, weights (out_features,
// in_features) as Hugging Face stores them. Frozen weights only pass gradients on to activations; trainable ones also
// take their own gradient. Every function ADDS into its gradient outputs, so a tensor used twice (an AcrossKV cache
// read by several layers, a residual stream) sums its parts.
using System.Numerics.Tensors;
using SwiftKV.Engine.Cpu;

namespace SwiftKV.Engine.Distillation;

internal static class TrainingKernels
{
    const long ParallelThreshold = 1 << 16;

    static bool Serial(long work) => work < ParallelThreshold || Environment.ProcessorCount == 1;

    // Rows (or output features) handled per pass over the other operand, so that operand streams from memory once per
    // tile rather than once per row: the lm_head's 128K rows would otherwise be read again for every token.
    const int Tile = 16;

    /// <summary>dx (rows, inDim) += dy (rows, outDim) · w (outDim, inDim): the input's gradient of y = x·wᵀ.</summary>
    public static void LinearInputGrad(float[] dy, int rows, int outDim, float[] w, int inDim, float[] dx)
    {
        // Work over blocks of output features, each into its own dx when there are few rows (the lm_head's chunks);
        // over tiles of rows, each owning its dx rows, when there are many.
        void Block(int t0, int t1, int o0, int o1, float[] target)
        {
            for (int o = o0; o < o1; o++)
            {
                var wRow = new ReadOnlySpan<float>(w, o * inDim, inDim);
                for (int t = t0; t < t1; t++)
                {
                    float g = dy[t * outDim + o];
                    if (g == 0f) continue;
                    var dxRow = new Span<float>(target, t * inDim, inDim);
                    TensorPrimitives.MultiplyAdd(wRow, g, dxRow, dxRow);
                }
            }
        }
        int cores = Environment.ProcessorCount;
        if (Serial((long)rows * outDim * inDim)) { for (int t0 = 0; t0 < rows; t0 += Tile) Block(t0, Math.Min(rows, t0 + Tile), 0, outDim, dx); return; }
        int tiles = (rows + Tile - 1) / Tile;
        if (tiles >= 2 * cores)
        {
            Parallel.For(0, tiles, i => Block(i * Tile, Math.Min(rows, (i + 1) * Tile), 0, outDim, dx));
            return;
        }
        // Each block of output features sums into its own buffer, and the buffers are added in block order: the result
        // does not depend on which thread finished first (same machine, same data, same checkpoint bit for bit).
        int chunks = (int)Math.Clamp(PartialBudget / ((long)rows * inDim), 1, Math.Min(outDim, cores * 4));
        var partial = new float[chunks][];
        Parallel.For(0, chunks, c =>
        {
            int o0 = (int)((long)outDim * c / chunks), o1 = (int)((long)outDim * (c + 1) / chunks);
            partial[c] = new float[rows * inDim];
            for (int t0 = 0; t0 < rows; t0 += Tile) Block(t0, Math.Min(rows, t0 + Tile), o0, o1, partial[c]);
        });
        foreach (var p in partial) TensorPrimitives.Add(dx, p, dx);
    }

    /// <summary>Floats of per-thread partial sums a backward kernel may hold at once (64 MB).</summary>
    const long PartialBudget = 16L << 20;

    /// <summary>
    /// dw (outDim, inDim) += dy (rows, outDim)ᵀ · x (rows, inDim) and, when given, db (outDim) += the column sums of dy:
    /// the weight's gradient of y = x·wᵀ + b.
    /// </summary>
    public static void LinearWeightGrad(float[] dy, float[] x, int rows, int outDim, int inDim, float[] dw, float[]? db)
    {
        void Block(int o0, int o1)
        {
            for (int t = 0; t < rows; t++)
            {
                var xRow = new ReadOnlySpan<float>(x, t * inDim, inDim);
                for (int o = o0; o < o1; o++)
                {
                    float g = dy[t * outDim + o];
                    if (g == 0f) continue;
                    var dwRow = new Span<float>(dw, o * inDim, inDim);
                    TensorPrimitives.MultiplyAdd(xRow, g, dwRow, dwRow);
                }
            }
            if (db is null) return;
            for (int o = o0; o < o1; o++)
            {
                double bias = 0;
                for (int t = 0; t < rows; t++) bias += dy[t * outDim + o];
                db[o] += (float)bias;
            }
        }
        int tiles = (outDim + Tile - 1) / Tile;
        if (Serial((long)rows * outDim * inDim)) { for (int i = 0; i < tiles; i++) Block(i * Tile, Math.Min(outDim, (i + 1) * Tile)); }
        else Parallel.For(0, tiles, i => Block(i * Tile, Math.Min(outDim, (i + 1) * Tile)));
    }

    /// <summary>
    /// RMSNorm y = w ⊙ x·r with r = rsqrt(mean(x²) + eps), per row. dx += r·(g − x̂·mean(g ⊙ x̂)) with g = w ⊙ dy and
    /// x̂ = x·r (when dx is given: SingleInputKV's norm needs only its weight's gradient); dw (when given) += Σ_rows dy ⊙ x̂.
    /// </summary>
    public static void RmsNormBackward(float[] x, int rows, int dim, float[] weight, float eps, float[] dy, float[]? dx, float[]? dw)
    {
        var g = new float[dim];
        var xHat = new float[dim];
        for (int t = 0; t < rows; t++)
        {
            var xRow = new ReadOnlySpan<float>(x, t * dim, dim);
            var dyRow = new ReadOnlySpan<float>(dy, t * dim, dim);
            float r = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(xRow) / dim + eps);
            TensorPrimitives.Multiply(xRow, r, xHat);
            TensorPrimitives.Multiply(dyRow, weight, g);
            float mean = TensorPrimitives.Dot(g, xHat) / dim;
            if (dx is not null)
            {
                var dxRow = new Span<float>(dx, t * dim, dim);
                for (int i = 0; i < dim; i++) dxRow[i] += r * (g[i] - xHat[i] * mean);
            }
            if (dw is not null) TensorPrimitives.MultiplyAdd(dyRow, xHat, dw, dw);
        }
    }

    /// <summary>
    /// The gradients of m = silu(gate) ⊙ up, written (not added) into dGate and dUp: dUp = dm ⊙ silu(gate),
    /// dGate = dm ⊙ up ⊙ σ(gate)·(1 + gate·(1 − σ(gate))).
    /// </summary>
    public static void SwiGluBackward(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, ReadOnlySpan<float> dm, Span<float> dGate, Span<float> dUp)
    {
        for (int i = 0; i < gate.Length; i++)
        {
            float x = gate[i], sig = 1f / (1f + MathF.Exp(-x));
            dUp[i] = dm[i] * x * sig;
            dGate[i] = dm[i] * up[i] * sig * (1f + x * (1f - sig));
        }
    }

    /// <summary>
    /// Backward of causal GQA attention over one sequence (row t at position t, keys 0..t), recomputing each row's
    /// softmax. q, dOut, dq: (rows, num_heads * head_dim); keys, values, dKeys, dValues: (rows, num_kv_heads * head_dim).
    /// dq is written; dKeys and dValues are added to (a shared AcrossKV cache gathers every reader's part).
    /// </summary>
    public static void AttentionBackward(float[] q, float[] dOut, int rows, int numHeads, int numKvHeads, int headDim,
        float[] keys, float[] values, float[] dq, float[] dKeys, float[] dValues)
    {
        int groups = numHeads / numKvHeads, qDim = numHeads * headDim, kvDim = numKvHeads * headDim;
        float scale = (float)(1.0 / Math.Sqrt(headDim));
        void Row(int t, (float[] P, float[] DP, float[] DK, float[] DV) s)
        {
            int len = t + 1;
            for (int h = 0; h < numHeads; h++)
            {
                int kvh = h / groups;
                var qh = new ReadOnlySpan<float>(q, t * qDim + h * headDim, headDim);
                var doh = new ReadOnlySpan<float>(dOut, t * qDim + h * headDim, headDim);
                var p = s.P.AsSpan(0, len);
                var dp = s.DP.AsSpan(0, len);
                for (int k = 0; k < len; k++)
                {
                    p[k] = TensorPrimitives.Dot(qh, new ReadOnlySpan<float>(keys, k * kvDim + kvh * headDim, headDim)) * scale;
                    dp[k] = TensorPrimitives.Dot(doh, new ReadOnlySpan<float>(values, k * kvDim + kvh * headDim, headDim));
                }
                CpuKernels.Softmax(p);
                float dot = TensorPrimitives.Dot(p, dp);
                var dqh = new Span<float>(dq, t * qDim + h * headDim, headDim);
                dqh.Clear();
                for (int k = 0; k < len; k++)
                {
                    float ds = p[k] * (dp[k] - dot) * scale;
                    int at = k * kvDim + kvh * headDim;
                    TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(keys, at, headDim), ds, dqh, dqh);
                    var dk = new Span<float>(s.DK, at, headDim);
                    TensorPrimitives.MultiplyAdd(qh, ds, dk, dk);
                    var dv = new Span<float>(s.DV, at, headDim);
                    TensorPrimitives.MultiplyAdd(doh, p[k], dv, dv);
                }
            }
        }
        // Rows are dealt to a fixed number of parts in turn (t, t + parts, ...: causal rows grow in cost), each part summing
        // its keys' and values' gradients in its own buffers; the parts are added in order afterwards, so the result does
        // not depend on thread timing.
        int parts = Serial((long)rows * rows * qDim) ? 1 : Math.Min(rows, Environment.ProcessorCount);
        var local = new (float[] P, float[] DP, float[] DK, float[] DV)[parts];
        Parallel.For(0, parts, i =>
        {
            local[i] = (new float[rows], new float[rows], new float[dKeys.Length], new float[dValues.Length]);
            for (int t = i; t < rows; t += parts) Row(t, local[i]);
        });
        foreach (var part in local)
        {
            TensorPrimitives.Add(dKeys, part.DK, dKeys);
            TensorPrimitives.Add(dValues, part.DV, dValues);
        }
    }
}
