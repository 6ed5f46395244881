// The fp32 building blocks of the CPU forward pass. Activations are row-major (num_tokens, features) arrays;
// weights keep the Hugging Face (out_features, in_features) layout, so every output is a dot product of a
// weight row with a token row (TensorPrimitives vectorizes it). Work is split over output features, never
// inside a dot product, so a value never depends on how many tokens or threads a call had: decode and
// prefill produce bit-identical rows.
using System.Numerics.Tensors;
using SwiftKV.Model.Checkpoint;

namespace SwiftKV.Engine.Cpu;

internal static class CpuKernels
{
    // Below this many multiply-adds a call runs on the calling thread: Parallel.For costs more than it saves.
    const long ParallelThreshold = 1 << 16;
    // Tokens processed per pass over a block of weight rows, so the token rows stay in cache while weights stream.
    const int TokenTile = 16;

    /// <summary>y (rows, outDim) = x (rows, inDim) · w (outDim, inDim)ᵀ + bias.</summary>
    public static void Linear(float[] x, int rows, int inDim, float[] w, float[]? bias, int outDim, float[] y)
    {
        void Block(int oStart, int oEnd)
        {
            for (int t0 = 0; t0 < rows; t0 += TokenTile)
            {
                int t1 = Math.Min(rows, t0 + TokenTile);
                for (int o = oStart; o < oEnd; o++)
                {
                    var wRow = new ReadOnlySpan<float>(w, o * inDim, inDim);
                    float b = bias is null ? 0f : bias[o];
                    for (int t = t0; t < t1; t++)
                        y[t * outDim + o] = TensorPrimitives.Dot(new ReadOnlySpan<float>(x, t * inDim, inDim), wRow) + b;
                }
            }
        }

        if ((long)rows * inDim * outDim < ParallelThreshold || Environment.ProcessorCount == 1)
        {
            Block(0, outDim);
            return;
        }
        int chunks = Math.Min(outDim, Environment.ProcessorCount * 8);
        Parallel.For(0, chunks, c => Block((int)((long)outDim * c / chunks), (int)((long)outDim * (c + 1) / chunks)));
    }

    /// <summary>
    /// RMSNorm of each row, as Hugging Face computes it in fp32: w · (x · rsqrt(mean(x²) + eps)).
    /// </summary>
    public static void RmsNorm(float[] x, int rows, int dim, float[] weight, float eps, float[] y)
    {
        for (int t = 0; t < rows; t++)
        {
            var src = new ReadOnlySpan<float>(x, t * dim, dim);
            var dst = new Span<float>(y, t * dim, dim);
            float mean = TensorPrimitives.SumOfSquares(src) / dim;
            float r = 1f / MathF.Sqrt(mean + eps);
            TensorPrimitives.Multiply(src, r, dst);
            TensorPrimitives.Multiply(dst, weight, dst);
        }
    }

    /// <summary>
    /// W8A8's per-token activations, as values: each row of x rounded to bf16 (the GPU's GEMM inputs are bf16), then
    /// to e4m3 codes with one scale per row, scale = amax / 448, code = e4m3(x · (448 / amax)) (each fp32 op rounded
    /// once; rows with amax below 1e-30 get scale 1; a NaN element does not enter amax), returned as code · scale: the
    /// rule of the CUDA backend's quantize_rows_e4m3 and of the PyTorch W8A8 fixtures (make_w8a8_fixtures.py).
    /// </summary>
    public static float[] QuantizeRowsE4m3(float[] x, int rows, int dim)
    {
        var y = new float[(long)rows * dim];
        void Row(int t)
        {
            var values = Float8.Values(TensorDtype.F8E4M3);
            var src = new ReadOnlySpan<float>(x, t * dim, dim);
            var dst = new Span<float>(y, t * dim, dim);
            float amax = 0f;
            for (int i = 0; i < dim; i++)
            {
                dst[i] = Fp32Conversion.BFloat16BitsToSingle(Fp32Conversion.SingleToBFloat16Bits(src[i]));
                float a = MathF.Abs(dst[i]);
                if (a > amax) amax = a;   // as CUDA's fmaxf: a NaN element stays NaN in its code, not its row's scale
            }
            bool scaled = amax >= 1e-30f;
            float inv = scaled ? 448f / amax : 1f, scale = scaled ? amax / 448f : 1f;
            for (int i = 0; i < dim; i++) dst[i] = values[Float8.ToE4m3(dst[i] * inv)] * scale;
        }
        if ((long)rows * dim < ParallelThreshold || Environment.ProcessorCount == 1)
            for (int t = 0; t < rows; t++) Row(t);
        else Parallel.For(0, rows, Row);
        return y;
    }

    /// <summary>gate ← silu(gate) · up, elementwise.</summary>
    public static void SwiGlu(Span<float> gate, ReadOnlySpan<float> up)
    {
        for (int i = 0; i < gate.Length; i++)
        {
            float g = gate[i];
            gate[i] = g / (1f + MathF.Exp(-g)) * up[i];
        }
    }

    /// <summary>In-place softmax with max subtraction.</summary>
    public static void Softmax(Span<float> v)
    {
        float max = TensorPrimitives.Max(v);
        TensorPrimitives.Subtract(v, max, v);
        TensorPrimitives.Exp(v, v);
        float sum = TensorPrimitives.Sum(v);
        TensorPrimitives.Divide(v, sum, v);
    }

    /// <summary>
    /// Causal GQA attention of query rows against a cache of keys/values, both (capacity, num_kv_heads, head_dim).
    /// Query row r (num_heads, head_dim) sits at position <paramref name="positions"/>[r] and sees cache slots
    /// 0..position. Output is (rows, num_heads * head_dim).
    /// </summary>
    public static void Attention(
        float[] q, int rows, int[] positions, int numHeads, int numKvHeads, int headDim,
        float[] keys, float[] values, float[] output)
    {
        int groups = numHeads / numKvHeads;
        int qDim = numHeads * headDim, kvDim = numKvHeads * headDim;
        float scale = (float)(1.0 / Math.Sqrt(headDim));
        int maxLen = 0;
        for (int r = 0; r < rows; r++) maxLen = Math.Max(maxLen, positions[r] + 1);

        void One(int item, float[] scores)
        {
            int r = item / numHeads, h = item % numHeads, kvh = h / groups;
            int len = positions[r] + 1;
            var qh = new ReadOnlySpan<float>(q, r * qDim + h * headDim, headDim);
            var s = scores.AsSpan(0, len);
            for (int k = 0; k < len; k++)
                s[k] = TensorPrimitives.Dot(qh, new ReadOnlySpan<float>(keys, k * kvDim + kvh * headDim, headDim)) * scale;
            Softmax(s);
            var o = new Span<float>(output, r * qDim + h * headDim, headDim);
            o.Clear();
            for (int k = 0; k < len; k++)
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(values, k * kvDim + kvh * headDim, headDim), s[k], o, o);
        }

        int items = rows * numHeads;
        if ((long)items * maxLen * headDim < ParallelThreshold || Environment.ProcessorCount == 1)
        {
            var scores = new float[maxLen];
            for (int i = 0; i < items; i++) One(i, scores);
            return;
        }
        Parallel.For(0, items, () => new float[maxLen], (i, _, scores) => { One(i, scores); return scores; }, _ => { });
    }
}
