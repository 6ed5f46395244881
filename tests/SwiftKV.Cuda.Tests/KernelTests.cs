// Every kernel against a CPU reference in double, on random non-zero data at odd sizes, with outputs filled
// with NaN before the launch so an unwritten element fails. bf16 outputs are compared within bf16 rounding
// (relative 2^-8 plus what the fp32 math adds).
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Tests;
using SwiftKV.Model;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class KernelTests : GpuFixtureTest
{
    /// <summary>
    /// Every kernel file a GPU below Hopper may load compiles for sm_80, sm_86 and sm_89 (NVRTC compiles for any
    /// architecture, so whichever GPU runs the suite checks the others). The two cluster GEMMs are sm_90a only: their
    /// launchers check the architecture before loading them.
    /// </summary>
    [Fact]
    public void EveryPortableKernelFile_CompilesForAmpereAndAda()
    {
        Gpu.Require();
        string[] hopperOnly = ["gemm_qkv.cu", "gemm_swiglu.cu"];
        var files = KernelLibrary.SourceFiles.Except(hopperOnly).ToArray();
        Assert.Contains("sampling.cu", files);
        var failures = new List<string>();
        foreach (var arch in new[] { "sm_80", "sm_86", "sm_89" })
            foreach (var file in files)
            {
                try
                {
                    Assert.NotEmpty(NvrtcCompiler.CompileFor(arch, file, KernelLibrary.Read(file), KernelLibrary.HeaderSources));
                }
                catch (CudaException e)
                {
                    failures.Add($"{file} for {arch}: {e.Message.Split('\n')[0]}");
                }
            }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
        Gpu.Log($"{files.Length} kernel files compile for sm_80, sm_86 and sm_89");
    }

    const double Bf16Rel = 1.0 / 128;

    static Bf16[] RandomBf16(TestRng rng, long n, float a) => Bf16.FromSingles(rng.Array(n, a));
    static double[] Wide(ReadOnlySpan<Bf16> v) => Bf16.ToSingles(v).Select(f => (double)f).ToArray();
    static double[] Wide(float[] v) => v.Select(f => (double)f).ToArray();

    /// <summary>
    /// The distillation trainer's bf16 frozen matrices widen to exactly the fp32 values they hold: 16-byte vector loads
    /// on aligned whole spans, one value at a time on a misaligned slice and in the tail (1003 is not a multiple of 8).
    /// </summary>
    [Theory]
    [InlineData(0, 1003)]
    [InlineData(1, 1000)]
    [InlineData(8, 4096)]
    public void Widen_Bf16ToFp32_IsExact(int offset, int n)
    {
        Gpu.Require();
        var values = RandomBf16(new TestRng(29), offset + n, 3f);
        using var b = new DeviceBuffer<Bf16>(values);
        using var w = Gpu.Poisoned(n);
        new DistillationKernels(Library).Widen(Stream, b.Span.Slice(offset, n), w.Span);
        var got = new float[n];
        Stream.Download(w.Span, got);
        for (int i = 0; i < n; i++)
            Assert.Equal(BitConverter.SingleToUInt32Bits(values[offset + i].ToSingle()), BitConverter.SingleToUInt32Bits(got[i]));
    }

    [Fact]
    public void Embedding_GathersRows()
    {
        Gpu.Require();
        var rng = new TestRng(11);
        int vocab = 53, hidden = 77, rows = 7;
        var table = RandomBf16(rng, (long)vocab * hidden, 1f);
        int[] ids = [5, 0, 52, 5, 17, 33, 1];
        using var dTable = new DeviceBuffer<Bf16>(table);
        using var dIds = new DeviceBuffer<int>(ids);
        using var dOut = Gpu.Poisoned((long)rows * hidden);
        new EmbeddingKernel(Library).Launch(Stream, dIds, dTable, vocab, dOut, rows, hidden);
        Stream.Synchronize();
        var got = dOut.ToArray();
        var want = new double[rows * hidden];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < hidden; c++) want[r * hidden + c] = table[ids[r] * hidden + c].ToSingle();
        Gpu.Close(got, want, 0, 0, "embedding");
    }

    [Theory]
    [InlineData("F8E4M3", 37, 53, 5, 8)]     // blocks partial at the bottom and the right
    [InlineData("F8E5M2", 37, 53, 1, 53)]    // one scale per output row
    [InlineData("F8E4M3", 37, 53, 37, 53)]   // one scale per matrix
    public void DequantizeFp8_WritesCodeTimesItsBlocksScale_InTheRunOnly(string format, int rows, int columns, int blockRows, int blockColumns)
    {
        Gpu.Require();
        var dtype = Enum.Parse<SwiftKV.Model.Checkpoint.TensorDtype>(format);
        var rng = new Random(rows * 7 + blockRows);
        // Finite codes only: the table's NaN and infinities would make the comparison meaningless, not harder.
        var codes = Enumerable.Range(0, rows * columns).Select(_ =>
        {
            byte c;
            do c = (byte)rng.Next(256); while (!float.IsFinite(SwiftKV.Model.Checkpoint.Float8.ToSingle(c, dtype)));
            return c;
        }).ToArray();
        int gridRows = (rows + blockRows - 1) / blockRows, gridColumns = (columns + blockColumns - 1) / blockColumns;
        var scales = Enumerable.Range(0, gridRows * gridColumns).Select(_ => (float)(rng.NextDouble() * 0.01 + 1e-4)).ToArray();
        long first = 101, n = rows * columns - 250;   // a run that starts and ends inside rows and blocks
        using var dCodes = new DeviceBuffer<byte>(codes.AsSpan((int)first, (int)n));
        using var dTable = new DeviceBuffer<float>(SwiftKV.Model.Checkpoint.Float8.Values(dtype));
        using var dScales = new DeviceBuffer<float>(scales);
        using var dOut = Gpu.PoisonedBf16((long)rows * columns);
        new Fp8WeightKernel(Library).Dequantize(Stream, dCodes, first, dTable, dScales, columns, blockRows, blockColumns, gridColumns,
            dOut.Span.Slice(first, n));
        Stream.Synchronize();
        var got = dOut.ToArray();
        for (int i = 0; i < rows * columns; i++)
        {
            if (i < first || i >= first + n)
            {
                Assert.True(float.IsNaN(got[i].ToSingle()), $"element {i} outside the run was written");
                continue;
            }
            int r = i / columns, c = i % columns;
            float want = SwiftKV.Model.Checkpoint.Float8.ToSingle(codes[i], dtype) * scales[r / blockRows * gridColumns + c / blockColumns];
            Assert.Equal(Bf16.FromSingle(want).Bits, got[i].Bits);
        }
    }

    [Theory]
    [InlineData(false, 333)]   // scalar path (dim not a multiple of 4)
    [InlineData(true, 333)]
    [InlineData(false, 1028)]  // 16-byte path
    [InlineData(true, 1028)]
    [InlineData(false, 4096)]  // Llama 3 8B's width: 4 float4s per thread
    [InlineData(true, 8192)]   // 8 float4s per thread
    [InlineData(true, 8200)]   // 16-byte path, a row wider than any Llama's (several float4s per thread)
    public void RmsNorm_MatchesReference(bool withBias, int dim)
    {
        Gpu.Require();
        var rng = new TestRng((ulong)(12 + dim));
        int rows = 5;
        float eps = 1e-5f;
        var x = rng.Array((long)rows * dim, 3f);
        var bias = withBias ? rng.Array(dim, 0.5f) : null;
        var w = rng.NormWeight(dim);
        using var dx = new DeviceBuffer<float>(x);
        using var db = bias is null ? null : new DeviceBuffer<float>(bias);
        using var dw = new DeviceBuffer<float>(w);
        using var dOut = Gpu.PoisonedBf16((long)rows * dim);
        new RmsNormKernel(Library).Launch(Stream, dx, db?.Span, dw, dOut, rows, dim, eps);
        Stream.Synchronize();

        var xRef = new double[rows * dim];
        var yRef = new double[rows * dim];
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int c = 0; c < dim; c++)
            {
                double v = (double)x[r * dim + c] + (bias is null ? 0 : (double)bias[c]);
                xRef[r * dim + c] = v;
                ss += v * v;
            }
            double inv = 1 / Math.Sqrt(ss / dim + eps);
            for (int c = 0; c < dim; c++) yRef[r * dim + c] = xRef[r * dim + c] * inv * w[c];
        }
        Gpu.Close(dx.ToArray(), xRef, 1e-6, 1e-6, "rms_norm x (residual with bias)");
        Gpu.Close(Bf16.ToSingles(dOut.ToArray()), yRef, Bf16Rel, 1e-6, "rms_norm out");
    }

    [Fact]
    public void Rope_MatchesCpuRotaryEmbedding_AndLeavesOtherColumns()
    {
        Gpu.Require();
        var rng = new TestRng(13);
        int rows = 6, heads = 3, headDim = 10, ld = 37, pos0 = 1013;
        var cfg = new LlamaConfig { HeadDim = headDim, RopeTheta = 10000, RopeScaling = new Llama3RopeScaling(8, 1, 4, 512) };
        var inv = RotaryEmbedding.ComputeInvFreq(headDim, cfg.RopeTheta, cfg.RopeScaling);
        var q = rng.Array((long)rows * ld, 2f);
        var bias = rng.Array(heads * headDim, 0.3f);
        using var dq = new DeviceBuffer<float>(q);
        using var db = new DeviceBuffer<float>(bias);
        using var df = new DeviceBuffer<float>(inv);
        new RopeKernel(Library).Launch(Stream, dq, ld, db.Span, df, rows, heads, headDim, pos0);
        Stream.Synchronize();

        var rope = new RotaryEmbedding(cfg);
        var want = Wide(q);
        Span<float> cos = stackalloc float[headDim / 2], sin = stackalloc float[headDim / 2];
        for (int r = 0; r < rows; r++)
        {
            var v = new float[heads * headDim];
            for (int c = 0; c < v.Length; c++) v[c] = q[r * ld + c] + bias[c];
            rope.Angles(pos0 + r, cos, sin);
            RotaryEmbedding.Rotate(v, heads, cos, sin);
            for (int c = 0; c < v.Length; c++) want[r * ld + c] = v[c];
        }
        // Angles near 1000 rad: cosf/sinf vs the CPU's double cos of the same fp32 angle differ by a few ulp of 1.
        Gpu.Close(dq.ToArray(), want, 1e-5, 1e-5, "rope");
    }

    [Fact]
    public void KvCache_WritesRotatedKeysAndValuesAtSlots()
    {
        Gpu.Require();
        var rng = new TestRng(14);
        int rows = 5, kvHeads = 2, headDim = 14, kvDim = kvHeads * headDim, ld = 3 * kvDim + 1, pos0 = 9, capacity = 20;
        var inv = RotaryEmbedding.ComputeInvFreq(headDim, 500000, null);
        var src = rng.Array((long)rows * ld, 2f);
        var kb = rng.Array(kvDim, 0.3f);
        var vb = rng.Array(kvDim, 0.3f);
        using var dSrc = new DeviceBuffer<float>(src);
        using var dkb = new DeviceBuffer<float>(kb);
        using var dvb = new DeviceBuffer<float>(vb);
        using var df = new DeviceBuffer<float>(inv);
        using var kc = Gpu.PoisonedBf16((long)capacity * kvDim);
        using var vc = Gpu.PoisonedBf16((long)capacity * kvDim);
        int kOff = 1, vOff = 1 + kvDim;
        new KvCacheKernel(Library).Launch(Stream, dSrc.Span.Slice(kOff), dSrc.Span.Slice(vOff), ld, dkb.Span, dvb.Span, df,
            rows, kvHeads, headDim, pos0, kc, vc, capacity);
        Stream.Synchronize();
        var k = Bf16.ToSingles(kc.ToArray());
        var v = Bf16.ToSingles(vc.ToArray());
        for (int slot = 0; slot < capacity; slot++)
        {
            bool written = slot >= pos0 && slot < pos0 + rows;
            for (int c = 0; c < kvDim; c++)
            {
                if (!written)
                {
                    Assert.True(float.IsNaN(k[slot * kvDim + c]) && float.IsNaN(v[slot * kvDim + c]), $"slot {slot} outside the step was written");
                    continue;
                }
            }
            if (!written) continue;
            int r = slot - pos0;
            var kRef = new double[kvDim];
            var vRef = new double[kvDim];
            for (int h = 0; h < kvHeads; h++)
                for (int i = 0; i < headDim / 2; i++)
                {
                    int c = h * headDim + i;
                    double a = src[r * ld + kOff + c] + (double)kb[c], b = src[r * ld + kOff + c + headDim / 2] + (double)kb[c + headDim / 2];
                    double ang = inv[i] * (float)slot;
                    kRef[c] = a * Math.Cos(ang) - b * Math.Sin(ang);
                    kRef[c + headDim / 2] = b * Math.Cos(ang) + a * Math.Sin(ang);
                    vRef[c] = src[r * ld + vOff + c] + (double)vb[c];
                    vRef[c + headDim / 2] = src[r * ld + vOff + c + headDim / 2] + (double)vb[c + headDim / 2];
                }
            Gpu.Close(k.AsSpan(slot * kvDim, kvDim), kRef, Bf16Rel, 1e-5, $"k slot {slot}");
            Gpu.Close(v.AsSpan(slot * kvDim, kvDim), vRef, Bf16Rel, 1e-5, $"v slot {slot}");
        }
    }

    [Fact]
    public void SiluMul_MatchesReference()
    {
        Gpu.Require();
        var rng = new TestRng(15);
        int rows = 3, inter = 301;
        var gu = rng.Array(2L * rows * inter, 6f);
        using var dgu = new DeviceBuffer<float>(gu);
        using var dOut = Gpu.PoisonedBf16((long)rows * inter);
        new SiluMulKernel(Library).Launch(Stream, dgu, rows, inter, dOut);
        Stream.Synchronize();
        var want = new double[rows * inter];
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < inter; i++)
            {
                double g = gu[r * 2 * inter + i], u = gu[r * 2 * inter + inter + i];
                want[r * inter + i] = g / (1 + Math.Exp(-g)) * u;
            }
        Gpu.Close(Bf16.ToSingles(dOut.ToArray()), want, Bf16Rel, 1e-6, "silu_mul");
    }

    /// <summary>
    /// More rows than a grid.y holds (65,535): a 70K-token prompt's SwiGLU pass, bf16 (vector and scalar widths) and
    /// fp32 inputs, every row checked (it used to fail with CUDA_ERROR_INVALID_VALUE).
    /// </summary>
    [Theory]
    [InlineData(70001, 24, true)]
    [InlineData(70001, 13, true)]
    [InlineData(65536, 5, false)]
    public void SiluMul_MoreRowsThanAGridY(int rows, int inter, bool bf16)
    {
        Gpu.Require();
        var rng = new TestRng(16);
        var gu = rng.Array(2L * rows * inter, 6f);
        if (bf16) gu = Bf16.ToSingles(Bf16.FromSingles(gu));
        using var dOut = Gpu.PoisonedBf16((long)rows * inter);
        var k = new SiluMulKernel(Library);
        if (bf16)
        {
            using var d = new DeviceBuffer<Bf16>(Bf16.FromSingles(gu));
            k.Launch(Stream, d, rows, inter, dOut);
        }
        else
        {
            using var d = new DeviceBuffer<float>(gu);
            k.Launch(Stream, d, rows, inter, dOut);
        }
        Stream.Synchronize();
        var want = new double[(long)rows * inter];
        for (long r = 0; r < rows; r++)
            for (int i = 0; i < inter; i++)
            {
                double g = gu[r * 2 * inter + i], u = gu[r * 2 * inter + inter + i];
                want[r * inter + i] = g / (1 + Math.Exp(-g)) * u;
            }
        Gpu.Close(Bf16.ToSingles(dOut.ToArray()), want, Bf16Rel, 1e-6, $"silu_mul {rows} rows");
    }

    [Theory]
    [InlineData(5, 6, 2, 20, 150)]   // GQA, several 128-key tiles
    [InlineData(1, 4, 4, 128, 300)]  // decode row, MHA, Llama head_dim
    [InlineData(7, 8, 1, 64, 0)]     // prefill from an empty cache, MQA
    public void Attention_MatchesReference(int rows, int heads, int kvHeads, int headDim, int pos0)
    {
        Gpu.Require();
        var rng = new TestRng((ulong)(16 + rows + heads + pos0));
        int capacity = pos0 + rows + 3, kvDim = kvHeads * headDim, ldq = heads * headDim + 5;
        var q = rng.Array((long)rows * ldq, 1f);
        var kc = RandomBf16(rng, (long)capacity * kvDim, 1f);
        var vc = RandomBf16(rng, (long)capacity * kvDim, 1f);
        // Slots past the step hold NaN: a key read beyond the causal limit poisons the result.
        for (long i = (long)(pos0 + rows) * kvDim; i < kc.Length; i++) kc[i] = vc[i] = Bf16.FromSingle(float.NaN);
        using var dq = new DeviceBuffer<float>(q);
        using var dk = new DeviceBuffer<Bf16>(kc);
        using var dv = new DeviceBuffer<Bf16>(vc);
        using var dOut = Gpu.PoisonedBf16((long)rows * heads * headDim);
        // The scalar kernel (the fallback for other head dims); AttentionTests covers the tensor-core path.
        using var attention = new AttentionKernel(Library) { Path = AttentionPath.Simple };
        attention.Launch(Stream, dq, ldq, dk, dv, capacity, dOut, rows, heads, kvHeads, headDim, pos0);
        Stream.Synchronize();

        var k = Wide(kc);
        var v = Wide(vc);
        var want = new double[rows * heads * headDim];
        double scale = 1 / Math.Sqrt(headDim);
        for (int r = 0; r < rows; r++)
            for (int h = 0; h < heads; h++)
            {
                int kvh = h / (heads / kvHeads), len = pos0 + r + 1;
                var s = new double[len];
                for (int t = 0; t < len; t++)
                {
                    double dot = 0;
                    for (int d = 0; d < headDim; d++) dot += q[r * ldq + h * headDim + d] * k[t * kvDim + kvh * headDim + d];
                    s[t] = dot * scale;
                }
                double max = s.Max(), sum = 0;
                for (int t = 0; t < len; t++) sum += s[t] = Math.Exp(s[t] - max);
                for (int d = 0; d < headDim; d++)
                {
                    double o = 0;
                    for (int t = 0; t < len; t++) o += s[t] / sum * v[t * kvDim + kvh * headDim + d];
                    want[(r * heads + h) * headDim + d] = o;
                }
            }
        Gpu.Close(Bf16.ToSingles(dOut.ToArray()), want, Bf16Rel, 1e-4, "attention");
    }

    [Theory]
    [InlineData(1001)]     // scalar path
    [InlineData(128256)]   // 16-byte path, Llama 3 vocabulary
    public void Argmax_PicksFirstMaximum(int n)
    {
        Gpu.Require();
        var rng = new TestRng(17);
        int rows = 4;
        var x = rng.Array((long)rows * n, 5f);
        x[0 * n + 700] = 9; x[0 * n + 300] = 9;   // tie: lowest index wins
        x[1 * n + n - 1] = 9;                       // last column
        x[2 * n + 0] = 9;                           // first column
        x[3 * n + 5] = float.NaN; x[3 * n + 6] = 9; // NaN never wins
        using var dx = new DeviceBuffer<float>(x);
        using var dOut = new DeviceBuffer<int>(Enumerable.Repeat(-1, rows).ToArray());
        new ArgmaxKernel(Library).Launch(Stream, dx, rows, n, dOut);
        Stream.Synchronize();
        Assert.Equal([300, n - 1, 0, 6], dOut.ToArray());
    }

    /// <summary>+inf wins (first one), and a row of only NaN and -inf gives -1, as Sampler.GreedyOrNone on the host.</summary>
    [Theory]
    [InlineData(1001)]
    [InlineData(128256)]
    public void Argmax_NonFiniteRows_MatchHostRule(int n)
    {
        Gpu.Require();
        var rng = new TestRng(19);
        var x = rng.Array(3L * n, 5f);
        x[n - 7] = float.PositiveInfinity; x[n - 3] = float.PositiveInfinity;
        for (int i = n; i < 2 * n; i++) x[i] = i % 3 == 0 ? float.NaN : float.NegativeInfinity;
        for (int i = 2 * n; i < 3 * n; i++) x[i] = float.NaN;
        using var dx = new DeviceBuffer<float>(x);
        using var dOut = new DeviceBuffer<int>(new[] { 7, 7, 7 });
        new ArgmaxKernel(Library).Launch(Stream, dx, 3, n, dOut);
        Stream.Synchronize();
        var want = Enumerable.Range(0, 3).Select(r => SwiftKV.Engine.Sampling.Sampler.GreedyOrNone(x.AsSpan(r * n, n))).ToArray();
        Assert.Equal([n - 7, -1, -1], want);
        Assert.Equal(want, dOut.ToArray());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void CublasLinear_MatchesReference(bool accumulate)
    {
        Gpu.Require();
        var rng = new TestRng(18);
        int rows = 7, inDim = 67, outDim = 45, ldy = 50;
        var x = RandomBf16(rng, (long)rows * inDim, 1f);
        var w = RandomBf16(rng, (long)outDim * inDim, 0.2f);
        var y0 = rng.Array((long)rows * ldy, 1f);
        using var dx = new DeviceBuffer<Bf16>(x);
        using var dw = new DeviceBuffer<Bf16>(w);
        using var dy = accumulate ? new DeviceBuffer<float>(y0) : Gpu.Poisoned((long)rows * ldy);
        using var blas = new Cublas(Stream);
        blas.Linear(dx, rows, inDim, dw, outDim, dy, accumulate, ldy);
        Stream.Synchronize();
        var got = dy.ToArray();
        var xs = Wide(x);
        var ws = Wide(w);
        for (int r = 0; r < rows; r++)
        {
            var want = new double[outDim];
            for (int o = 0; o < outDim; o++)
            {
                double acc = accumulate ? y0[r * ldy + o] : 0;
                for (int i = 0; i < inDim; i++) acc += xs[r * inDim + i] * ws[o * inDim + i];
                want[o] = acc;
            }
            Gpu.Close(got.AsSpan(r * ldy, outDim), want, 1e-5, 1e-5, $"linear row {r}");
            if (!accumulate) Assert.True(got.AsSpan(r * ldy + outDim, ldy - outDim).ToArray().All(float.IsNaN), "columns past out_features were written");
        }
    }

    [Fact]
    public void Launchers_RejectShapesThatDoNotFit()
    {
        Gpu.Require();
        using var small = new DeviceBuffer<float>(10);
        using var w = new DeviceBuffer<float>(4);
        using var o = new DeviceBuffer<Bf16>(10);
        var e = Assert.Throws<ArgumentException>(() => new RmsNormKernel(Library).Launch(Stream, small, null, w, o, 3, 4, 1e-5f));
        Assert.Contains("rms_norm_f32", e.Message);
    }
}
