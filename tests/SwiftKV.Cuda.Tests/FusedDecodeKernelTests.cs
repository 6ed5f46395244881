// The kernel variants of the single-graph decode step against CPU references in double, on random data at odd
// sizes with poisoned outputs: the GEMV with the RMSNorm folded in (plain, accumulating, fused SwiGLU; vector and
// scalar paths; 1..4 rows), and the decode attention launch (position from device memory, keys split on the
// device, split combine fused into the attention kernel). The fused combine must give the same bits as the
// separate combine kernel, the device position the same bits as the host one, and a second launch (counters
// re-armed by the first) the same bits again; a CUDA graph captured once must be right at later positions.
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Tests;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class FusedDecodeKernelTests : GpuFixtureTest
{
    const float Eps = 1e-5f;

    /// <summary>h[r, i] = x[r, i] / sqrt(mean(x[r]²) + eps) · nw[i] in double.</summary>
    static double[] Normed(float[] x, float[] nw, int rows, int inDim)
    {
        var h = new double[rows * inDim];
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int i = 0; i < inDim; i++) ss += (double)x[r * inDim + i] * x[r * inDim + i];
            double inv = 1 / Math.Sqrt(ss / inDim + Eps);
            for (int i = 0; i < inDim; i++) h[r * inDim + i] = x[r * inDim + i] * inv * nw[i];
        }
        return h;
    }

    static double[] Product(double[] h, float[] w, int rows, int inDim, int outDim)
    {
        var y = new double[rows * outDim];
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < outDim; o++)
            {
                double acc = 0;
                for (int i = 0; i < inDim; i++) acc += h[r * inDim + i] * w[(long)o * inDim + i];
                y[r * outDim + o] = acc;
            }
        return y;
    }

    [Theory]
    [InlineData(1, 264, 37, false, false)]    // 33 chunks: a partial unroll tail; odd out (lone last row)
    [InlineData(2, 1032, 64, true, false)]    // accumulate (residual add), one full unrolled step + 1
    [InlineData(3, 520, 129, false, false)]
    [InlineData(4, 8, 5, true, false)]        // one chunk per row
    [InlineData(1, 4104, 19, false, false)]
    [InlineData(3, 77, 41, true, false)]      // in % 8 != 0: the scalar fallback
    [InlineData(2, 264, 37, false, true)]     // the scalar fallback, pinned
    public void GemvRms_MatchesReference(int rows, int inDim, int outDim, bool accumulate, bool scalar)
    {
        Gpu.Require();
        var rng = new TestRng((ulong)(140 + rows * 7 + inDim + outDim));
        int ldy = outDim + 3;
        var x = rng.Array((long)rows * inDim, 2f);
        var nw = rng.Array(inDim, 1.5f);
        var w = Bf16.FromSingles(rng.Array((long)outDim * inDim, 0.2f));
        var y0 = rng.Array((long)rows * ldy, 1f);
        using var dx = new DeviceBuffer<float>(x);
        using var dn = new DeviceBuffer<float>(nw);
        using var dw = new DeviceBuffer<Bf16>(w);
        using var dy = accumulate ? new DeviceBuffer<float>(y0) : Gpu.Poisoned((long)rows * ldy);
        var gemv = new GemvKernel(Library) { ForceScalar = scalar };
        gemv.LaunchRms(Stream, dx, rows, inDim, dn, Eps, dw, outDim, dy, accumulate, ldy);
        Stream.Synchronize();
        Assert.Equal(!scalar && inDim % 8 == 0, gemv.LastWasVector);
        var got = dy.ToArray();
        var want = Product(Normed(x, nw, rows, inDim), Bf16.ToSingles(w), rows, inDim, outDim);
        for (int r = 0; r < rows; r++)
        {
            var wr = new double[outDim];
            for (int o = 0; o < outDim; o++) wr[o] = want[r * outDim + o] + (accumulate ? y0[r * ldy + o] : 0);
            Gpu.Close(got.AsSpan(r * ldy, outDim), wr, 1e-4, 1e-4, $"gemv rms row {r}");
            for (int o = outDim; o < ldy; o++)
            {
                if (accumulate) Assert.Equal(y0[r * ldy + o], got[r * ldy + o]);
                else Assert.True(float.IsNaN(got[r * ldy + o]), $"gemv rms wrote column {o} past out_features");
            }
        }
    }

    [Theory]
    [InlineData(1, 264, 37, false)]
    [InlineData(2, 1032, 40, false)]
    [InlineData(4, 520, 129, false)]
    [InlineData(3, 77, 21, false)]     // scalar fallback by shape
    [InlineData(1, 264, 37, true)]     // scalar fallback, pinned
    public void GemvRmsSiluMul_MatchesReference(int rows, int inDim, int inter, bool scalar)
    {
        Gpu.Require();
        var rng = new TestRng((ulong)(160 + rows + inDim + inter));
        var x = rng.Array((long)rows * inDim, 2f);
        var nw = rng.Array(inDim, 1.5f);
        var w = Bf16.FromSingles(rng.Array(2L * inter * inDim, 0.3f));
        using var dx = new DeviceBuffer<float>(x);
        using var dn = new DeviceBuffer<float>(nw);
        using var dw = new DeviceBuffer<Bf16>(w);
        using var dOut = Gpu.PoisonedBf16((long)rows * inter);
        var gemv = new GemvKernel(Library) { ForceScalar = scalar };
        gemv.LaunchRmsSiluMul(Stream, dx, rows, inDim, dn, Eps, dw, inter, dOut);
        Stream.Synchronize();
        Assert.Equal(!scalar && inDim % 8 == 0, gemv.LastWasVector);
        var gu = Product(Normed(x, nw, rows, inDim), Bf16.ToSingles(w), rows, inDim, 2 * inter);
        var want = new double[rows * inter];
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < inter; i++)
            {
                double g = gu[r * 2 * inter + i], u = gu[r * 2 * inter + inter + i];
                want[r * inter + i] = g / (1 + Math.Exp(-g)) * u;
            }
        Gpu.Close(Bf16.ToSingles(dOut.ToArray()), want, 1.0 / 128, 1e-4, "gemv rms silu");
    }

    [Fact]
    public void GemvRms_RejectsTooManyRowsAndShortNormWeight()
    {
        Gpu.Require();
        using var x = new DeviceBuffer<float>(5 * 16);
        using var nw = new DeviceBuffer<float>(15);
        using var w = new DeviceBuffer<Bf16>(4 * 16);
        using var y = new DeviceBuffer<float>(5 * 4);
        var gemv = new GemvKernel(Library);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => gemv.LaunchRms(Stream, x, 5, 16, nw, Eps, w, 4, y));
        Assert.Contains("1..4", e.Message);
        var e2 = Assert.Throws<ArgumentException>(() => gemv.LaunchRms(Stream, x, 1, 16, nw, Eps, w, 4, y));
        Assert.Contains("normWeight", e2.Message);
    }

    /// <summary>
    /// A pinned split count (benchmarks compare counts) is taken as given, up to one split per key tile of the cache,
    /// and each count merges to the reference; an out-of-range count is refused.
    /// </summary>
    [Theory]
    [InlineData(1, 1)]
    [InlineData(5, 5)]
    [InlineData(24, 24)]
    [InlineData(64, 33)]   // a 2100-slot cache has 33 key tiles
    public void LaunchDecode_PinnedSplits_MatchReference(int pinned, int expected)
    {
        Gpu.Require();
        int heads = 32, kvHeads = 8, headDim = 128, pos0 = 2047, capacity = 2100, kvDim = kvHeads * headDim, ldq = heads * headDim + 2 * kvDim;
        var rng = new TestRng(2300 + (ulong)pinned);
        var q = rng.Array(ldq, 1.5f);
        var kc = Bf16.FromSingles(rng.Array((long)capacity * kvDim, 1.5f));
        var vc = Bf16.FromSingles(rng.Array((long)capacity * kvDim, 1f));
        for (long i = (long)(pos0 + 1) * kvDim; i < kc.Length; i++) kc[i] = vc[i] = Bf16.FromSingle(float.NaN);
        using var dq = new DeviceBuffer<float>(q);
        using var dk = new DeviceBuffer<Bf16>(kc);
        using var dv = new DeviceBuffer<Bf16>(vc);
        using var attention = new AttentionKernel(Library) { DecodeSplitsOverride = pinned };
        using var dOut = Gpu.PoisonedBf16((long)heads * headDim);
        attention.LaunchDecode(Stream, dq, ldq, dk, dv, capacity, dOut, 1, heads, kvHeads, headDim, pos0, programmatic: true);
        Stream.Synchronize();
        Assert.Equal(expected, attention.LastLaunch.Splits);
        // Not the count the automatic rule would take anyway, so the pin is what the launch followed.
        Assert.NotEqual(AttentionKernel.DecodeSplits(kvHeads, capacity, AttentionKernel.KeyTile), expected);
        var want = AttentionTests.Reference(q, 0, ldq, Bf16.ToSingles(kc), Bf16.ToSingles(vc), 0, 1, heads, kvHeads, headDim, pos0);
        AttentionTests.AssertClose(Bf16.ToSingles(dOut.ToArray()), want, $"decode with {pinned} pinned splits {attention.LastLaunch}");
        Assert.Throws<ArgumentOutOfRangeException>(() => attention.DecodeSplitsOverride = 65);
        Assert.Throws<ArgumentOutOfRangeException>(() => attention.DecodeSplitsOverride = -1);
    }

    [Theory]
    [InlineData(1, 32, 8, 128, 300, 2100, AttentionPath.Auto)]             // Llama-3 8B heads, many splits, most of them empty
    [InlineData(1, 8, 1, 64, 777, 800, AttentionPath.Auto)]                // GQA 8, odd context
    [InlineData(1, 32, 8, 128, 2047, 2100, AttentionPath.Flash4Warps)]     // a split boundary at the last key
    [InlineData(3, 8, 2, 64, 1000, 1100, AttentionPath.Flash8Warps)]       // SwiftKV-like short step
    [InlineData(1, 4, 2, 128, 5, 2000, AttentionPath.Flash4Warps32Rows)]   // tiny context in a big cache: one split has keys
    [InlineData(2, 6, 3, 40, 90, 120, AttentionPath.Auto)]                 // head_dim 40: the scalar kernel, device position
    public void LaunchDecode_MatchesReference_FusedEqualsSeparate_DeviceEqualsHostPosition(int rows, int heads, int kvHeads, int headDim,
        int pos0, int capacity, AttentionPath path)
    {
        Gpu.Require();
        var rng = new TestRng((ulong)(2000 + rows * 7 + heads + headDim + pos0));
        int kvDim = kvHeads * headDim, ldq = heads * headDim + 2 * kvDim + 3;
        var q = rng.Array((long)rows * ldq, 1.5f);
        var kc = Bf16.FromSingles(rng.Array((long)capacity * kvDim, 1.5f));
        var vc = Bf16.FromSingles(rng.Array((long)capacity * kvDim, 1f));
        for (long i = (long)(pos0 + rows) * kvDim; i < kc.Length; i++) kc[i] = vc[i] = Bf16.FromSingle(float.NaN);
        using var dq = new DeviceBuffer<float>(q);
        using var dk = new DeviceBuffer<Bf16>(kc);
        using var dv = new DeviceBuffer<Bf16>(vc);
        using var dPos = new DeviceBuffer<int>([pos0]);
        using var attention = new AttentionKernel(Library) { Path = path };
        long outLen = (long)rows * heads * headDim;

        Bf16[] Run(bool fused, bool devicePosition)
        {
            using var dOut = Gpu.PoisonedBf16(outLen);
            attention.LaunchDecode(Stream, dq, ldq, dk, dv, capacity, dOut, rows, heads, kvHeads, headDim,
                devicePosition ? -1 : pos0, devicePosition ? dPos.Span : null, fused, programmatic: true);
            Stream.Synchronize();
            return dOut.ToArray();
        }

        var fusedDevice = Run(true, true);
        var want = AttentionTests.Reference(q, 0, ldq, Bf16.ToSingles(kc), Bf16.ToSingles(vc), 0, rows, heads, kvHeads, headDim, pos0);
        AttentionTests.AssertClose(Bf16.ToSingles(fusedDevice), want, $"decode {path} rows {rows} heads {heads}/{kvHeads} d {headDim} pos0 {pos0} cap {capacity} {attention.LastLaunch}");
        if (headDim is 64 or 128 && rows * heads / kvHeads <= 32) Assert.True(attention.LastLaunch.Splits > 1, $"no split-K: {attention.LastLaunch}");
        Assert.Equal(fusedDevice, Run(true, false));     // host position: same splits, same bits
        Assert.Equal(fusedDevice, Run(false, true));     // separate combine kernel: same merge, same bits
        Assert.Equal(fusedDevice, Run(true, true));      // counters re-armed by the last CTAs
    }

    [Fact]
    public void LaunchDecode_CapturedOnce_IsRightAtLaterPositions()
    {
        Gpu.Require();
        var rng = new TestRng(2222);
        int heads = 16, kvHeads = 4, headDim = 128, capacity = 1500, kvDim = kvHeads * headDim, ldq = heads * headDim;
        var q = rng.Array(ldq, 1.5f);
        var kc = Bf16.FromSingles(rng.Array((long)capacity * kvDim, 1.5f));
        var vc = Bf16.FromSingles(rng.Array((long)capacity * kvDim, 1f));
        using var dq = new DeviceBuffer<float>(q);
        using var dk = new DeviceBuffer<Bf16>(kc);
        using var dv = new DeviceBuffer<Bf16>(vc);
        using var dPos = new DeviceBuffer<int>([3]);
        using var dOut = Gpu.PoisonedBf16(heads * headDim);
        using var attention = new AttentionKernel(Library);
        void Record() => attention.LaunchDecode(Stream, dq, ldq, dk, dv, capacity, dOut, 1, heads, kvHeads, headDim, 0, dPos.Span, programmatic: true);
        Record();   // grows the scratch and counters outside capture
        Stream.Synchronize();
        using var graph = CudaGraph.Capture(Stream, Record);
        var k = Bf16.ToSingles(kc);
        var v = Bf16.ToSingles(vc);
        foreach (int pos in new[] { 0, 63, 64, 700, 1499 })
        {
            dPos.CopyFrom([pos]);
            dOut.CopyFrom(Enumerable.Repeat(Bf16.FromSingle(float.NaN), heads * headDim).ToArray());
            graph.Launch(Stream);
            graph.Launch(Stream);   // twice: the fused combine's counters must be re-armed in between
            Stream.Synchronize();
            var want = AttentionTests.Reference(q, 0, ldq, k, v, 0, 1, heads, kvHeads, headDim, pos);
            AttentionTests.AssertClose(Bf16.ToSingles(dOut.ToArray()), want, $"graph-replayed decode attention at position {pos}");
        }
    }
}
