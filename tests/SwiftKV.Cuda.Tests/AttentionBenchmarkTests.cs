// Attention kernel benchmark (not a timed test: it only prints), run when SWIFTKV_BENCH=1. Llama-3.1-8B attention
// shape (32 query heads, 8 KV heads, head_dim 128): causal prefill at 1x2K/4K/8K/32K in TFLOP/s counting
// 2·S²·head_dim·heads (PERFORMANCE.md) for every flash CTA shape and Auto (and 8K through the paged launch), and paged
// decode (one new token over a 2K context, scattered 16-token blocks) at batch 1, 32 and 128 in GB/s counting the
// K/V bytes read. CUDA events around each launch, warm-up first, median of the repeats; batch 1 rotates over 32
// sequences so it does not time the 50 MB L2.
// Other kernel versions run in the same process on the same data: SWIFTKV_BENCH_BASELINE names 2e05f9d's file (old
// entry signature); SWIFTKV_BENCH_VARIANTS = "label=FA_X=0,FA_Y=1;label2=@path/file.cu;..." compiles the embedded
// attention_flash.cu with those build switches, or another file with today's entry points, and times its shapes too.
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Tests;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed unsafe class AttentionBenchmarkTests : GpuFixtureTest
{
    const int Heads = 32, KvHeads = 8, HeadDim = 128;

    static void Fill<T>(DeviceBuffer<T> buffer, T[] pattern) where T : unmanaged
    {
        for (long off = 0; off < buffer.Length; off += pattern.Length)
            buffer.CopyFrom(pattern.AsSpan(0, (int)Math.Min(pattern.Length, buffer.Length - off)), off);
    }

    double MedianMs(int reps, Action launch)
    {
        using var a = new CudaEvent();
        using var b = new CudaEvent();
        launch();
        launch();
        Stream.Synchronize();
        var times = new double[reps];
        for (int i = 0; i < reps; i++)
        {
            a.Record(Stream);
            launch();
            b.Record(Stream);
            times[i] = CudaEvent.ElapsedMs(a, b);
        }
        Array.Sort(times);
        return times[reps / 2];
    }

    /// <summary>The previous kernel's entry (same parameters as flash_attn_d128_w4_m1_n64), one sequence from position 0.</summary>
    static void LaunchBaseline(CudaKernel k, CudaStream stream, ulong pq, int ldq, ulong pk, ulong pv, ulong po, int rows)
    {
        long qbs = (long)rows * ldq, kvbs = (long)rows * KvHeads * HeadDim, obs = qbs;
        ulong zero = 0;
        int heads = Heads, kvHeads = KvHeads, pos0 = 0, kps = int.MaxValue / 2;
        float scaleLog2 = (float)(1.0 / Math.Sqrt(HeadDim)) * 1.4426950408889634f;
        void** args = stackalloc void*[] { &pq, &qbs, &ldq, &pk, &pv, &kvbs, &po, &obs, &zero, &zero, &rows, &heads, &kvHeads, &pos0, &kps, &scaleLog2 };
        k.Launch(stream, ((uint)(rows * Heads / KvHeads / 64), KvHeads, 1), 128, 69632, args);
    }

    [Fact]
    public void Attention_Llama8BShape_Throughput()
    {
        Gpu.Require();
        Assert.SkipUnless(Environment.GetEnvironmentVariable("SWIFTKV_BENCH") == "1", "set SWIFTKV_BENCH=1 to time the attention kernels");
        Gpu.Log($"bench attention on {CudaRuntime.Device}");
        using var attention = new AttentionKernel(Library);
        var flashPaths = new[] { AttentionPath.Flash4Warps, AttentionPath.Flash8Warps, AttentionPath.Flash4Warps32Rows, AttentionPath.Flash4Warps32RowsKeys32 };
        foreach (int d in new[] { 64, 128 })
            foreach (var path in flashPaths)
                foreach (bool paged in path == AttentionPath.Flash8Warps ? new[] { false } : new[] { false, true })
                {
                    var k = attention.FlashKernel(d, path, paged);
                    Gpu.Log($"bench {(paged ? "paged " : "")}d{d} {path}: {k.GetAttribute(CudaKernel.AttrNumRegs)} registers/thread, " +
                        $"{k.GetAttribute(CudaKernel.AttrLocalSizeBytes)} B local (spills), {AttentionKernel.SharedBytes(d, path)} B shared");
                }

        var rng = new TestRng(5);
        var qPattern = rng.Array(1 << 20, 1.5f);
        var kvPattern = Bf16.FromSingles(rng.Array((1 << 20) + 17, 1.5f));
        int ldq = Heads * HeadDim, kvDim = KvHeads * HeadDim;
        var table = new List<string>();
        CudaKernel? baseline = null;
        if (Environment.GetEnvironmentVariable("SWIFTKV_BENCH_BASELINE") is { Length: > 0 } file)
        {
            var cubin = NvrtcCompiler.Compile("attention_flash_baseline.cu", File.ReadAllText(file), [("swiftkv_common.cuh", KernelLibrary.Read("swiftkv_common.cuh"))]);
            baseline = new CudaModule(cubin, "attention_flash_baseline.cu").GetKernel("flash_attn_d128_w4");
            baseline.SetAttribute(CudaKernel.AttrMaxDynamicSharedBytes, 69632);
            baseline.SetAttribute(CudaKernel.AttrSharedCarveoutPercent, 100);
        }

        // (label, launcher, its paths): the embedded kernel, then each variant.
        var kernels = new List<(string Label, AttentionKernel Kernel, AttentionPath[] Paths)>
        {
            ("", attention, [AttentionPath.Auto, .. flashPaths]),
        };
        var variantPaths = new[] { AttentionPath.Flash4Warps, AttentionPath.Flash4Warps32Rows, AttentionPath.Flash4Warps32RowsKeys32 };
        foreach (var spec in (Environment.GetEnvironmentVariable("SWIFTKV_BENCH_VARIANTS") ?? "").Split(';', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = spec.IndexOf('=');
            Assert.True(eq > 0, $"SWIFTKV_BENCH_VARIANTS entry '{spec}' is not label=defines or label=@file");
            string label = spec[..eq], what = spec[(eq + 1)..];
            string source = what.StartsWith('@') ? File.ReadAllText(what[1..])
                : string.Concat(what.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(d => $"#define {d.Replace('=', ' ')}\n")) + KernelLibrary.Read("attention_flash.cu");
            var cubin = NvrtcCompiler.Compile($"attention_flash_{label}.cu", source, [("swiftkv_common.cuh", KernelLibrary.Read("swiftkv_common.cuh"))]);
            var variant = new AttentionKernel(Library) { FlashModuleOverride = new CudaModule(cubin, $"attention_flash_{label}.cu") };
            kernels.Add(($"[{label}] ", variant, variantPaths));
            foreach (var path in variantPaths)
                foreach (bool paged in new[] { false, true })
                {
                    var k = variant.FlashKernel(HeadDim, path, paged);
                    Gpu.Log($"bench [{label}] {(paged ? "paged " : "")}d{HeadDim} {path}: {k.GetAttribute(CudaKernel.AttrNumRegs)} registers/thread, " +
                        $"{k.GetAttribute(CudaKernel.AttrLocalSizeBytes)} B local (spills)");
                }
        }

        foreach (int s in new[] { 2048, 4096, 8192, 32768 })
        {
            using var q = new DeviceBuffer<float>((long)s * ldq);
            using var kc = new DeviceBuffer<Bf16>((long)s * kvDim);
            using var vc = new DeviceBuffer<Bf16>((long)s * kvDim);
            using var o = new DeviceBuffer<Bf16>((long)s * ldq);
            Fill(q, qPattern);
            Fill(kc, kvPattern);
            Fill(vc, kvPattern.Reverse().ToArray());
            double flops = 2.0 * s * s * HeadDim * Heads;
            if (baseline is not null)
            {
                // The previous kernel (file named by SWIFTKV_BENCH_BASELINE, d128 4 warps) on the same card and data.
                double bms = MedianMs(s >= 32768 ? 5 : 15, () => LaunchBaseline(baseline, Stream, q.Address, ldq, kc.Address, vc.Address, o.Address, s));
                table.Add($"prefill 1x{s} {"baseline (2e05f9d) w4",-24} {bms,9:F3} ms {flops / bms / 1e9,7:F1} TFLOP/s");
            }
            foreach (var (label, kernel, paths) in kernels)
                foreach (var path in paths)
                {
                    kernel.Path = path;
                    int reps = s >= 32768 ? 5 : 15;
                    double ms = MedianMs(reps, () => kernel.Launch(Stream, q, ldq, kc, vc, s, o, s, Heads, KvHeads, HeadDim, 0));
                    string name = label + (path == AttentionPath.Auto ? $"Auto={kernel.LastLaunch.Kernel["flash_attn_".Length..]}" : path.ToString());
                    Gpu.Log($"bench prefill 1x{s} causal {name} ({kernel.LastLaunch.Kernel}): {ms:F3} ms, {flops / ms / 1e9:F1} TFLOP/s");
                    table.Add($"prefill 1x{s} {name,-34} {ms,9:F3} ms {flops / ms / 1e9,7:F1} TFLOP/s");
                }
            if (CudaRuntime.Device.Arch == "sm_90a")
            {
                // The two contiguous wgmma entries, alternated: warp-specialised (default) and two-CTA.
                var hk = kernels[0].Kernel;
                var times = new Dictionary<bool, List<double>> { [true] = [], [false] = [] };
                for (int round = 0; round < 3; round++)
                    foreach (bool ws in new[] { true, false })
                    {
                        hk.Path = AttentionPath.Hopper;
                        hk.UseWarpSpecialized = ws;
                        times[ws].Add(MedianMs(s >= 32768 ? 3 : 10, () => hk.Launch(Stream, q, ldq, kc, vc, s, o, s, Heads, KvHeads, HeadDim, 0)));
                    }
                hk.UseWarpSpecialized = true;
                foreach (bool ws in new[] { true, false })
                {
                    double ms = times[ws].Order().ElementAt(1);
                    string name = ws ? "Hopper warp-specialised" : "Hopper two-CTA";
                    Gpu.Log($"bench prefill 1x{s} causal {name}: {ms:F3} ms, {flops / ms / 1e9:F1} TFLOP/s");
                    table.Add($"prefill 1x{s} {name,-34} {ms,9:F3} ms {flops / ms / 1e9,7:F1} TFLOP/s");
                }
            }
            if (s == 8192 || s == 2048)
            {
                // The same prefill through the paged launch: one sequence, its 512 blocks scattered over a larger pool.
                // Block size: 16 (the serving engine's default) unless SWIFTKV_BENCH_PAGED_BLOCK names another power of two.
                int pbs = 16;
                if (Environment.GetEnvironmentVariable("SWIFTKV_BENCH_PAGED_BLOCK") is { Length: > 0 } pbText)
                    Assert.True(int.TryParse(pbText, out pbs) && pbs >= 8 && pbs <= 2048 && (pbs & (pbs - 1)) == 0,
                        $"SWIFTKV_BENCH_PAGED_BLOCK={pbText}: a power of two in 8..2048 (the warp-specialised paged entry's limits and 1x2048's length)");
                int blocks = s / pbs, poolBlocks = blocks + 64;
                var ids = Enumerable.Range(0, poolBlocks).OrderBy(_ => rng.NextDouble()).Take(blocks).ToArray();
                using var pk = new DeviceBuffer<Bf16>((long)poolBlocks * pbs * kvDim);
                using var pv = new DeviceBuffer<Bf16>((long)poolBlocks * pbs * kvDim);
                Fill(pk, kvPattern);
                Fill(pv, kvPattern.Reverse().ToArray());
                using var starts = new DeviceBuffer<int>(new[] { 0, s });
                using var ctx = new DeviceBuffer<int>(new[] { s });
                using var tables = new DeviceBuffer<int>(ids);
                var cache = new AttentionPagedCache(pk, pv, poolBlocks, pbs, KvHeads, HeadDim);
                var batch = new AttentionPagedBatch(starts, ctx, tables, blocks, 1, s, s, s);
                var pagedPaths = CudaRuntime.Device.Arch == "sm_90a" ? [.. variantPaths, AttentionPath.Hopper] : variantPaths;
                foreach (var (label, kernel, _) in kernels)
                    foreach (var path in pagedPaths)
                        foreach (bool ws in path == AttentionPath.Hopper ? new[] { true, false } : [true])
                        {
                            kernel.Path = path;
                            kernel.UseWarpSpecializedPaged = ws;
                            kernel.WarpSpecializedPagedMinBlock = ws ? 8 : 64;   // timed at any block size
                            double ms = MedianMs(15, () => kernel.LaunchPaged(Stream, q, ldq, cache, batch, o, ldq, Heads));
                            kernel.UseWarpSpecializedPaged = true;
                            kernel.WarpSpecializedPagedMinBlock = 64;
                            Gpu.Log($"bench paged prefill 1x{s} causal {label}{path} ({kernel.LastLaunch.Kernel}): {ms:F3} ms, {flops / ms / 1e9:F1} TFLOP/s");
                            table.Add($"paged prefill 1x{s} blocks of {pbs} {label + path + (path == AttentionPath.Hopper ? $" ({kernel.LastLaunch.Kernel})" : ""),-28} {ms,9:F3} ms {flops / ms / 1e9,7:F1} TFLOP/s");
                        }
            }
        }

        // Paged decode: one new token per sequence over 2K context, blocks of 16 scattered over the pool; batch 1
        // walks over 32 sequences so each launch reads device memory, not L2.
        const int ctxLen = 2048, seqs = 128, bs = 16, perSeq = ctxLen / bs;
        {
            int poolBlocks = seqs * perSeq;
            var ids = Enumerable.Range(0, poolBlocks).OrderBy(_ => rng.NextDouble()).ToArray();
            using var pk = new DeviceBuffer<Bf16>((long)poolBlocks * bs * kvDim);
            using var pv = new DeviceBuffer<Bf16>((long)poolBlocks * bs * kvDim);
            Fill(pk, kvPattern);
            Fill(pv, kvPattern.Reverse().ToArray());
            using var q = new DeviceBuffer<float>((long)seqs * ldq);
            using var o = new DeviceBuffer<Bf16>((long)seqs * ldq);
            Fill(q, qPattern);
            using var starts = new DeviceBuffer<int>(Enumerable.Range(0, seqs + 1).ToArray());
            using var ctx = new DeviceBuffer<int>(Enumerable.Repeat(ctxLen, seqs).ToArray());
            using var tables = new DeviceBuffer<int>(ids);
            var cache = new AttentionPagedCache(pk, pv, poolBlocks, bs, KvHeads, HeadDim);
            attention.Path = AttentionPath.Auto;
            foreach (int batch in new[] { 1, 32, 128 })
            {
                int next = 0;
                void Step()
                {
                    int first = batch == 1 ? next++ % 32 : 0;
                    var b = new AttentionPagedBatch(starts.Span.Slice(0, batch + 1), ctx.Span.Slice(first), tables.Span.Slice((long)first * perSeq),
                        perSeq, batch, batch, 1, ctxLen);
                    attention.LaunchPaged(Stream, q.Span.Slice((long)first * ldq), ldq, cache, b, o.Span.Slice((long)first * ldq), ldq, Heads);
                }
                double ms = MedianMs(64, Step);
                double bytes = 2.0 * batch * ctxLen * kvDim * 2;
                using var a = new CudaEvent();
                using var e = new CudaEvent();
                a.Record(Stream);
                for (int i = 0; i < 32; i++) Step();
                e.Record(Stream);
                double backToBack = CudaEvent.ElapsedMs(a, e) / 32;
                Gpu.Log($"bench paged decode batch {batch} ctx {ctxLen} ({attention.LastLaunch.Kernel}, {attention.LastLaunch.Splits} splits): " +
                    $"{ms * 1000:F1} us/launch median, {bytes / ms / 1e6:F0} GB/s; back-to-back {backToBack * 1000:F1} us, {bytes / backToBack / 1e6:F0} GB/s");
                table.Add($"paged decode b{batch} ctx {ctxLen} {attention.LastLaunch.Splits,2} splits {ms * 1000,8:F1} us {bytes / ms / 1e6,6:F0} GB/s; back-to-back {backToBack * 1000,6:F1} us {bytes / backToBack / 1e6,6:F0} GB/s");
            }
        }
        foreach (var line in table) Gpu.Log("bench table | " + line);
        foreach (var (_, kernel, _) in kernels.Skip(1)) kernel.Dispose();
    }
}
