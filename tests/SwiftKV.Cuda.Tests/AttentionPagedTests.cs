// The paged, varlen attention launch (flash_attn_paged_*) and the paged KV write (attention_kv_write.cu) against
// CPU references in double. Several sequences of different lengths share one launch (prefill chunks next to decode
// tokens), their block tables are scattered over the pool in random order, GQA 1/4/8, head_dim 64/128, every paged
// CTA shape, split-K. Outputs are poisoned with NaN; every table entry a sequence may not read points at a block of
// NaN and slots past a sequence's context hold NaN, so a read through the wrong block or past the causal end fails.
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Tests;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class AttentionPagedTests : GpuFixtureTest
{
    const int BlockSize = 16;

    /// <summary>A host pool with scattered block tables for sequences of the given (query rows, context) shapes.</summary>
    sealed class Pool
    {
        public required int[] Starts, Contexts, Tables;
        public required int MaxBlocks, NumBlocks, NaNBlock;
        public required Bf16[] Keys, Values;
    }

    static Pool MakePool(TestRng rng, (int Rows, int Context)[] seqs, int kvDim, int BlockSize = BlockSize)
    {
        int maxBlocks = seqs.Max(s => (s.Context + BlockSize - 1) / BlockSize) + 1;
        int used = seqs.Sum(s => (s.Context + BlockSize - 1) / BlockSize);
        int numBlocks = used + 7, nanBlock = numBlocks - 1;
        // A random permutation of the pool's first blocks, handed out in order: tables are scattered and interleaved.
        var ids = Enumerable.Range(0, numBlocks - 1).ToArray();
        for (int i = ids.Length - 1; i > 0; i--)
        {
            int j = (int)(rng.NextDouble() * (i + 1));
            (ids[i], ids[j]) = (ids[j], ids[i]);
        }
        var tables = Enumerable.Repeat(nanBlock, seqs.Length * maxBlocks).ToArray();
        var starts = new int[seqs.Length + 1];
        int next = 0;
        for (int s = 0; s < seqs.Length; s++)
        {
            starts[s + 1] = starts[s] + seqs[s].Rows;
            for (int b = 0; b < (seqs[s].Context + BlockSize - 1) / BlockSize; b++) tables[s * maxBlocks + b] = ids[next++];
        }
        long n = (long)numBlocks * BlockSize * kvDim;
        var keys = Bf16.FromSingles(rng.Array(n, 1.5f));
        var values = Bf16.FromSingles(rng.Array(n, 1f));
        var nan = Bf16.FromSingle(float.NaN);
        // Every slot no sequence owns holds NaN: the spare blocks, the NaN block and the tail of each last block.
        var owned = new bool[numBlocks * BlockSize];
        for (int s = 0; s < seqs.Length; s++)
            for (int p = 0; p < seqs[s].Context; p++) owned[tables[s * maxBlocks + p / BlockSize] * BlockSize + p % BlockSize] = true;
        for (int slot = 0; slot < owned.Length; slot++)
            if (!owned[slot])
                for (int i = 0; i < kvDim; i++) keys[(long)slot * kvDim + i] = values[(long)slot * kvDim + i] = nan;
        return new Pool
        {
            Starts = starts, Contexts = seqs.Select(s => s.Context).ToArray(), Tables = tables,
            MaxBlocks = maxBlocks, NumBlocks = numBlocks, NaNBlock = nanBlock, Keys = keys, Values = values,
        };
    }

    /// <summary>Sequence s's positions 0..context-1 gathered through its block table into (context, kv_dim).</summary>
    static float[] Gather(Bf16[] pool, Pool p, int s, int kvDim, int BlockSize = BlockSize)
    {
        var r = new float[(long)p.Contexts[s] * kvDim];
        for (int pos = 0; pos < p.Contexts[s]; pos++)
        {
            long slot = (long)p.Tables[s * p.MaxBlocks + pos / BlockSize] * BlockSize + pos % BlockSize;
            for (int i = 0; i < kvDim; i++) r[(long)pos * kvDim + i] = pool[slot * kvDim + i].ToSingle();
        }
        return r;
    }

    public static TheoryData<string, int, int, int, AttentionPath> Cases => new()
    {
        // name, heads, kv_heads, head_dim, path; the sequence mix is picked by name below.
        { "decode", 32, 8, 128, AttentionPath.Auto },
        { "decode", 8, 1, 64, AttentionPath.Flash4Warps },
        { "mixed", 8, 2, 128, AttentionPath.Auto },
        { "mixed", 16, 2, 64, AttentionPath.Flash4Warps32Rows },
        { "mixed", 4, 4, 128, AttentionPath.Flash4Warps32RowsKeys32 },
        { "mixed", 8, 1, 128, AttentionPath.Flash4Warps },
        { "prefill", 8, 2, 128, AttentionPath.Flash4Warps32Rows },
        { "prefill", 4, 4, 64, AttentionPath.Auto },
        { "prefill", 32, 8, 128, AttentionPath.Auto },   // enough row tiles: Auto takes the wgmma kernel on sm_90a
        { "mixed", 8, 2, 128, AttentionPath.Hopper },    // wgmma (sm_90a): empty, decode and prefill rows in one launch
        { "mixed", 8, 1, 128, AttentionPath.Hopper },
        { "prefill", 8, 2, 128, AttentionPath.Hopper },
        { "prefill", 4, 4, 128, AttentionPath.Hopper },
    };

    /// <summary>The sequence mixes (rows this step, context after it) every paged test draws from, by name.</summary>
    internal static (int Rows, int Context)[] Mix(string name) => name switch
    {
        "decode" => [(1, 1), (1, 17), (1, 300), (1, 65), (1, 1000), (1, 16)],
        "mixed" => [(37, 37), (1, 200), (70, 133), (0, 0), (16, 16), (3, 1000), (1, 33)],
        _ => [(257, 257), (130, 150), (33, 81)],
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Paged_MatchesReference(string mix, int heads, int kvHeads, int headDim, AttentionPath path)
    {
        Gpu.Require();
        if (path == AttentionPath.Hopper) Gpu.RequireHopper();
        var rng = new TestRng((ulong)(31 * heads + 7 * kvHeads + headDim + mix.Length * 1000 + (int)path));
        // The wgmma path has two bf16 entries: at this block size (16) the default takes the two-CTA one; the
        // warp-specialised one is forced here (its rule asks for blocks of >= 64), so both are checked.
        foreach (bool? ws in path == AttentionPath.Hopper ? new bool?[] { true, null } : [null])
            CheckPaged(rng, Mix(mix), mix, heads, kvHeads, headDim, path, ws, BlockSize);
    }

    /// <summary>
    /// The warp-specialised paged entry over other block sizes: one TMA box per block (8, 64 positions) or a 128-key
    /// part of a larger block (256), with the same NaN-filled slots past every sequence's context; forced at 8, by Auto's
    /// default rule (blocks of >= 64) at 64 and 256, where Auto must take it.
    /// </summary>
    [Theory]
    [InlineData(8)]
    [InlineData(64)]
    [InlineData(256)]
    public void Hopper_Paged_BlockSizes_MatchReference(int blockSize)
    {
        Gpu.RequireHopper();
        var rng = new TestRng((ulong)(9000 + blockSize));
        bool? force = blockSize < 64 ? true : null;
        CheckPaged(rng, Mix("prefill"), "prefill", 8, 2, 128, AttentionPath.Hopper, force, blockSize);
        CheckPaged(rng, Mix("mixed"), "mixed", 32, 8, 128, AttentionPath.Hopper, force, blockSize);
        CheckPaged(rng, Mix("prefill"), "prefill", 32, 8, 128, AttentionPath.Auto, force, blockSize);
        // GQA 7, and two CTAs walking every item (empty sequences' items skipped alike by producer and consumers).
        CheckPaged(rng, Mix("mixed"), "mixed", 28, 4, 128, AttentionPath.Hopper, force, blockSize, maxCtas: 2);
    }

    /// <summary>One paged launch against the reference. forceWs true: the warp-specialised entry at any block size of
    /// >= 8; null: the default rule (warp-specialised for blocks of >= 64 on sm_90a, else the two-CTA entry).</summary>
    void CheckPaged(TestRng rng, (int Rows, int Context)[] seqs, string mix, int heads, int kvHeads, int headDim, AttentionPath path, bool? forceWs, int blockSize,
        int maxCtas = 0)
    {
        int kvDim = kvHeads * headDim, qDim = heads * headDim, ldq = qDim + 2 * kvDim, ldo = qDim + 8;
        var p = MakePool(rng, seqs, kvDim, blockSize);
        int real = p.Starts[^1], total = real + 2;   // two padding rows past the last sequence stay untouched
        var q = rng.Array((long)total * ldq, 1.5f);
        using var dq = new DeviceBuffer<float>(q);
        using var dk = new DeviceBuffer<Bf16>(p.Keys);
        using var dv = new DeviceBuffer<Bf16>(p.Values);
        using var dStarts = new DeviceBuffer<int>(p.Starts);
        using var dCtx = new DeviceBuffer<int>(p.Contexts);
        using var dTables = new DeviceBuffer<int>(p.Tables);
        using var dOut = Gpu.PoisonedBf16((long)total * ldo);
        AttentionPagedBatch.CheckHost(p.Starts, p.Contexts, p.Tables, p.MaxBlocks, blockSize, p.NumBlocks, total);
        var cache = new AttentionPagedCache(dk, dv, p.NumBlocks, blockSize, kvHeads, headDim);
        var batch = new AttentionPagedBatch(dStarts, dCtx, dTables, p.MaxBlocks, seqs.Length, total,
            seqs.Max(s => s.Rows), p.MaxBlocks * blockSize);
        using var attention = new AttentionKernel(Library) { Path = path };
        if (forceWs == true) attention.WarpSpecializedPagedMinBlock = 8;
        if (maxCtas > 0) attention.MaxPersistentCtas = maxCtas;
        bool ws = forceWs == true || blockSize >= 64;
        attention.LaunchPaged(Stream, dq, ldq, cache, batch, dOut, ldo, heads);
        Stream.Synchronize();
        if (mix == "decode") Assert.True(attention.LastLaunch.Splits > 1, $"paged decode ran without split-K ({attention.LastLaunch})");
        Assert.StartsWith("flash_attn_paged_", attention.LastLaunch.Kernel);
        bool wgmma = path == AttentionPath.Hopper || (path == AttentionPath.Auto && CudaRuntime.Device.Arch == "sm_90a" && headDim == 128
            && AttentionKernel.HopperPays(seqs.Length, seqs.Max(s => s.Rows), heads, kvHeads));
        Assert.Equal(wgmma, attention.LastLaunch.Kernel.Contains("wgmma"));
        if (wgmma) Assert.Equal(ws ? AttentionKernel.HopperWsPagedEntry : "flash_attn_paged_wgmma_d128_n64_g2", attention.LastLaunch.Kernel);

        var got = Bf16.ToSingles(dOut.ToArray());
        for (int s = 0; s < seqs.Length; s++)
        {
            int rows = seqs[s].Rows;
            if (rows == 0) continue;
            var want = AttentionTests.Reference(q, (long)p.Starts[s] * ldq, ldq, Gather(p.Keys, p, s, kvDim, blockSize), Gather(p.Values, p, s, kvDim, blockSize), 0,
                rows, heads, kvHeads, headDim, seqs[s].Context - rows);
            var mine = new float[(long)rows * qDim];
            for (int r = 0; r < rows; r++) Array.Copy(got, (long)(p.Starts[s] + r) * ldo, mine, (long)r * qDim, qDim);
            AttentionTests.AssertClose(mine, want, $"paged {mix} {path} block {blockSize} seq {s} ({rows} rows, context {seqs[s].Context}) heads {heads}/{kvHeads} d {headDim} {attention.LastLaunch}");
        }
        for (long i = (long)real * ldo; i < got.Length; i++) Assert.True(float.IsNaN(got[i]), $"padding output element {i} was written");
    }

    [Theory]
    [InlineData(4, 128, true)]
    [InlineData(8, 64, false)]
    public void KvWrite_StoresRowsInTheirSlots(int kvHeads, int headDim, bool rope)
    {
        Gpu.Require();
        var rng = new TestRng((ulong)(kvHeads * 100 + headDim + (rope ? 1 : 0)));
        int kvDim = kvHeads * headDim, ld = 3 * kvDim + 5, rows = 21, numBlocks = 9, half = headDim / 2;
        var k = rng.Array((long)rows * ld, 2f);
        var v = rng.Array((long)rows * ld, 2f);
        var kb = rng.Array(kvDim, 0.5f);
        var vb = rng.Array(kvDim, 0.5f);
        var invFreq = Enumerable.Range(0, half).Select(i => (float)Math.Pow(500000.0, -2.0 * i / headDim)).ToArray();
        var positions = Enumerable.Range(0, rows).Select(r => 3 * r + 1000).ToArray();
        // Distinct random slots, one row skipped (slot -1).
        var slots = Enumerable.Range(0, numBlocks * BlockSize).OrderBy(_ => rng.NextDouble()).Take(rows).ToArray();
        slots[5] = -1;
        using var dk = new DeviceBuffer<float>(k);
        using var dv = new DeviceBuffer<float>(v);
        using var dkb = new DeviceBuffer<float>(kb);
        using var dvb = new DeviceBuffer<float>(vb);
        using var dFreq = new DeviceBuffer<float>(invFreq);
        using var dPos = new DeviceBuffer<int>(positions);
        using var dSlots = new DeviceBuffer<int>(slots);
        using var kc = Gpu.PoisonedBf16((long)numBlocks * BlockSize * kvDim);
        using var vc = Gpu.PoisonedBf16((long)numBlocks * BlockSize * kvDim);
        var cache = new AttentionPagedCache(kc, vc, numBlocks, BlockSize, kvHeads, headDim);
        new AttentionKvWriteKernel(Library).Launch(Stream, dk, dv, ld, dkb, dvb, rope ? dFreq.Span : null, dPos, dSlots, rows, cache);
        Stream.Synchronize();
        var gotK = Bf16.ToSingles(kc.ToArray());
        var gotV = Bf16.ToSingles(vc.ToArray());
        var written = new bool[numBlocks * BlockSize];
        for (int r = 0; r < rows; r++)
        {
            if (slots[r] < 0) continue;
            written[slots[r]] = true;
            var wantK = new double[kvDim];
            var wantV = new double[kvDim];
            for (int h = 0; h < kvHeads; h++)
                for (int i = 0; i < half; i++)
                {
                    int c = h * headDim + i;
                    double a = k[(long)r * ld + c] + kb[c], b = k[(long)r * ld + c + half] + kb[c + half];
                    if (rope)
                    {
                        double ang = (double)invFreq[i] * positions[r], co = Math.Cos(ang), sn = Math.Sin(ang);
                        (a, b) = (a * co - b * sn, b * co + a * sn);
                    }
                    wantK[c] = a;
                    wantK[c + half] = b;
                    wantV[c] = v[(long)r * ld + c] + vb[c];
                    wantV[c + half] = v[(long)r * ld + c + half] + vb[c + half];
                }
            Gpu.Close(gotK.AsSpan((int)((long)slots[r] * kvDim), kvDim), wantK, 1e-2, 1e-3, $"paged kv write K row {r} slot {slots[r]}");
            Gpu.Close(gotV.AsSpan((int)((long)slots[r] * kvDim), kvDim), wantV, 1e-2, 1e-3, $"paged kv write V row {r} slot {slots[r]}");
        }
        for (int slot = 0; slot < written.Length; slot++)
            if (!written[slot])
                Assert.True(float.IsNaN(gotK[slot * kvDim]) && float.IsNaN(gotV[slot * kvDim + kvDim - 1]), $"slot {slot} was written but no row maps to it");
    }

    /// <summary>
    /// The fused launch for a [q | k | v] row (paged_rope_qkv_write_bf16) against RopeRowsKernel then the K/V write:
    /// the same bits in q and in every slot (untouched slots stay poisoned), a skipped row's q still rotated.
    /// </summary>
    [Theory]
    [InlineData(8, 2, 128)]
    [InlineData(4, 4, 64)]
    public void KvWriteWithQueries_SameBitsAsRopeRowsThenKvWrite(int heads, int kvHeads, int headDim)
    {
        Gpu.Require();
        var rng = new TestRng((ulong)(heads * 1000 + kvHeads * 10 + headDim));
        int qDim = heads * headDim, kvDim = kvHeads * headDim, ld = qDim + 2 * kvDim + 3, rows = 13, numBlocks = 6, half = headDim / 2;
        var qkv = rng.Array((long)rows * ld, 2f);
        var qb = rng.Array(qDim, 0.5f);
        var kb = rng.Array(kvDim, 0.5f);
        var vb = rng.Array(kvDim, 0.5f);
        var invFreq = Enumerable.Range(0, half).Select(i => (float)Math.Pow(500000.0, -2.0 * i / headDim)).ToArray();
        var positions = Enumerable.Range(0, rows).Select(r => 7 * r + 300).ToArray();
        var slots = Enumerable.Range(0, numBlocks * BlockSize).OrderBy(_ => rng.NextDouble()).Take(rows).ToArray();
        slots[4] = -1;
        using var dqb = new DeviceBuffer<float>(qb);
        using var dkb = new DeviceBuffer<float>(kb);
        using var dvb = new DeviceBuffer<float>(vb);
        using var dFreq = new DeviceBuffer<float>(invFreq);
        using var dPos = new DeviceBuffer<int>(positions);
        using var dSlots = new DeviceBuffer<int>(slots);
        (float[] Q, ushort[] K, ushort[] V) Run(bool fused)
        {
            using var dq = new DeviceBuffer<float>(qkv);
            using var kc = Gpu.PoisonedBf16((long)numBlocks * BlockSize * kvDim);
            using var vc = Gpu.PoisonedBf16((long)numBlocks * BlockSize * kvDim);
            var cache = new AttentionPagedCache(kc, vc, numBlocks, BlockSize, kvHeads, headDim);
            var write = new AttentionKvWriteKernel(Library);
            if (fused) write.LaunchWithQueries(Stream, dq, ld, heads, dqb, dkb, dvb, dFreq, dPos, dSlots, rows, cache);
            else
            {
                new RopeRowsKernel(Library).Launch(Stream, dq, ld, dqb, dFreq, dPos, rows, heads, headDim);
                write.Launch(Stream, dq.Span.Slice(qDim), dq.Span.Slice(qDim + kvDim), ld, dkb, dvb, dFreq, dPos, dSlots, rows, cache);
            }
            Stream.Synchronize();
            return (dq.ToArray(), kc.ToArray().Select(b => b.Bits).ToArray(), vc.ToArray().Select(b => b.Bits).ToArray());
        }
        var two = Run(false);
        var one = Run(true);
        Assert.Equal(two.Q, one.Q);
        Assert.Equal(two.K, one.K);
        Assert.Equal(two.V, one.V);
        Assert.NotEqual(qkv[(long)4 * ld], one.Q[(long)4 * ld]);   // the skipped row's q was rotated all the same
        Assert.Equal(rows - 1, Enumerable.Range(0, numBlocks * BlockSize).Count(slot => !float.IsNaN(new Bf16(one.K[slot * kvDim]).ToSingle())));
    }

    [Fact]
    public void CheckHost_NamesTheBadSequence()
    {
        int[] tables = [0, 1, 2, 3, 9, 5];
        AttentionPagedBatch.CheckHost([0, 1, 3], [17, 20], tables, 3, BlockSize, 10, 3);
        var e = Assert.Throws<ArgumentException>(() => AttentionPagedBatch.CheckHost([0, 1, 3], [17, 40], tables, 3, BlockSize, 9, 3));
        Assert.Contains("sequence 1", e.Message);   // block 9 of a 9-block pool
        e = Assert.Throws<ArgumentException>(() => AttentionPagedBatch.CheckHost([0, 1, 3], [17, 1], tables, 3, BlockSize, 10, 3));
        Assert.Contains("shorter than its 2 query rows", e.Message);
        e = Assert.Throws<ArgumentException>(() => AttentionPagedBatch.CheckHost([0, 1, 3], [17, 49], tables, 3, BlockSize, 10, 3));
        Assert.Contains("exceeds 3 blocks", e.Message);
        e = Assert.Throws<ArgumentException>(() => AttentionPagedBatch.CheckHost([0, 2, 1], [17, 20], tables, 3, BlockSize, 10, 3));
        Assert.Contains("sequence 1", e.Message);
    }

    [Fact]
    public void LaunchPaged_RejectsBadShapes()
    {
        Gpu.Require();
        using var q = new DeviceBuffer<float>(4 * 256);
        using var kv = new DeviceBuffer<Bf16>(8 * BlockSize * 128);
        using var o = new DeviceBuffer<Bf16>(4 * 256);
        using var ints = new DeviceBuffer<int>(new int[16]);   // zeros: no rows, no context
        using var attention = new AttentionKernel(Library);
        var cache = new AttentionPagedCache(kv, kv, 8, BlockSize, 1, 128);
        var batch = new AttentionPagedBatch(ints, ints, ints, 4, 2, 4, 3, 40);
        attention.LaunchPaged(Stream, q, 256, cache, batch with { Sequences = 1 }, o, 256, 2);   // shapes fine (contents all zero: context 0, no rows)
        Stream.Synchronize();
        Assert.Throws<ArgumentOutOfRangeException>(() => attention.LaunchPaged(Stream, q, 256, cache, batch with { MaxBlocksPerSequence = 2 }, o, 256, 2));
        Assert.Throws<ArgumentException>(() => attention.LaunchPaged(Stream, q, 256, cache with { NumBlocks = 9 }, batch, o, 256, 2));
        Assert.Throws<ArgumentException>(() => attention.LaunchPaged(Stream, q, 256, cache, batch with { TotalTokens = 5, MaxQueryLength = 3 }, o, 256, 2));
        Assert.Throws<ArgumentOutOfRangeException>(() => attention.LaunchPaged(Stream, q, 256, cache, batch, o, 256, 3));
        var e2 = Assert.Throws<ArgumentException>(() => attention.LaunchPaged(Stream, q, 256, cache with { BlockSize = 12, NumBlocks = 10 }, batch, o, 256, 2));
        Assert.Contains("power of two", e2.Message);
        attention.Path = AttentionPath.Flash8Warps;
        var e = Assert.Throws<ArgumentException>(() => attention.LaunchPaged(Stream, q, 256, cache, batch, o, 256, 2));
        Assert.Contains("no paged instance", e.Message);
        // The wgmma kernel pinned where it cannot run (head_dim 64; on other GPUs also the arch) says why.
        attention.Path = AttentionPath.Hopper;
        e = Assert.Throws<ArgumentException>(() => attention.LaunchPaged(Stream, q, 256, cache with { KvHeads = 2, HeadDim = 64 }, batch, o, 256, 2));
        Assert.Contains("wgmma kernel cannot run", e.Message);
        // An odd output row stride would fault the bf16-pair stores of every tensor-core kernel: named, not launched.
        attention.Path = AttentionPath.Auto;
        e = Assert.Throws<ArgumentException>(() => attention.LaunchPaged(Stream, q, 256, cache, batch, o, 129, 1));
        Assert.Contains("must be even", e.Message);
    }
}
