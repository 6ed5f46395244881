// Causal GQA attention of query rows against a paged KV cache. Each row belongs to one sequence and reads that
// sequence's blocks only. The arithmetic and its order (dot per key, softmax, weighted sum of values in key order)
// are those of CpuKernels.Attention, so a row gives bit-identical output whether its keys are paged or contiguous
// and whatever else shares the batch.
using System.Numerics.Tensors;

namespace SwiftKV.Engine.Cpu;

internal static class PagedAttention
{
    const long ParallelThreshold = 1 << 16;

    /// <summary>
    /// q (rows, num_heads * head_dim); row r sits at position <paramref name="positions"/>[r] of the sequence whose
    /// block table is <paramref name="tables"/>[r] and sees positions 0..positions[r]. keys/values
    /// (num_blocks, block_size, num_kv_heads, head_dim). Output (rows, num_heads * head_dim).
    /// </summary>
    public static void Run(
        float[] q, int rows, int[] positions, ReadOnlyMemory<int>[] tables, int blockSize,
        int numHeads, int numKvHeads, int headDim, float[] keys, float[] values, float[] output)
    {
        int groups = numHeads / numKvHeads;
        int qDim = numHeads * headDim, kvDim = numKvHeads * headDim;
        float scale = (float)(1.0 / Math.Sqrt(headDim));
        int maxLen = 0;
        long work = 0;
        for (int r = 0; r < rows; r++)
        {
            maxLen = Math.Max(maxLen, positions[r] + 1);
            work += (long)(positions[r] + 1) * numHeads * headDim;
        }

        void One(int item, float[] scores)
        {
            int r = item / numHeads, h = item % numHeads, kvh = h / groups;
            int len = positions[r] + 1;
            var table = tables[r].Span;
            var qh = new ReadOnlySpan<float>(q, r * qDim + h * headDim, headDim);
            var s = scores.AsSpan(0, len);
            for (int k = 0; k < len; k++)
                s[k] = TensorPrimitives.Dot(qh, new ReadOnlySpan<float>(keys, Offset(table, k) + kvh * headDim, headDim)) * scale;
            CpuKernels.Softmax(s);
            var o = new Span<float>(output, r * qDim + h * headDim, headDim);
            o.Clear();
            for (int k = 0; k < len; k++)
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(values, Offset(table, k) + kvh * headDim, headDim), s[k], o, o);
        }

        int Offset(ReadOnlySpan<int> table, int position) =>
            (table[position / blockSize] * blockSize + position % blockSize) * kvDim;

        int items = rows * numHeads;
        if (work < ParallelThreshold || Environment.ProcessorCount == 1)
        {
            var scores = new float[maxLen];
            for (int i = 0; i < items; i++) One(i, scores);
            return;
        }
        Parallel.For(0, items, () => new float[maxLen], (i, _, scores) => { One(i, scores); return scores; }, _ => { });
    }
}
