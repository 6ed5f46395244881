// The decode GEMV (plain, accumulating, fused SwiGLU; vector and scalar paths), cuBLAS with a bf16 output, the bf16
// silu pass, the prefill [gate; up] GEMM with SwiGLU in its epilogue (Hopper), the [q; k; v] GEMM with RoPE and the cache
// write in its epilogue (Hopper) and the fused RoPE + KV-cache write, each against a CPU reference in double on random data at odd
// sizes (chunk tails, a lone last output row, odd row counts), outputs poisoned with NaN before the launch.
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Tests;
using SwiftKV.Model;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class LinearKernelTests : GpuFixtureTest
{
    const double Bf16Rel = 1.0 / 128;

    static Bf16[] RandomBf16(TestRng rng, long n, float a) => Bf16.FromSingles(rng.Array(n, a));

    /// <summary>y[r, o] = Σ x[r, i] · w[o, i] in double over the bf16 values.</summary>
    static double[] Reference(Bf16[] x, Bf16[] w, int rows, int inDim, int outDim)
    {
        var xs = Bf16.ToSingles(x);
        var ws = Bf16.ToSingles(w);
        var y = new double[rows * outDim];
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < outDim; o++)
            {
                double acc = 0;
                for (int i = 0; i < inDim; i++) acc += (double)xs[r * inDim + i] * ws[(long)o * inDim + i];
                y[r * outDim + o] = acc;
            }
        return y;
    }

    [Theory]
    [InlineData(1, 264, 37, false, false)]    // 33 chunks of 8: a partial unroll tail; odd out (lone last row)
    [InlineData(2, 1032, 64, true, false)]    // 129 chunks: one full unrolled step + 1
    [InlineData(3, 520, 129, false, false)]
    [InlineData(4, 8, 5, true, false)]        // one chunk per row
    [InlineData(5, 2048, 33, true, false)]
    [InlineData(6, 136, 1, false, false)]     // a single output row
    [InlineData(7, 4104, 19, false, false)]
    [InlineData(8, 776, 97, true, false)]
    [InlineData(3, 77, 41, true, false)]      // in % 8 != 0: the scalar fallback
    [InlineData(8, 264, 37, false, true)]     // the scalar fallback, pinned
    public void Gemv_MatchesReference(int rows, int inDim, int outDim, bool accumulate, bool scalar)
    {
        Gpu.Require();
        var rng = new TestRng((ulong)(40 + rows * 7 + inDim + outDim));
        int ldy = outDim + 3;
        var x = RandomBf16(rng, (long)rows * inDim, 1f);
        var w = RandomBf16(rng, (long)outDim * inDim, 0.2f);
        var y0 = rng.Array((long)rows * ldy, 1f);
        using var dx = new DeviceBuffer<Bf16>(x);
        using var dw = new DeviceBuffer<Bf16>(w);
        using var dy = accumulate ? new DeviceBuffer<float>(y0) : Gpu.Poisoned((long)rows * ldy);
        // Even row counts take the entry points with the L2 weight prefetch, odd ones those without.
        var gemv = new GemvKernel(Library) { ForceScalar = scalar, PrefetchWeights = rows % 2 == 0 };
        gemv.Launch(Stream, dx, rows, inDim, dw, outDim, dy, accumulate, ldy);
        Stream.Synchronize();
        Assert.Equal(!scalar && inDim % 8 == 0, gemv.LastWasVector);
        var got = dy.ToArray();
        var want = Reference(x, w, rows, inDim, outDim);
        for (int r = 0; r < rows; r++)
        {
            var wr = new double[outDim];
            for (int o = 0; o < outDim; o++) wr[o] = want[r * outDim + o] + (accumulate ? y0[r * ldy + o] : 0);
            Gpu.Close(got.AsSpan(r * ldy, outDim), wr, 1e-5, 1e-5, $"gemv row {r}");
            for (int o = outDim; o < ldy; o++)
            {
                if (accumulate) Assert.Equal(y0[r * ldy + o], got[r * ldy + o]);
                else Assert.True(float.IsNaN(got[r * ldy + o]), $"gemv wrote column {o} past out_features");
            }
        }
    }

    [Theory]
    [InlineData(1, 264, 37, false)]
    [InlineData(2, 1032, 40, false)]
    [InlineData(5, 136, 3, false)]
    [InlineData(8, 520, 129, false)]
    [InlineData(3, 77, 21, false)]     // scalar fallback by shape
    [InlineData(7, 264, 37, true)]     // scalar fallback, pinned
    public void GemvSiluMul_MatchesReference(int rows, int inDim, int inter, bool scalar)
    {
        Gpu.Require();
        var rng = new TestRng((ulong)(60 + rows + inDim + inter));
        var x = RandomBf16(rng, (long)rows * inDim, 1f);
        var w = RandomBf16(rng, 2L * inter * inDim, 0.3f);
        using var dx = new DeviceBuffer<Bf16>(x);
        using var dw = new DeviceBuffer<Bf16>(w);
        using var dOut = Gpu.PoisonedBf16((long)rows * inter);
        var gemv = new GemvKernel(Library) { ForceScalar = scalar, PrefetchWeights = rows % 2 == 0 };
        gemv.LaunchSiluMul(Stream, dx, rows, inDim, dw, inter, dOut);
        Stream.Synchronize();
        Assert.Equal(!scalar && inDim % 8 == 0, gemv.LastWasVector);
        var gu = Reference(x, w, rows, inDim, 2 * inter);
        var want = new double[rows * inter];
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < inter; i++)
            {
                double g = gu[r * 2 * inter + i], u = gu[r * 2 * inter + inter + i];
                want[r * inter + i] = g / (1 + Math.Exp(-g)) * u;
            }
        Gpu.Close(Bf16.ToSingles(dOut.ToArray()), want, Bf16Rel, 1e-5, "gemv silu");
    }

    [Fact]
    public void Gemv_UnalignedInput_TakesScalarPathAndMatches()
    {
        Gpu.Require();
        var rng = new TestRng(71);
        int rows = 2, inDim = 264, outDim = 29;
        var x = RandomBf16(rng, (long)rows * inDim + 1, 1f);
        var w = RandomBf16(rng, (long)outDim * inDim, 0.2f);
        using var dx = new DeviceBuffer<Bf16>(x);
        using var dw = new DeviceBuffer<Bf16>(w);
        using var dy = Gpu.Poisoned((long)rows * outDim);
        var gemv = new GemvKernel(Library);
        gemv.Launch(Stream, dx.Span.Slice(1), rows, inDim, dw, outDim, dy);   // 2 bytes off a 16-byte boundary
        Stream.Synchronize();
        Assert.False(gemv.LastWasVector);
        Gpu.Close(dy.ToArray(), Reference(x[1..], w, rows, inDim, outDim), 1e-5, 1e-5, "gemv unaligned");
    }

    [Fact]
    public void Gemv_RejectsTooManyRowsAndShortBuffers()
    {
        Gpu.Require();
        using var x = new DeviceBuffer<Bf16>(9 * 16);
        using var w = new DeviceBuffer<Bf16>(4 * 16);
        using var y = new DeviceBuffer<float>(9 * 4);
        var gemv = new GemvKernel(Library);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => gemv.Launch(Stream, x, 9, 16, w, 4, y));
        Assert.Contains("1..8", e.Message);
        var e2 = Assert.Throws<ArgumentException>(() => gemv.Launch(Stream, x, 2, 16, w, 5, y));
        Assert.Contains("gemv_bf16", e2.Message);
    }

    [Fact]
    public void CublasLinear_Bf16Output_MatchesReference()
    {
        Gpu.Require();
        var rng = new TestRng(72);
        int rows = 13, inDim = 67, outDim = 45, ldy = 50;
        var x = RandomBf16(rng, (long)rows * inDim, 1f);
        var w = RandomBf16(rng, (long)outDim * inDim, 0.2f);
        using var dx = new DeviceBuffer<Bf16>(x);
        using var dw = new DeviceBuffer<Bf16>(w);
        using var dy = Gpu.PoisonedBf16((long)rows * ldy);
        using var blas = new Cublas(Stream);
        blas.Linear(dx, rows, inDim, dw, outDim, dy.Span, ldy);
        Stream.Synchronize();
        var got = Bf16.ToSingles(dy.ToArray());
        var want = Reference(x, w, rows, inDim, outDim);
        for (int r = 0; r < rows; r++)
        {
            Gpu.Close(got.AsSpan(r * ldy, outDim), want.AsSpan(r * outDim, outDim), 1.0 / 256, 1e-5, $"linear bf16 row {r}");
            Assert.True(got.AsSpan(r * ldy + outDim, ldy - outDim).ToArray().All(float.IsNaN), "columns past out_features were written");
        }
    }

    /// <summary>
    /// cuBLASLt plans: row counts of one bucket run the algorithm chosen for the bucket (no new heuristic query) and
    /// still match the reference, fp32 accumulate into a y column slice whose start is only 4-byte aligned.
    /// </summary>
    [Fact]
    public void CublasLinear_RowCountsOfOneBucket_ShareAPlanAndMatchReference()
    {
        Gpu.Require();
        var rng = new TestRng(75);
        int inDim = 136, outDim = 72, ldy = outDim + 3, maxRows = 2048;
        var x = RandomBf16(rng, (long)maxRows * inDim, 1f);
        var w = RandomBf16(rng, (long)outDim * inDim, 0.2f);
        var y0 = rng.Array((long)(maxRows + 1) * ldy + 1, 1f);   // one row past the longest product stays untouched
        using var dx = new DeviceBuffer<Bf16>(x);
        using var dw = new DeviceBuffer<Bf16>(w);
        using var dy = new DeviceBuffer<float>(y0.Length);
        using var blas = new Cublas(Stream);
        var want = Reference(x, w, maxRows, inDim, outDim);   // rows are independent: row r of any shorter product
        void Check(int rows)
        {
            Stream.Upload<float>(y0, dy.Span);
            blas.Linear(dx.Span.Slice(0, (long)rows * inDim), rows, inDim, dw, outDim, dy.Span.Slice(1), accumulate: true, ldy);
            Stream.Synchronize();
            var got = dy.ToArray();
            for (int r = 0; r < rows; r++)
            {
                var wr = new double[outDim];
                for (int o = 0; o < outDim; o++) wr[o] = want[r * outDim + o] + y0[1 + r * ldy + o];
                Gpu.Close(got.AsSpan(1 + r * ldy, outDim), wr, 1e-5, 1e-5, $"{rows} rows, row {r}");
            }
            Assert.Equal(y0[1 + (long)rows * ldy], got[1 + (long)rows * ldy]);   // nothing past the last row
        }
        foreach (int rows in new[] { 1, 3, 16, 17, 18, 100, 2001 }) Check(rows);
        int queries = blas.HeuristicQueries;
        foreach (int rows in new[] { 1999, 2040, 2048, 99, 97 }) Check(rows);   // buckets 2048 and 104: 100 and 2001 opened them
        Assert.Equal(queries, blas.HeuristicQueries);
        Check(1000);
        Assert.Equal(queries + 1, blas.HeuristicQueries);
        Assert.Equal(0, blas.GemmExFallbacks);   // every product above ran through cuBLASLt's plans
    }

    /// <summary>The row buckets: n itself up to 16, then at most 1/8 above n, never below it, 8 per power of two.</summary>
    [Fact]
    public void RowBucket_StaysWithinAnEighthAboveTheRows()
    {
        for (int n = 1; n <= 16; n++) Assert.Equal(n, CublasLtPlans.RowBucket(n));
        var buckets = new HashSet<int>();
        for (int n = 17; n <= 40000; n++)
        {
            int b = CublasLtPlans.RowBucket(n);
            Assert.InRange(b, n, n + Math.Max(1, n / 8));
            Assert.True(CublasLtPlans.RowBucket(b) == b, $"bucket {b} of {n} is not its own bucket");
            Assert.True(CublasLtPlans.RowBucket(n - 1) <= b, $"buckets of {n - 1} and {n} are out of order");
            if (n <= 8192) buckets.Add(b);
        }
        Assert.Equal(8 * 9, buckets.Count);   // 17..8192: eight per power of two, (16, 32] to (4096, 8192]
        Assert.Equal(2048, CublasLtPlans.RowBucket(2000));
    }

    [Theory]
    [InlineData(3, 296)]   // 16-byte vectors
    [InlineData(4, 301)]   // scalar
    public void SiluMulBf16_MatchesReference(int rows, int inter)
    {
        Gpu.Require();
        var rng = new TestRng((ulong)(73 + inter));
        var gu = RandomBf16(rng, 2L * rows * inter, 6f);
        using var dgu = new DeviceBuffer<Bf16>(gu);
        using var dOut = Gpu.PoisonedBf16((long)rows * inter);
        new SiluMulKernel(Library).Launch(Stream, dgu.Span, rows, inter, dOut);
        Stream.Synchronize();
        var g = Bf16.ToSingles(gu);
        var want = new double[rows * inter];
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < inter; i++)
            {
                double a = g[r * 2 * inter + i], u = g[r * 2 * inter + inter + i];
                want[r * inter + i] = a / (1 + Math.Exp(-a)) * u;
            }
        Gpu.Close(Bf16.ToSingles(dOut.ToArray()), want, Bf16Rel, 1e-6, "silu_mul_bf16");
    }

    [Theory]
    [InlineData(300, 200, 392)]    // k, rows and columns all past a tile edge (TMA zero-fills; stores masked)
    [InlineData(129, 72, 136)]     // one row into the second CTA of a cluster
    [InlineData(1, 64, 256)]       // a single row: the peer CTA computes only zero-filled rows
    [InlineData(517, 1032, 1288)]  // several tiles and k steps in every direction, a partial last cluster
    [InlineData(1100, 136, 4104)]  // 165 tiles for ~66 clusters: each CTA runs several, the stage ring's phase shifting between them
    [InlineData(517, 1032, 3080)]  // 75 tiles of 17 k steps: a cluster with a second tile, the ring's phase not at a tile's start
    public void GemmSwiglu_MatchesReference(int rows, int hidden, int inter)
    {
        Gpu.RequireHopper();
        var rng = new TestRng((ulong)(91 + rows + hidden + inter));
        var x = RandomBf16(rng, (long)rows * hidden, 2f);
        var w = RandomBf16(rng, 2L * inter * hidden, 0.1f);
        using var dx = new DeviceBuffer<Bf16>(x);
        using var dw = new DeviceBuffer<Bf16>(w);
        // Poisoned past the output too: the TMA stores of the tiles past row `rows` must be clipped there.
        const int slackRows = 130;
        using var dOut = Gpu.PoisonedBf16((long)(rows + slackRows) * inter);
        var kernel = new GemmSwigluKernel(Library);
        Assert.True(kernel.IsAvailable(out var why), why);   // an H100 fits clusters of two
        kernel.Launch(Stream, dx, rows, hidden, dw, inter, dOut.Span.Slice(0, (long)rows * inter));
        Stream.Synchronize();
        var all = Bf16.ToSingles(dOut.ToArray());
        for (long i = (long)rows * inter; i < all.Length; i++)
            Assert.True(float.IsNaN(all[i]), $"gemm_swiglu_bf16 wrote past its output (element {i}, row {i / inter})");
        var gu = Reference(x, w, rows, hidden, 2 * inter);
        var want = new double[rows * inter];
        double scale = 0;
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < inter; i++)
            {
                double g = gu[r * 2 * inter + i], u = gu[r * 2 * inter + inter + i];
                want[r * inter + i] = g / (1 + Math.Exp(-g)) * u;
                scale = Math.Max(scale, Math.Abs(want[r * inter + i]));
            }
        // bf16 rounding of the output, plus fp32 accumulation against the double reference (scaled by the largest output).
        Gpu.Close(all.AsSpan(0, rows * inter), want, Bf16Rel, 1e-4 * scale, "gemm_swiglu_bf16");
    }

    [Fact]
    public void GemmSwiglu_RefusesUnalignedShapes()
    {
        Gpu.RequireHopper();
        using var dx = new DeviceBuffer<Bf16>(4 * 100);
        using var dw = new DeviceBuffer<Bf16>(2 * 64 * 100);
        using var dOut = new DeviceBuffer<Bf16>(4 * 64);
        var k = new GemmSwigluKernel(Library);
        var e = Assert.Throws<NotSupportedException>(() => k.Launch(Stream, dx.Span, 4, 100, dw.Span, 64, dOut.Span));
        Assert.Contains("multiples of 8", e.Message);   // hidden 100
        e = Assert.Throws<NotSupportedException>(() => k.Launch(Stream, dx.Span, 2, 96, dw.Span, 60, dOut.Span));
        Assert.Contains("multiples of 8", e.Message);   // inter 60
        e = Assert.Throws<NotSupportedException>(() => k.Launch(Stream, dx.Span.Slice(1, 2 * 96), 2, 96, dw.Span, 64, dOut.Span));
        Assert.Contains("16-byte aligned", e.Message);  // x starting one element in
        Assert.Throws<ArgumentException>(() => k.Launch(Stream, dx.Span, 5, 100, dw.Span, 64, dOut.Span));   // x too short for 5 rows
    }

    /// <summary>
    /// The [q; k; v] GEMM with RoPE and the K/V cache write in its epilogue, fed by the GPU's angle table
    /// (rope_table_f32), against a double GEMM rotated by the CPU's RotaryEmbedding (llama3 scaling). Odd row counts
    /// (a partial cluster tile, a lone row), hidden sizes off the 64-wide k step, a cache written from position pos0:
    /// the query buffer past the step and every cache row outside pos0 .. pos0 + rows - 1 must stay poisoned.
    /// </summary>
    [Theory]
    [InlineData(300, 1032, 4, 2, 0)]
    [InlineData(129, 200, 6, 2, 37)]
    [InlineData(1, 64, 2, 2, 5)]
    [InlineData(517, 512, 32, 8, 1000)]   // Llama 3 8B's head layout: 24 column tiles, 2 row tiles and a partial one
    [InlineData(300, 264, 0, 8, 12)]      // no queries: SingleInputKV's [k; v] of one leader (LaunchKeysValues)
    public void GemmQkvRope_MatchesRotatedReference(int rows, int hidden, int heads, int kvHeads, int pos0)
    {
        Gpu.RequireHopper();
        const int headDim = 128;
        int qDim = heads * headDim, kvDim = kvHeads * headDim, outDim = qDim + 2 * kvDim, capacity = pos0 + rows + 70;
        var rng = new TestRng((ulong)(17 + rows + hidden + heads + pos0));
        var x = RandomBf16(rng, (long)rows * hidden, 2f);
        var w = RandomBf16(rng, (long)outDim * hidden, 0.1f);
        var cfg = new LlamaConfig { HeadDim = headDim, RopeTheta = 500000, RopeScaling = new Llama3RopeScaling(8, 1, 4, 8192) };
        var inv = RotaryEmbedding.ComputeInvFreq(headDim, cfg.RopeTheta, cfg.RopeScaling);
        using var dx = new DeviceBuffer<Bf16>(x);
        using var dw = new DeviceBuffer<Bf16>(w);
        using var df = new DeviceBuffer<float>(inv);
        using var table = Gpu.Poisoned((long)rows * headDim);
        const int slackRows = 130;
        using var dq = Gpu.PoisonedBf16(Math.Max(1, (long)(rows + slackRows) * qDim));
        using var kc = Gpu.PoisonedBf16((long)capacity * kvDim);
        using var vc = Gpu.PoisonedBf16((long)capacity * kvDim);
        var kernel = new GemmQkvRopeKernel(Library);
        Assert.True(kernel.IsAvailable(out var why), why);
        new RopeKernel(Library).LaunchTable(Stream, df, rows, headDim, pos0, table);
        if (heads > 0) kernel.Launch(Stream, dx, rows, hidden, dw, heads, kvHeads, table, dq.Span.Slice(0, (long)rows * qDim), kc, vc, capacity, pos0);
        else kernel.LaunchKeysValues(Stream, dx, rows, hidden, dw, kvHeads, table, kc, vc, capacity, pos0);
        Stream.Synchronize();
        Assert.Equal(1, kernel.Launches);

        var q = Bf16.ToSingles(dq.ToArray());
        var k = Bf16.ToSingles(kc.ToArray());
        var v = Bf16.ToSingles(vc.ToArray());
        for (long i = (long)rows * qDim; i < q.Length; i++)
            Assert.True(float.IsNaN(q[i]), $"gemm_qkv_rope_bf16 wrote past its queries (element {i}, row {(qDim > 0 ? i / qDim : -1)})");
        for (int p = 0; p < capacity; p++)
            if (p < pos0 || p >= pos0 + rows)
                for (int i = 0; i < kvDim; i++)
                {
                    Assert.True(float.IsNaN(k[(long)p * kvDim + i]), $"gemm_qkv_rope_bf16 wrote K cache row {p} outside the step");
                    Assert.True(float.IsNaN(v[(long)p * kvDim + i]), $"gemm_qkv_rope_bf16 wrote V cache row {p} outside the step");
                }

        var y = Reference(x, w, rows, hidden, outDim);
        var rope = new RotaryEmbedding(cfg);
        var cos = new float[headDim / 2];
        var sin = new float[headDim / 2];
        double scale = y.Max(Math.Abs);
        for (int r = 0; r < rows; r++)
        {
            rope.Angles(pos0 + r, cos, sin);
            var qr = y.AsSpan(r * outDim, qDim).ToArray();
            var kr = y.AsSpan(r * outDim + qDim, kvDim).ToArray();
            RotateDouble(qr, heads, cos, sin);
            RotateDouble(kr, kvHeads, cos, sin);
            // bf16 rounding of the output, plus fp32 accumulation against the double reference (scaled by the largest output).
            if (heads > 0) Gpu.Close(q.AsSpan(r * qDim, qDim), qr, Bf16Rel, 1e-4 * scale, $"q row {r}");
            Gpu.Close(k.AsSpan((pos0 + r) * kvDim, kvDim), kr, Bf16Rel, 1e-4 * scale, $"k cache row {pos0 + r}");
            Gpu.Close(v.AsSpan((pos0 + r) * kvDim, kvDim), y.AsSpan(r * outDim + qDim + kvDim, kvDim).ToArray(), Bf16Rel, 1e-4 * scale, $"v cache row {pos0 + r}");
        }
    }

    /// <summary>Rotate-half RoPE of every head of a row in double, by the CPU's angles.</summary>
    static void RotateDouble(double[] row, int heads, float[] cos, float[] sin)
    {
        int half = cos.Length;
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++)
            {
                int a = h * 2 * half + i, b = a + half;
                double xa = row[a], xb = row[b];
                row[a] = xa * cos[i] - xb * sin[i];
                row[b] = xb * cos[i] + xa * sin[i];
            }
    }

    [Fact]
    public void GemmQkvRope_RefusesShapesItCannotTile()
    {
        Gpu.RequireHopper();
        using var dx = new DeviceBuffer<Bf16>(4 * 104);
        using var dw = new DeviceBuffer<Bf16>(5L * 128 * 104);
        using var table = new DeviceBuffer<float>(4 * 128);
        using var dq = new DeviceBuffer<Bf16>(4L * 3 * 128);
        using var kc = new DeviceBuffer<Bf16>(8L * 128);
        using var vc = new DeviceBuffer<Bf16>(8L * 128);
        var k = new GemmQkvRopeKernel(Library);
        var e = Assert.Throws<NotSupportedException>(() => k.Launch(Stream, dx.Span, 4, 104, dw.Span, 3, 1, table.Span, dq.Span, kc.Span, vc.Span, 8, 0));
        Assert.Contains("even head", e.Message);                                  // 3 heads, 1 KV head: tiles would straddle q, k and v
        Assert.False(GemmQkvRopeKernel.Applies(100, 4, 2, 128, out var why));
        Assert.Contains("multiple of 8", why);                                    // hidden 100
        Assert.False(GemmQkvRopeKernel.Applies(128, 4, 2, 64, out why));
        Assert.Contains("head_dim 128", why);
        using var dw2 = new DeviceBuffer<Bf16>(8L * 128 * 104);
        using var kc2 = new DeviceBuffer<Bf16>(8L * 256);
        using var vc2 = new DeviceBuffer<Bf16>(8L * 256);
        using var dq2 = new DeviceBuffer<Bf16>(4L * 4 * 128);
        Assert.Throws<ArgumentOutOfRangeException>(() => k.Launch(Stream, dx.Span, 4, 104, dw2.Span, 4, 2, table.Span, dq2.Span, kc2.Span, vc2.Span, 8, 5));   // positions 5..8 past a cache of 8
        Assert.Throws<ArgumentException>(() => k.Launch(Stream, dx.Span, 5, 104, dw2.Span, 4, 2, table.Span, dq2.Span, kc2.Span, vc2.Span, 8, 0));          // x too short for 5 rows
        Assert.Equal(0, k.Launches);
    }

    /// <summary>The step's angle table (rope_table_f32) against the CPU's RotaryEmbedding, llama3 scaling, positions to 40K.</summary>
    [Theory]
    [InlineData(5, 128, 0)]
    [InlineData(300, 128, 40000)]
    [InlineData(3, 64, 17)]
    public void RopeTable_MatchesCpuAngles(int rows, int headDim, int pos0)
    {
        Gpu.Require();
        var cfg = new LlamaConfig { HeadDim = headDim, RopeTheta = 500000, RopeScaling = new Llama3RopeScaling(8, 1, 4, 8192) };
        using var df = new DeviceBuffer<float>(RotaryEmbedding.ComputeInvFreq(headDim, cfg.RopeTheta, cfg.RopeScaling));
        using var table = Gpu.Poisoned((long)(rows + 2) * headDim);
        new RopeKernel(Library).LaunchTable(Stream, df, rows, headDim, pos0, table.Span.Slice(0, (long)rows * headDim));
        Stream.Synchronize();
        var got = table.ToArray();
        var rope = new RotaryEmbedding(cfg);
        var cos = new float[headDim / 2];
        var sin = new float[headDim / 2];
        for (int r = 0; r < rows; r++)
        {
            rope.Angles(pos0 + r, cos, sin);
            var want = cos.Concat(sin).Select(v => (double)v).ToArray();
            // fp32 sincos of the same fp32 angle: a few ulp apart at most (angles up to ~40,000 rad).
            Gpu.Close(got.AsSpan(r * headDim, headDim), want, 1e-5, 1e-5, $"angles row {r} (position {pos0 + r})");
        }
        for (long i = (long)rows * headDim; i < got.Length; i++) Assert.True(float.IsNaN(got[i]), $"rope_table_f32 wrote past its rows (element {i})");
    }

    [Fact]
    public void RopeKv_WithRopeTable_LeavesQueryAndWritesAngles()
    {
        Gpu.Require();
        var rng = new TestRng(75);
        int rows = 3, heads = 32, kvHeads = 8, headDim = 128, qDim = heads * headDim, kvDim = kvHeads * headDim;
        int ld = qDim + 2 * kvDim, pos0 = 9, capacity = 16;
        var cfg = new LlamaConfig { HeadDim = headDim, RopeTheta = 500000, RopeScaling = new Llama3RopeScaling(8, 1, 4, 16) };
        var inv = RotaryEmbedding.ComputeInvFreq(headDim, cfg.RopeTheta, cfg.RopeScaling);
        var src = rng.Array((long)rows * ld, 2f);
        using var dq = new DeviceBuffer<float>(src);
        using var df = new DeviceBuffer<float>(inv);
        using var table = Gpu.Poisoned((long)rows * headDim);
        using var kc = Gpu.PoisonedBf16((long)capacity * kvDim);
        using var vc = Gpu.PoisonedBf16((long)capacity * kvDim);
        new RopeKvKernel(Library).Launch(Stream, dq, ld, null, null, null, df, rows, heads, kvHeads, headDim, pos0, kc, vc, capacity, null, table.Span);
        Stream.Synchronize();

        Assert.Equal(src, dq.ToArray());   // q (and the K/V columns) untouched: the attention kernel rotates q
        var rope = new RotaryEmbedding(cfg);
        var got = table.ToArray();
        var k = Bf16.ToSingles(kc.ToArray());
        var v = Bf16.ToSingles(vc.ToArray());
        Span<float> cos = stackalloc float[headDim / 2], sin = stackalloc float[headDim / 2];
        for (int r = 0; r < rows; r++)
        {
            rope.Angles(pos0 + r, cos, sin);
            Gpu.Close(v.AsSpan((pos0 + r) * kvDim, kvDim), src.AsSpan(r * ld + qDim + kvDim, kvDim).ToArray().Select(f => (double)f).ToArray(),
                Bf16Rel, 1e-5, $"v slot {pos0 + r}");
            var want = new double[headDim];
            for (int i = 0; i < headDim / 2; i++) { want[i] = cos[i]; want[headDim / 2 + i] = sin[i]; }
            Gpu.Close(got.AsSpan(r * headDim, headDim), want, 1e-5, 1e-5, $"angles row {r}");
            var kr = src.AsSpan(r * ld + qDim, kvDim).ToArray();
            RotaryEmbedding.Rotate(kr, kvHeads, cos, sin);
            Gpu.Close(k.AsSpan((pos0 + r) * kvDim, kvDim), kr.Select(f => (double)f).ToArray(), Bf16Rel, 1e-5, $"k slot {pos0 + r}");
        }

        // A q bias cannot be added to queries that the attention kernel will rotate.
        using var qb = new DeviceBuffer<float>(qDim);
        Assert.Throws<ArgumentException>(() => new RopeKvKernel(Library).Launch(Stream, dq, ld, qb.Span, null, null, df, rows, heads, kvHeads, headDim,
            pos0, kc, vc, capacity, null, table.Span));
    }

    [Theory]
    [InlineData(false, 5, 6, 2, 14)]
    [InlineData(true, 5, 6, 2, 14)]
    [InlineData(true, 1, 32, 8, 128)]    // a decode row at Llama 3 8B's layout: the row's units span 20 blocks
    [InlineData(false, 3, 32, 8, 128)]
    public void RopeKv_RotatesQueryAndWritesCache(bool positionOnDevice, int rows, int heads, int kvHeads, int headDim)
    {
        Gpu.Require();
        var rng = new TestRng(74);
        int qDim = heads * headDim, kvDim = kvHeads * headDim;
        int ld = qDim + 2 * kvDim + 3, pos0 = 9, capacity = 20;
        var cfg = new LlamaConfig { HeadDim = headDim, RopeTheta = 500000, RopeScaling = new Llama3RopeScaling(8, 1, 4, 16) };
        var inv = RotaryEmbedding.ComputeInvFreq(headDim, cfg.RopeTheta, cfg.RopeScaling);
        var src = rng.Array((long)rows * ld, 2f);
        var qb = rng.Array(qDim, 0.3f);
        var kb = rng.Array(kvDim, 0.3f);
        var vb = rng.Array(kvDim, 0.3f);
        using var dq = new DeviceBuffer<float>(src);
        using var dqb = new DeviceBuffer<float>(qb);
        using var dkb = new DeviceBuffer<float>(kb);
        using var dvb = new DeviceBuffer<float>(vb);
        using var df = new DeviceBuffer<float>(inv);
        using var dpos = new DeviceBuffer<int>([pos0]);
        using var kc = Gpu.PoisonedBf16((long)capacity * kvDim);
        using var vc = Gpu.PoisonedBf16((long)capacity * kvDim);
        new RopeKvKernel(Library).Launch(Stream, dq, ld, dqb.Span, dkb.Span, dvb.Span, df, rows, heads, kvHeads, headDim,
            positionOnDevice ? 0 : pos0, kc, vc, capacity, positionOnDevice ? dpos.Span : null);
        Stream.Synchronize();

        var rope = new RotaryEmbedding(cfg);
        var q = dq.ToArray();
        var k = Bf16.ToSingles(kc.ToArray());
        var v = Bf16.ToSingles(vc.ToArray());
        Span<float> cos = stackalloc float[headDim / 2], sin = stackalloc float[headDim / 2];
        for (int r = 0; r < rows; r++)
        {
            rope.Angles(pos0 + r, cos, sin);
            var qr = new float[qDim];
            for (int c = 0; c < qDim; c++) qr[c] = src[r * ld + c] + qb[c];
            RotaryEmbedding.Rotate(qr, heads, cos, sin);
            var kr = new float[kvDim];
            for (int c = 0; c < kvDim; c++) kr[c] = src[r * ld + qDim + c] + kb[c];
            RotaryEmbedding.Rotate(kr, kvHeads, cos, sin);
            var vr = new double[kvDim];
            for (int c = 0; c < kvDim; c++) vr[c] = src[r * ld + qDim + kvDim + c] + (double)vb[c];
            Gpu.Close(q.AsSpan(r * ld, qDim), qr.Select(f => (double)f).ToArray(), 1e-5, 1e-5, $"q row {r}");
            // The K and V columns of the projection are read, not changed.
            Gpu.Close(q.AsSpan(r * ld + qDim, ld - qDim), src.AsSpan(r * ld + qDim, ld - qDim).ToArray().Select(f => (double)f).ToArray(), 0, 0, $"kv columns row {r}");
            int slot = pos0 + r;
            Gpu.Close(k.AsSpan(slot * kvDim, kvDim), kr.Select(f => (double)f).ToArray(), Bf16Rel, 1e-5, $"k slot {slot}");
            Gpu.Close(v.AsSpan(slot * kvDim, kvDim), vr, Bf16Rel, 1e-5, $"v slot {slot}");
        }
        for (int slot = 0; slot < capacity; slot++)
            if (slot < pos0 || slot >= pos0 + rows)
                for (int c = 0; c < kvDim; c++)
                    Assert.True(float.IsNaN(k[slot * kvDim + c]) && float.IsNaN(v[slot * kvDim + c]), $"slot {slot} outside the step was written");
    }
}
