// The fp8 (e4m3) paged KV cache: the fp8 KV write (paged_kv_write_fp8) and the fp8 paged attention entries
// (flash_attn_paged_fp8_*) against CPU references in double. The e4m3 reference here is independent of the kernels'
// bit tricks: it lists all 127 finite non-negative e4m3 values from the format's definition and rounds to the
// nearest (ties to the even code).
// Tolerances (fp8-aware, stated once): a stored element dequantizes to within |x|/16 + scale·2^-10 of x (half an
// e4m3 ulp). Attention over the fp8 pool matches the double reference on the dequantized values with the bf16
// tolerance (AttentionTests.AssertClose: the kernel's own arithmetic). Against the ORIGINAL (unquantized) K/V, per
// sequence: relative L2 error <= 5e-2 and <= fp8's own cost (the dequantized reference's relative L2 error vs the
// exact one) + 5e-3, and every element within 0.1·max|ref|. (Uniform random data: a one-key context reproduces one
// V row's e4m3 rounding, ~3% RMS; H100 measured 3.3e-2 worst for short contexts, elements up to 3.7% of max|ref|.)
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Tests;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class AttentionPagedFp8Tests : GpuFixtureTest
{
    const int BlockSize = 16;

    /// <summary>e4m3 by definition: code e·8 + m is (1 + m/8)·2^(e-7) for e >= 1, m/8·2^-6 for e = 0; 0x7f is NaN.</summary>
    static readonly double[] E4m3 = Enumerable.Range(0, 127).Select(c => c < 8 ? c / 8.0 * Math.Pow(2, -6) : (1 + (c & 7) / 8.0) * Math.Pow(2, (c >> 3) - 7)).ToArray();

    internal static byte Encode(double x)
    {
        double a = Math.Min(Math.Abs(x), 448);
        int best = 0;
        for (int c = 1; c < E4m3.Length; c++)
        {
            double d = Math.Abs(E4m3[c] - a), db = Math.Abs(E4m3[best] - a);
            if (d < db || (d == db && (c & 1) == 0)) best = c;
        }
        return (byte)(best | (x < 0 ? 0x80 : 0));
    }

    internal static double Decode(byte b) => (b & 0x80) != 0 ? -E4m3[b & 0x7f] : E4m3[b & 0x7f];

    /// <summary>
    /// Quantizes a host pool (slots, kv_heads, head_dim) per (slot, head) with scale max|x| / 448; rows with a NaN
    /// (slots no sequence owns) get a NaN scale, so a kernel that reads them fails the test.
    /// </summary>
    static (byte[] Q, float[] Scales, float[] Dequantized) Quantize(float[] pool, int kvHeads, int headDim)
    {
        long rows = pool.Length / headDim;
        var q = new byte[pool.Length];
        var scales = new float[rows];
        var deq = new float[pool.Length];
        for (long r = 0; r < rows; r++)
        {
            var row = pool.AsSpan((int)(r * headDim), headDim);
            if (float.IsNaN(row[0])) { scales[r] = float.NaN; for (int i = 0; i < headDim; i++) deq[r * headDim + i] = float.NaN; continue; }
            double amax = 0;
            foreach (var x in row) amax = Math.Max(amax, Math.Abs(x));
            float scale = (float)(amax / 448);
            scales[r] = scale;
            for (int i = 0; i < headDim; i++)
            {
                byte b = Encode(scale > 0 ? row[i] / (double)scale : 0);
                q[r * headDim + i] = b;
                deq[r * headDim + i] = (float)(Decode(b) * scale);
            }
        }
        return (q, scales, deq);
    }

    public static TheoryData<string, int, int, int, AttentionPath> Cases => new()
    {
        { "decode", 32, 8, 128, AttentionPath.Auto },
        { "decode", 8, 1, 64, AttentionPath.Flash4Warps },
        { "mixed", 8, 2, 128, AttentionPath.Auto },
        { "mixed", 16, 2, 64, AttentionPath.Flash4Warps32Rows },
        { "mixed", 4, 4, 128, AttentionPath.Flash4Warps32RowsKeys32 },
        { "prefill", 8, 2, 128, AttentionPath.Flash4Warps32Rows },
        { "prefill", 4, 4, 64, AttentionPath.Auto },
        { "prefill", 32, 8, 128, AttentionPath.Auto },   // enough row tiles: Auto takes the fp8 wgmma kernel on sm_90a
        { "mixed", 8, 2, 128, AttentionPath.Hopper },    // wgmma (sm_90a): staged e4m3 tiles converted in shared memory
        { "prefill", 8, 2, 128, AttentionPath.Hopper },
        { "prefill", 4, 4, 128, AttentionPath.Hopper },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void PagedFp8_MatchesReference(string mix, int heads, int kvHeads, int headDim, AttentionPath path)
    {
        Gpu.Require();
        if (path == AttentionPath.Hopper) Gpu.RequireHopper();
        var seqs = AttentionPagedTests.Mix(mix);
        var rng = new TestRng((ulong)(17 * heads + 5 * kvHeads + headDim + mix.Length * 977 + (int)path));
        int kvDim = kvHeads * headDim, qDim = heads * headDim, ldq = qDim + 2 * kvDim, ldo = qDim + 8;
        // Tables scattered over the pool, every slot no sequence owns NaN (see AttentionPagedTests).
        int maxBlocks = seqs.Max(s => (s.Context + BlockSize - 1) / BlockSize) + 1;
        int used = seqs.Sum(s => (s.Context + BlockSize - 1) / BlockSize), numBlocks = used + 7, nanBlock = numBlocks - 1;
        var ids = Enumerable.Range(0, numBlocks - 1).OrderBy(_ => rng.NextDouble()).ToArray();
        var tables = Enumerable.Repeat(nanBlock, seqs.Length * maxBlocks).ToArray();
        var starts = new int[seqs.Length + 1];
        int next = 0;
        for (int s = 0; s < seqs.Length; s++)
        {
            starts[s + 1] = starts[s] + seqs[s].Rows;
            for (int b = 0; b < (seqs[s].Context + BlockSize - 1) / BlockSize; b++) tables[s * maxBlocks + b] = ids[next++];
        }
        long n = (long)numBlocks * BlockSize * kvDim;
        var keys = rng.Array(n, 1.5f);
        var values = rng.Array(n, 1f);
        var owned = new bool[numBlocks * BlockSize];
        for (int s = 0; s < seqs.Length; s++)
            for (int p = 0; p < seqs[s].Context; p++) owned[tables[s * maxBlocks + p / BlockSize] * BlockSize + p % BlockSize] = true;
        for (int slot = 0; slot < owned.Length; slot++)
            if (!owned[slot])
                for (int i = 0; i < kvDim; i++) keys[(long)slot * kvDim + i] = values[(long)slot * kvDim + i] = float.NaN;
        var (qk, sk, dk) = Quantize(keys, kvHeads, headDim);
        var (qv, sv, dv) = Quantize(values, kvHeads, headDim);
        var contexts = seqs.Select(s => s.Context).ToArray();

        int real = starts[^1], total = real + 2;
        var q = rng.Array((long)total * ldq, 1.5f);
        using var dq = new DeviceBuffer<float>(q);
        using var dKeys = new DeviceBuffer<byte>(qk);
        using var dValues = new DeviceBuffer<byte>(qv);
        using var dKs = new DeviceBuffer<float>(sk);
        using var dVs = new DeviceBuffer<float>(sv);
        using var dStarts = new DeviceBuffer<int>(starts);
        using var dCtx = new DeviceBuffer<int>(contexts);
        using var dTables = new DeviceBuffer<int>(tables);
        using var dOut = Gpu.PoisonedBf16((long)total * ldo);
        var cache = AttentionPagedCache.OfFp8(new AttentionPagedFp8(dKeys, dValues, dKs, dVs), numBlocks, BlockSize, kvHeads, headDim);
        var batch = new AttentionPagedBatch(dStarts, dCtx, dTables, maxBlocks, seqs.Length, total, seqs.Max(s => s.Rows), maxBlocks * BlockSize);
        using var attention = new AttentionKernel(Library) { Path = path };
        attention.LaunchPaged(Stream, dq, ldq, cache, batch, dOut, ldo, heads);
        Stream.Synchronize();
        if (mix == "decode") Assert.True(attention.LastLaunch.Splits > 1, $"paged fp8 decode ran without split-K ({attention.LastLaunch})");
        Assert.StartsWith("flash_attn_paged_fp8_", attention.LastLaunch.Kernel);
        bool wgmma = path == AttentionPath.Hopper || (path == AttentionPath.Auto && CudaRuntime.Device.Arch == "sm_90a" && headDim == 128
            && AttentionKernel.HopperPays(seqs.Length, seqs.Max(s => s.Rows), heads, kvHeads));
        Assert.Equal(wgmma, attention.LastLaunch.Kernel.Contains("wgmma"));

        float[] Gather(float[] pool, int s)
        {
            var r = new float[(long)contexts[s] * kvDim];
            for (int pos = 0; pos < contexts[s]; pos++)
            {
                long slot = (long)tables[s * maxBlocks + pos / BlockSize] * BlockSize + pos % BlockSize;
                Array.Copy(pool, slot * kvDim, r, (long)pos * kvDim, kvDim);
            }
            return r;
        }
        var got = Bf16.ToSingles(dOut.ToArray());
        double worst = 0;
        for (int s = 0; s < seqs.Length; s++)
        {
            int rows = seqs[s].Rows;
            if (rows == 0) continue;
            var mine = new float[(long)rows * qDim];
            for (int r = 0; r < rows; r++) Array.Copy(got, (long)(starts[s] + r) * ldo, mine, (long)r * qDim, qDim);
            string what = $"paged fp8 {mix} {path} seq {s} ({rows} rows, context {contexts[s]}) heads {heads}/{kvHeads} d {headDim} {attention.LastLaunch}";
            // The kernel's own arithmetic: exact on the dequantized pool up to bf16 rounding.
            var onDeq = AttentionTests.Reference(q, (long)starts[s] * ldq, ldq, Gather(dk, s), Gather(dv, s), 0, rows, heads, kvHeads, headDim, contexts[s] - rows);
            AttentionTests.AssertClose(mine, onDeq, what + " vs dequantized reference");
            // What fp8 costs against the unquantized cache: no more than quantizing costs the double reference.
            var exact = AttentionTests.Reference(q, (long)starts[s] * ldq, ldq, Gather(keys, s), Gather(values, s), 0, rows, heads, kvHeads, headDim, contexts[s] - rows);
            double maxRef = exact.Max(Math.Abs), num = 0, numQ = 0, den = 0;
            for (int i = 0; i < exact.Length; i++)
            {
                double d = Math.Abs(mine[i] - exact[i]);
                Assert.True(d <= 0.1 * maxRef, $"{what}: index {i}: got {mine[i]}, exact {exact[i]} (max|ref| {maxRef:E3})");
                num += d * d;
                numQ += (onDeq[i] - exact[i]) * (onDeq[i] - exact[i]);
                den += exact[i] * exact[i];
            }
            double rel = Math.Sqrt(num / den), relQ = Math.Sqrt(numQ / den);
            Assert.True(rel <= 5e-2 && rel <= relQ + 5e-3, $"{what}: ||out - exact|| / ||exact|| = {rel:E3} (quantized reference {relQ:E3})");
            worst = Math.Max(worst, rel);
        }
        for (long i = (long)real * ldo; i < got.Length; i++) Assert.True(float.IsNaN(got[i]), $"padding output element {i} was written");
        Gpu.Log($"paged fp8 {mix} {path} heads {heads}/{kvHeads} d {headDim}: worst relative L2 vs unquantized {worst:E2}");
    }

    [Theory]
    [InlineData(4, 128, true)]
    [InlineData(8, 64, false)]
    public void KvWriteFp8_StoresScaledBytesInTheirSlots(int kvHeads, int headDim, bool rope)
    {
        Gpu.Require();
        var rng = new TestRng((ulong)(kvHeads * 300 + headDim + (rope ? 7 : 0)));
        int kvDim = kvHeads * headDim, ld = 3 * kvDim + 5, rows = 21, numBlocks = 9, half = headDim / 2, slotsN = numBlocks * BlockSize;
        var k = rng.Array((long)rows * ld, 2f);
        var v = rng.Array((long)rows * ld, 2f);
        k[3 * ld + 1] = 0;   // a head with a zero and one of all-zero V (scale 0) below
        for (int i = 0; i < headDim; i++) v[2 * ld + i] = 0;
        var kb = rng.Array(kvDim, 0.5f);
        var invFreq = Enumerable.Range(0, half).Select(i => (float)Math.Pow(500000.0, -2.0 * i / headDim)).ToArray();
        var positions = Enumerable.Range(0, rows).Select(r => 3 * r + 1000).ToArray();
        var slots = Enumerable.Range(0, slotsN).OrderBy(_ => rng.NextDouble()).Take(rows).ToArray();
        slots[5] = -1;
        using var dk = new DeviceBuffer<float>(k);
        using var dv = new DeviceBuffer<float>(v);
        using var dkb = new DeviceBuffer<float>(kb);
        using var dFreq = new DeviceBuffer<float>(invFreq);
        using var dPos = new DeviceBuffer<int>(positions);
        using var dSlots = new DeviceBuffer<int>(slots);
        using var kc = new DeviceBuffer<byte>(Enumerable.Repeat((byte)0x7f, slotsN * kvDim).ToArray());
        using var vc = new DeviceBuffer<byte>(Enumerable.Repeat((byte)0x7f, slotsN * kvDim).ToArray());
        using var ks = Gpu.Poisoned((long)slotsN * kvHeads);
        using var vs = Gpu.Poisoned((long)slotsN * kvHeads);
        var cache = AttentionPagedCache.OfFp8(new AttentionPagedFp8(kc, vc, ks, vs), numBlocks, BlockSize, kvHeads, headDim);
        new AttentionKvWriteKernel(Library).Launch(Stream, dk, dv, ld, dkb, null, rope ? dFreq.Span : null, dPos, dSlots, rows, cache);
        Stream.Synchronize();
        var gk = kc.ToArray();
        var gv = vc.ToArray();
        var gks = ks.ToArray();
        var gvs = vs.ToArray();
        var written = new bool[slotsN];
        for (int r = 0; r < rows; r++)
        {
            if (slots[r] < 0) continue;
            written[slots[r]] = true;
            for (int h = 0; h < kvHeads; h++)
            {
                var wantK = new double[headDim];
                var wantV = new double[headDim];
                for (int i = 0; i < half; i++)
                {
                    int c = h * headDim + i;
                    double a = k[(long)r * ld + c] + kb[c], b = k[(long)r * ld + c + half] + kb[c + half];
                    if (rope)
                    {
                        double ang = (double)invFreq[i] * positions[r], co = Math.Cos(ang), sn = Math.Sin(ang);
                        (a, b) = (a * co - b * sn, b * co + a * sn);
                    }
                    (wantK[i], wantK[i + half]) = (a, b);
                    (wantV[i], wantV[i + half]) = (v[(long)r * ld + c], v[(long)r * ld + c + half]);
                }
                foreach (var (want, bytes, scales, name) in new[] { (wantK, gk, gks, "K"), (wantV, gv, gvs, "V") })
                {
                    string what = $"fp8 kv write {name} row {r} slot {slots[r]} head {h}";
                    double amax = want.Max(Math.Abs), scale = scales[slots[r] * kvHeads + h];
                    Assert.True(Math.Abs(scale - amax / 448) <= 1e-4 * amax / 448 + 1e-30, $"{what}: scale {scale}, expected {amax / 448}");
                    for (int i = 0; i < headDim; i++)
                    {
                        double got = Decode(bytes[(long)slots[r] * kvDim + h * headDim + i]) * scale;
                        Assert.True(Math.Abs(got - want[i]) <= Math.Abs(want[i]) / 16 + scale / 1024 + 1e-4 * amax,
                            $"{what} dim {i}: dequantized {got}, expected {want[i]} (scale {scale})");
                    }
                }
            }
        }
        for (int slot = 0; slot < slotsN; slot++)
            if (!written[slot])
                Assert.True(float.IsNaN(gks[slot * kvHeads]) && gv[(long)slot * kvDim] == 0x7f, $"slot {slot} was written but no row maps to it");
    }

    [Fact]
    public void Encode_RoundsToNearestE4m3()
    {
        Assert.Equal(0x7e, Encode(448));
        Assert.Equal(0x7e, Encode(1000));          // saturates, no NaN
        Assert.Equal(0x38, Encode(1.0));           // e = 7, m = 0
        Assert.Equal(0xb8, Encode(-1.0));
        Assert.Equal(0x01, Encode(Math.Pow(2, -9)));
        Assert.Equal(0x08, Encode(1.0625 * 0.015625 * 0.96));   // rounds up into the first normal
        Assert.Equal(1.0, Decode(0x38));
        Assert.Equal(448.0, Decode(0x7e));
    }
}
