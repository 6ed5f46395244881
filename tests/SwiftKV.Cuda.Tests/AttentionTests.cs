// The tensor-core attention kernels (native-kernels/attention_flash.cu; attention_hopper.cu on sm_90a) against a
// CPU reference in double: head_dim 64 and 128, GQA group 1/4/8, odd lengths, chunks at pos0 > 0, decode with split-K, every CTA shape, batched
// sequences with padded strides. Outputs are poisoned with NaN and cache slots past the step hold NaN, so an
// unwritten output or a key read past the causal end fails. Tolerance: bf16 Q and P on the tensor cores add about
// 2^-9 relative per term, so ||out - ref|| / ||ref|| <= 1e-2 and element-wise 2e-2·|ref| + 5e-3·max|ref|.
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Tests;
using SwiftKV.Model;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class AttentionTests : GpuFixtureTest
{
    /// <summary>Causal GQA attention of one sequence in double; q row r at position pos0 + r sees keys 0..pos0 + r.</summary>
    internal static double[] Reference(float[] q, long qOff, int ldq, float[] k, float[] v, long kvOff, int rows, int heads, int kvHeads, int headDim, int pos0)
    {
        int kvDim = kvHeads * headDim, group = heads / kvHeads;
        var want = new double[rows * heads * headDim];
        double scale = 1 / Math.Sqrt(headDim);
        for (int r = 0; r < rows; r++)
            for (int h = 0; h < heads; h++)
            {
                int kvh = h / group, len = pos0 + r + 1;
                var s = new double[len];
                for (int t = 0; t < len; t++)
                {
                    double dot = 0;
                    for (int d = 0; d < headDim; d++) dot += q[qOff + r * ldq + h * headDim + d] * (double)k[kvOff + t * kvDim + kvh * headDim + d];
                    s[t] = dot * scale;
                }
                double max = s.Max(), sum = 0;
                for (int t = 0; t < len; t++) sum += s[t] = Math.Exp(s[t] - max);
                for (int d = 0; d < headDim; d++)
                {
                    double o = 0;
                    for (int t = 0; t < len; t++) o += s[t] * v[kvOff + t * kvDim + kvh * headDim + d];
                    want[(r * heads + h) * headDim + d] = o / sum;
                }
            }
        return want;
    }

    internal static void AssertClose(ReadOnlySpan<float> got, double[] want, string what)
    {
        double maxRef = want.Max(Math.Abs), num = 0, den = 0;
        for (int i = 0; i < want.Length; i++)
        {
            double d = Math.Abs(got[i] - want[i]);
            if (!(d <= 2e-2 * Math.Abs(want[i]) + 5e-3 * maxRef))
                Assert.Fail($"{what}: index {i}: got {got[i]}, expected {want[i]} (|diff| {d:E3}, max|ref| {maxRef:E3})");
            num += d * d;
            den += want[i] * want[i];
        }
        double rel = Math.Sqrt(num / den);
        Assert.True(rel <= 1e-2, $"{what}: ||out - ref|| / ||ref|| = {rel:E3}");
        Gpu.Log($"{what}: ||out - ref|| / ||ref|| = {rel:E2}");
    }

    /// <summary>
    /// The angle table the wgmma kernels rotate q from (rows of [cos of the head_dim/2 pairs | their sin], Llama-3
    /// scaling, built on the CPU by RotaryEmbedding) and the queries rotated on the CPU, for the reference.
    /// </summary>
    static (float[] Table, float[] Rotated) RopeTable(float[] q, int batch, long qbs, int ldq, int rows, int heads, int headDim, int pos0)
    {
        var rope = new RotaryEmbedding(new LlamaConfig { HeadDim = headDim, RopeTheta = 500000, RopeScaling = new Llama3RopeScaling(8, 1, 4, 64) });
        var table = new float[rows * headDim];
        var rotated = (float[])q.Clone();
        var cos = new float[headDim / 2];
        var sin = new float[headDim / 2];
        for (int t = 0; t < rows; t++)
        {
            rope.Angles(pos0 + t, cos, sin);
            cos.CopyTo(table.AsSpan(t * headDim));
            sin.CopyTo(table.AsSpan(t * headDim + headDim / 2));
            for (int b = 0; b < batch; b++)
                RotaryEmbedding.Rotate(rotated.AsSpan((int)(b * qbs + t * ldq), heads * headDim), heads, cos, sin);
        }
        return (table, rotated);
    }

    [Theory]
    [InlineData(37, 4, 4, 64, 0, AttentionPath.Flash4Warps)]      // MHA, odd length, two row tiles
    [InlineData(70, 8, 2, 128, 0, AttentionPath.Flash4Warps)]     // GQA 4, prefill from an empty cache
    [InlineData(70, 8, 2, 128, 0, AttentionPath.Flash8Warps)]
    [InlineData(33, 16, 2, 128, 45, AttentionPath.Flash4Warps)]   // GQA 8, a chunk after 45 cached tokens
    [InlineData(33, 16, 2, 64, 45, AttentionPath.Flash8Warps)]
    [InlineData(130, 4, 1, 128, 17, AttentionPath.Flash8Warps)]   // MQA, several key tiles and row tiles
    [InlineData(1, 32, 8, 128, 300, AttentionPath.Flash4Warps)]   // decode, Llama-3 8B heads, split-K
    [InlineData(1, 8, 1, 64, 777, AttentionPath.Auto)]            // decode, GQA 8, odd context
    [InlineData(3, 8, 1, 64, 1000, AttentionPath.Flash8Warps)]    // SwiftKV-like short step over a long cache
    [InlineData(37, 4, 4, 64, 0, AttentionPath.Flash4Warps32Rows)]         // 32 rows per warp: one partial CTA
    [InlineData(70, 8, 2, 128, 0, AttentionPath.Flash4Warps32Rows)]        // GQA 4, 280 packed rows: 3 row tiles
    [InlineData(33, 16, 2, 128, 45, AttentionPath.Flash4Warps32RowsKeys32)] // GQA 8, chunk after 45 cached tokens
    [InlineData(130, 4, 1, 64, 17, AttentionPath.Flash4Warps32RowsKeys32)]  // MQA, several key and row tiles
    [InlineData(200, 4, 4, 128, 61, AttentionPath.Flash4Warps32Rows)]      // MHA, long chunk, odd pos0
    [InlineData(1, 32, 8, 128, 300, AttentionPath.Flash4Warps32Rows)]      // decode with split-K on the wide shape
    [InlineData(300, 8, 2, 64, 0, AttentionPath.Auto)]                     // Auto takes the wide shape here
    [InlineData(70, 8, 2, 128, 0, AttentionPath.Hopper)]                   // wgmma: GQA 4, 280 packed rows: 3 row tiles
    [InlineData(33, 16, 2, 128, 45, AttentionPath.Hopper)]                 // GQA 8, chunk after 45 cached tokens
    [InlineData(130, 4, 1, 128, 17, AttentionPath.Hopper)]                 // MQA, several key tiles (one partial)
    [InlineData(200, 4, 4, 128, 61, AttentionPath.Hopper)]                 // MHA, long chunk, odd pos0
    [InlineData(1, 32, 8, 128, 300, AttentionPath.Hopper)]                 // one row over a long cache (no split-K)
    [InlineData(600, 32, 8, 128, 7, AttentionPath.Auto)]                   // 8B heads, 152 row tiles: Auto takes wgmma on H100
    public void Flash_MatchesReference(int rows, int heads, int kvHeads, int headDim, int pos0, AttentionPath path)
    {
        Gpu.Require();
        if (path == AttentionPath.Hopper) Gpu.RequireHopper();
        var rng = new TestRng((ulong)(1000 + rows * 7 + heads + headDim + pos0));
        int capacity = pos0 + rows + 5, kvDim = kvHeads * headDim, ldq = heads * headDim + 3 * kvDim;
        var q = rng.Array((long)rows * ldq, 1.5f);
        var kc = Bf16.FromSingles(rng.Array((long)capacity * kvDim, 1.5f));
        var vc = Bf16.FromSingles(rng.Array((long)capacity * kvDim, 1f));
        for (long i = (long)(pos0 + rows) * kvDim; i < kc.Length; i++) kc[i] = vc[i] = Bf16.FromSingle(float.NaN);
        using var dq = new DeviceBuffer<float>(q);
        using var dk = new DeviceBuffer<Bf16>(kc);
        using var dv = new DeviceBuffer<Bf16>(vc);
        using var dOut = Gpu.PoisonedBf16((long)rows * heads * headDim);
        using var attention = new AttentionKernel(Library) { Path = path };
        attention.Launch(Stream, dq, ldq, dk, dv, capacity, dOut, rows, heads, kvHeads, headDim, pos0);
        Stream.Synchronize();
        Assert.StartsWith("flash_attn_", attention.LastLaunch.Kernel);
        if (rows == 1 && path != AttentionPath.Hopper) Assert.True(attention.LastLaunch.Splits > 1, $"decode ran without split-K ({attention.LastLaunch})");
        bool hopper = CudaRuntime.Device.Arch == "sm_90a" && headDim == 128 && AttentionKernel.HopperPays(1, rows, heads, kvHeads);
        if (path == AttentionPath.Auto && hopper) Assert.Equal(AttentionKernel.HopperWsEntry, attention.LastLaunch.Kernel);
        else if (path == AttentionPath.Auto && rows * heads / kvHeads >= 256) Assert.Contains("_m2_", attention.LastLaunch.Kernel);
        var want = Reference(q, 0, ldq, Bf16.ToSingles(kc), Bf16.ToSingles(vc), 0, rows, heads, kvHeads, headDim, pos0);
        AssertClose(Bf16.ToSingles(dOut.ToArray()), want, $"flash {path} rows {rows} heads {heads}/{kvHeads} d {headDim} pos0 {pos0} {attention.LastLaunch}");
    }

    [Theory]
    [InlineData(1, 128, AttentionPath.Flash4Warps)]
    [InlineData(2, 64, AttentionPath.Flash8Warps)]
    [InlineData(3, 128, AttentionPath.Flash4Warps32Rows)]
    [InlineData(2, 40, AttentionPath.Simple)]   // other head dims fall back to the scalar kernel, per sequence
    [InlineData(9, 128, AttentionPath.Hopper)]   // wgmma: padded strides, each sequence's own cache
    public void Batched_EachSequenceMatchesReference(int rows, int headDim, AttentionPath path)
    {
        Gpu.Require();
        if (path == AttentionPath.Hopper) Gpu.RequireHopper();
        var rng = new TestRng((ulong)(77 + rows + headDim));
        int batch = 3, heads = 8, kvHeads = 2, pos0 = 250, capacity = 260, kvDim = kvHeads * headDim, ldq = heads * headDim;
        long qbs = (long)rows * ldq + 4, kvbs = (long)capacity * kvDim + 64, obs = (long)rows * heads * headDim + 8;
        var q = rng.Array(batch * qbs, 1.5f);
        var kf = rng.Array(batch * kvbs, 1.5f);
        var vf = rng.Array(batch * kvbs, 1f);
        var kc = Bf16.FromSingles(kf);
        var vc = Bf16.FromSingles(vf);
        for (int b = 0; b < batch; b++)
            for (long i = b * kvbs + (long)(pos0 + rows) * kvDim; i < (b + 1) * kvbs; i++) kc[i] = vc[i] = Bf16.FromSingle(float.NaN);
        using var dq = new DeviceBuffer<float>(q);
        using var dk = new DeviceBuffer<Bf16>(kc);
        using var dv = new DeviceBuffer<Bf16>(vc);
        using var dOut = Gpu.PoisonedBf16(batch * obs);
        using var attention = new AttentionKernel(Library) { Path = path };
        attention.LaunchBatched(Stream, dq, ldq, qbs, dk, dv, kvbs, capacity, dOut, obs, batch, rows, heads, kvHeads, headDim, pos0);
        Stream.Synchronize();
        var got = Bf16.ToSingles(dOut.ToArray());
        var k = Bf16.ToSingles(kc);
        var v = Bf16.ToSingles(vc);
        for (int b = 0; b < batch; b++)
        {
            var want = Reference(q, b * qbs, ldq, k, v, b * kvbs, rows, heads, kvHeads, headDim, pos0);
            AssertClose(got.AsSpan((int)(b * obs), want.Length), want, $"batched {path} sequence {b} d {headDim} {attention.LastLaunch}");
        }
    }

    /// <summary>
    /// Both contiguous wgmma entries against the reference: the warp-specialised one (TMA producer, pipelined consumers,
    /// 128-key tiles; Auto's default) and the two-CTA one. Sequences with padded strides, NaN in every cache past the
    /// step (the TMA zero-fills past the tensor map's extent, the cp.async path past kv_len), outputs poisoned, queries
    /// optionally rotated on load; 1, 2, 3 and 5 key tiles of 128 (the pipelined loop peels its first and last tiles).
    /// </summary>
    [Theory]
    [InlineData(1, 70, 8, 2, 0, false, true, 0)]      // one key tile: no pipelined step
    [InlineData(1, 70, 8, 2, 0, false, false, 0)]
    [InlineData(2, 130, 4, 1, 17, true, true, 0)]     // two tiles (one step, then the last P·V), MQA, rope on load
    [InlineData(2, 130, 4, 1, 17, true, false, 0)]
    [InlineData(1, 200, 4, 4, 61, false, true, 0)]    // three tiles: one unrolled pair, MHA, odd pos0
    [InlineData(3, 9, 8, 2, 250, true, true, 0)]      // short chunks over a cache, three sequences at one position
    [InlineData(3, 9, 8, 2, 250, true, false, 0)]
    [InlineData(1, 1, 32, 8, 300, false, true, 0)]    // one row over a long cache
    [InlineData(1, 600, 32, 8, 7, true, true, 0)]     // Llama-3 8B heads, 5 key tiles, 19 row tiles x 8 KV heads
    [InlineData(1, 600, 32, 8, 7, true, false, 0)]
    [InlineData(2, 301, 28, 4, 3, true, true, 3)]     // GQA 7 (row tiles split tokens' heads), 3 CTAs walk 136 items
    [InlineData(1, 257, 64, 8, 0, false, true, 2)]    // GQA 8, 2 CTAs walk 136 items of 1-3 tiles
    [InlineData(2, 130, 4, 1, 17, true, true, 1)]     // one CTA walks every item: barrier phases across items
    public void Hopper_BothEntries_MatchReference(int batch, int rows, int heads, int kvHeads, int pos0, bool rope, bool warpSpecialized, int maxCtas)
    {
        Gpu.RequireHopper();
        const int headDim = 128;
        var rng = new TestRng((ulong)(5000 + batch + rows + heads + pos0));
        int capacity = pos0 + rows + 9, kvDim = kvHeads * headDim, ldq = heads * headDim + 2 * kvDim;
        long qbs = (long)rows * ldq + 4, kvbs = (long)capacity * kvDim + 64, obs = (long)rows * heads * headDim + 8;
        var q = rng.Array(batch * qbs, 1.5f);
        var kc = Bf16.FromSingles(rng.Array(batch * kvbs, 1.5f));
        var vc = Bf16.FromSingles(rng.Array(batch * kvbs, 1f));
        for (int b = 0; b < batch; b++)
            for (long i = b * kvbs + (long)(pos0 + rows) * kvDim; i < (b + 1) * kvbs; i++) kc[i] = vc[i] = Bf16.FromSingle(float.NaN);
        var (table, rotated) = rope ? RopeTable(q, batch, qbs, ldq, rows, heads, headDim, pos0) : (null, q);
        using var dq = new DeviceBuffer<float>(q);
        using var dk = new DeviceBuffer<Bf16>(kc);
        using var dv = new DeviceBuffer<Bf16>(vc);
        using var dt = table is null ? null : new DeviceBuffer<float>(table);
        using var dOut = Gpu.PoisonedBf16(batch * obs);
        using var attention = new AttentionKernel(Library) { Path = AttentionPath.Hopper, UseWarpSpecialized = warpSpecialized };
        if (maxCtas > 0) attention.MaxPersistentCtas = maxCtas;
        attention.LaunchBatched(Stream, dq, ldq, qbs, dk, dv, kvbs, capacity, dOut, obs, batch, rows, heads, kvHeads, headDim, pos0, dt?.Span);
        Stream.Synchronize();
        if (warpSpecialized) Assert.Null(attention.WarpSpecializedUnavailable);
        Assert.Equal(warpSpecialized ? AttentionKernel.HopperWsEntry : AttentionKernel.HopperEntry, attention.LastLaunch.Kernel);
        Assert.Equal(warpSpecialized ? 1 : 0, attention.WarpSpecializedLaunches);
        var got = Bf16.ToSingles(dOut.ToArray());
        var k = Bf16.ToSingles(kc);
        var v = Bf16.ToSingles(vc);
        for (int b = 0; b < batch; b++)
        {
            var want = Reference(rotated, b * qbs, ldq, k, v, b * kvbs, rows, heads, kvHeads, headDim, pos0);
            AssertClose(got.AsSpan((int)(b * obs), want.Length), want, $"{attention.LastLaunch.Kernel} batch {batch} rows {rows} heads {heads}/{kvHeads} pos0 {pos0} rope {rope}, sequence {b}");
            // The padding after each sequence's output stays poisoned.
            for (long i = b * obs + want.Length; i < (b + 1) * obs; i++) Assert.True(float.IsNaN(got[i]), $"the kernel wrote past sequence {b}'s output (element {i})");
        }
    }

    /// <summary>
    /// Unrotated queries and an angle table (built on the CPU here): the wgmma kernel rotates q as it stages it and
    /// must match attention over the CPU-rotated queries; other paths refuse the table.
    /// </summary>
    [Theory]
    [InlineData(1, 70, 8, 2, 0)]      // GQA 4, 3 row tiles
    [InlineData(1, 33, 16, 2, 45)]    // a chunk after 45 cached tokens
    [InlineData(2, 130, 4, 1, 17)]    // two sequences at the same positions (one table), MQA
    public void Hopper_RotatesQueriesOnLoad_MatchesRotatedReference(int batch, int rows, int heads, int kvHeads, int pos0)
    {
        Gpu.RequireHopper();
        const int headDim = 128;
        var rng = new TestRng((ulong)(3000 + rows + heads + pos0));
        int capacity = pos0 + rows + 3, kvDim = kvHeads * headDim, ldq = heads * headDim + 3 * kvDim;
        long qbs = (long)rows * ldq, kvbs = (long)capacity * kvDim, obs = (long)rows * heads * headDim;
        var q = rng.Array(batch * qbs, 1.5f);
        var kc = Bf16.FromSingles(rng.Array(batch * kvbs, 1.5f));
        var vc = Bf16.FromSingles(rng.Array(batch * kvbs, 1f));
        var (table, rotated) = RopeTable(q, batch, qbs, ldq, rows, heads, headDim, pos0);
        using var dq = new DeviceBuffer<float>(q);
        using var dk = new DeviceBuffer<Bf16>(kc);
        using var dv = new DeviceBuffer<Bf16>(vc);
        using var dt = new DeviceBuffer<float>(table);
        using var dOut = Gpu.PoisonedBf16(batch * obs);
        using var attention = new AttentionKernel(Library) { Path = AttentionPath.Hopper };
        Assert.True(attention.RotatesQueriesOnLoad(dq, ldq, qbs, batch, rows, heads, kvHeads, headDim));
        attention.LaunchBatched(Stream, dq, ldq, qbs, dk, dv, kvbs, capacity, dOut, obs, batch, rows, heads, kvHeads, headDim, pos0, dt.Span);
        Stream.Synchronize();
        Assert.Equal(AttentionKernel.HopperWsEntry, attention.LastLaunch.Kernel);
        Assert.Equal(q, dq.ToArray());   // the queries in memory stay unrotated
        var got = Bf16.ToSingles(dOut.ToArray());
        var k = Bf16.ToSingles(kc);
        var v = Bf16.ToSingles(vc);
        for (int b = 0; b < batch; b++)
        {
            var want = Reference(rotated, b * qbs, ldq, k, v, b * kvbs, rows, heads, kvHeads, headDim, pos0);
            AssertClose(got.AsSpan((int)(b * obs), want.Length), want, $"rope on load, sequence {b}");
        }

        // Only the wgmma kernel takes a table: another path says so instead of attending over unrotated queries.
        attention.Path = AttentionPath.Flash4Warps32Rows;
        Assert.False(attention.RotatesQueriesOnLoad(dq, ldq, qbs, batch, rows, heads, kvHeads, headDim));
        var e = Assert.Throws<ArgumentException>(() =>
            attention.LaunchBatched(Stream, dq, ldq, qbs, dk, dv, kvbs, capacity, dOut, obs, batch, rows, heads, kvHeads, headDim, pos0, dt.Span));
        Assert.Contains("only the wgmma kernel", e.Message);
    }

    /// <summary>
    /// Rotated bf16 queries (the fused [q; k; v] GEMM's output, here rounded on the CPU, in rows wider than the heads):
    /// the warp-specialised entry stages them as they are and must match attention over the same queries; with the
    /// entry off, or a step too short for Auto's wgmma rule, the launch refuses them instead of reading bf16 as fp32.
    /// </summary>
    [Theory]
    [InlineData(300, 32, 8, 0)]       // Llama 3 8B heads, 3 row tiles per KV head
    [InlineData(140, 16, 2, 45)]      // a chunk after 45 cached tokens
    public void Hopper_RotatedBf16Queries_MatchReference(int rows, int heads, int kvHeads, int pos0)
    {
        Gpu.RequireHopper();
        const int headDim = 128;
        var rng = new TestRng((ulong)(3200 + rows + heads + pos0));
        int capacity = pos0 + rows + 3, kvDim = kvHeads * headDim, ldq = heads * headDim + 2 * kvDim;
        var qb = Bf16.FromSingles(rng.Array((long)rows * ldq, 1.5f));
        var kc = Bf16.FromSingles(rng.Array((long)capacity * kvDim, 1.5f));
        var vc = Bf16.FromSingles(rng.Array((long)capacity * kvDim, 1f));
        using var dq = new DeviceBuffer<Bf16>(qb);
        using var dk = new DeviceBuffer<Bf16>(kc);
        using var dv = new DeviceBuffer<Bf16>(vc);
        using var dOut = Gpu.PoisonedBf16((long)rows * heads * headDim);
        using var attention = new AttentionKernel(Library) { Path = AttentionPath.Hopper };
        Assert.True(attention.TakesRotatedBf16Queries(rows, heads, kvHeads, headDim));
        attention.LaunchRotatedBf16(Stream, dq, ldq, dk, dv, capacity, dOut, rows, heads, kvHeads, pos0);
        Stream.Synchronize();
        Assert.Equal(AttentionKernel.HopperWsEntry, attention.LastLaunch.Kernel);
        var want = Reference(Bf16.ToSingles(qb), 0, ldq, Bf16.ToSingles(kc), Bf16.ToSingles(vc), 0, rows, heads, kvHeads, headDim, pos0);
        AssertClose(Bf16.ToSingles(dOut.ToArray()), want, "bf16 queries");

        attention.Path = AttentionPath.Auto;
        Assert.False(attention.TakesRotatedBf16Queries(8, heads, kvHeads, headDim));   // a short step: Auto keeps the flash kernel
        attention.Path = AttentionPath.Hopper;
        attention.UseWarpSpecialized = false;
        Assert.False(attention.TakesRotatedBf16Queries(rows, heads, kvHeads, headDim));
        var e = Assert.Throws<ArgumentException>(() => attention.LaunchRotatedBf16(Stream, dq, ldq, dk, dv, capacity, dOut, rows, heads, kvHeads, pos0));
        Assert.Contains("warp-specialised", e.Message);
    }

    /// <summary>
    /// The engine's pair end to end: RopeKvKernel writing the angle table, then the wgmma kernel rotating q from it,
    /// against RopeKvKernel rotating q in memory and the same launch without a table (Llama-3 8B heads, 300 rows).
    /// </summary>
    [Fact]
    public void RopeKvTable_ThenHopper_EqualsRotatedPath()
    {
        Gpu.RequireHopper();
        var rng = new TestRng(3100);
        int rows = 300, heads = 32, kvHeads = 8, headDim = 128, qDim = heads * headDim, kvDim = kvHeads * headDim;
        int ld = qDim + 2 * kvDim, pos0 = 21, capacity = pos0 + rows;
        var cfg = new LlamaConfig { HeadDim = headDim, RopeTheta = 500000, RopeScaling = new Llama3RopeScaling(8, 1, 4, 64) };
        var inv = RotaryEmbedding.ComputeInvFreq(headDim, cfg.RopeTheta, cfg.RopeScaling);
        var prefix = Bf16.FromSingles(rng.Array((long)capacity * kvDim, 1.5f));   // the cached positions before the step
        var qkv = rng.Array((long)rows * ld, 1.5f);
        using var df = new DeviceBuffer<float>(inv);
        using var table = new DeviceBuffer<float>((long)rows * headDim);
        var outs = new List<float[]>();
        foreach (bool onLoad in new[] { true, false })
        {
            using var dq = new DeviceBuffer<float>(qkv);
            using var kc = new DeviceBuffer<Bf16>(prefix);
            using var vc = new DeviceBuffer<Bf16>(prefix);
            using var dOut = Gpu.PoisonedBf16((long)rows * qDim);
            new RopeKvKernel(Library).Launch(Stream, dq, ld, null, null, null, df, rows, heads, kvHeads, headDim, pos0, kc, vc, capacity,
                null, onLoad ? table.Span : null);
            using var attention = new AttentionKernel(Library) { Path = AttentionPath.Hopper };
            attention.Launch(Stream, dq, ld, kc, vc, capacity, dOut, rows, heads, kvHeads, headDim, pos0, onLoad ? table.Span : null);
            Stream.Synchronize();
            outs.Add(Bf16.ToSingles(dOut.ToArray()));
        }
        // The same fp32 rotation either way, then one bf16 rounding of q: equal up to an occasional last-bit flip.
        Gpu.Close(outs[0], outs[1].Select(f => (double)f).ToArray(), 1.0 / 128, 1e-3, "rope on load vs rotated q");
    }

    /// <summary>
    /// A prefill-sized batch whose query rows are not 16-byte aligned (odd row stride): Auto must not take the wgmma
    /// kernel (it reads Q as float4) but the flash kernel, which reads such rows element by element, and still match.
    /// </summary>
    [Fact]
    public void Auto_UnalignedQueries_FallBackToFlash()
    {
        Gpu.Require();
        var rng = new TestRng(2024);
        int batch = 8, rows = 130, heads = 32, kvHeads = 8, headDim = 128, capacity = rows, kvDim = kvHeads * headDim;
        int ldq = heads * headDim + 1;
        long qbs = (long)rows * ldq, kvbs = (long)capacity * kvDim, obs = (long)rows * heads * headDim;
        var q = rng.Array(batch * qbs, 1.5f);
        var kc = Bf16.FromSingles(rng.Array(batch * kvbs, 1.5f));
        var vc = Bf16.FromSingles(rng.Array(batch * kvbs, 1f));
        using var dq = new DeviceBuffer<float>(q);
        using var dk = new DeviceBuffer<Bf16>(kc);
        using var dv = new DeviceBuffer<Bf16>(vc);
        using var dOut = Gpu.PoisonedBf16(batch * obs);
        using var attention = new AttentionKernel(Library);
        attention.LaunchBatched(Stream, dq, ldq, qbs, dk, dv, kvbs, capacity, dOut, obs, batch, rows, heads, kvHeads, headDim, 0);
        Stream.Synchronize();
        Assert.DoesNotContain("wgmma", attention.LastLaunch.Kernel);
        var got = Bf16.ToSingles(dOut.ToArray());
        var k = Bf16.ToSingles(kc);
        var v = Bf16.ToSingles(vc);
        for (int b = 0; b < batch; b += 3)
        {
            var want = Reference(q, b * qbs, ldq, k, v, b * kvbs, rows, heads, kvHeads, headDim, 0);
            AssertClose(got.AsSpan((int)(b * obs), want.Length), want, $"unaligned queries, sequence {b} {attention.LastLaunch}");
        }
    }

    [Fact]
    public void Launch_RejectsBadShapes()
    {
        Gpu.Require();
        using var q = new DeviceBuffer<float>(64 * 8);
        using var kv = new DeviceBuffer<Bf16>(16 * 64);
        using var o = new DeviceBuffer<Bf16>(64 * 8);
        using var attention = new AttentionKernel(Library) { Path = AttentionPath.Flash4Warps };
        // head_dim 32 has no flash instance: the pinned path says so instead of launching.
        var e = Assert.Throws<ArgumentException>(() => attention.Launch(Stream, q, 64, kv, kv, 16, o, 1, 2, 1, 32, 0));
        Assert.Contains("head_dim 64 or 128", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => attention.Launch(Stream, q, 128, kv, kv, 8, o, 1, 1, 1, 64, 8));   // past the cache
        Assert.Throws<ArgumentOutOfRangeException>(() => attention.Launch(Stream, q, 192, kv, kv, 16, o, 1, 3, 2, 64, 0));  // heads % kv_heads
        // The wgmma kernel pinned where it cannot run (head_dim 64; on other GPUs also the arch) names the reason.
        attention.Path = AttentionPath.Hopper;
        e = Assert.Throws<ArgumentException>(() => attention.Launch(Stream, q, 64, kv, kv, 16, o, 1, 1, 1, 64, 0));
        Assert.Contains("wgmma kernel cannot run", e.Message);
        // Misaligned caches or outputs are named, not launched (a misaligned 16-byte copy would fault the context).
        attention.Path = AttentionPath.Auto;
        e = Assert.Throws<ArgumentException>(() => attention.Launch(Stream, q, 64, kv.Span.Slice(1), kv, 8, o, 1, 1, 1, 64, 0));
        Assert.Contains("16-byte", e.Message);
        e = Assert.Throws<ArgumentException>(() => attention.Launch(Stream, q, 64, kv, kv, 8, o.Span.Slice(1), 1, 1, 1, 64, 0));
        Assert.Contains("4-byte", e.Message);
    }
}
