// Attention kernel benchmark (not a timed test: it only prints), run when SWIFTKV_BENCH=1. Llama-3.1-8B attention
// shape (32 query heads, 8 KV heads, head_dim 128): causal prefill at 1x2K/8K/32K in TFLOP/s counting
// 2·S²·head_dim·heads (PERFORMANCE.md), and decode (one new token over a 2K cache) at batch 1 and 32 in GB/s
// counting the K/V bytes read. CUDA events around each launch, warm-up first, median of the repeats; decode rotates
// over 32 caches (268 MB) so batch 1 does not time the 50 MB L2.
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Tests;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class AttentionBenchmarkTests : GpuFixtureTest
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

    [Fact]
    public void Attention_Llama8BShape_Throughput()
    {
        Gpu.Require();
        Assert.SkipUnless(Environment.GetEnvironmentVariable("SWIFTKV_BENCH") == "1", "set SWIFTKV_BENCH=1 to time the attention kernels");
        Gpu.Log($"bench attention on {CudaRuntime.Device}");
        using var attention = new AttentionKernel(Library);
        foreach (int d in new[] { 64, 128 })
            foreach (int w in new[] { 4, 8 })
            {
                var k = attention.FlashKernel(d, w);
                Gpu.Log($"bench flash_attn_d{d}_w{w}: {k.GetAttribute(CudaKernel.AttrNumRegs)} registers/thread, " +
                    $"{k.GetAttribute(CudaKernel.AttrLocalSizeBytes)} B local (spills), {AttentionKernel.SharedBytes(d)} B shared");
            }

        var rng = new TestRng(5);
        var qPattern = rng.Array(1 << 20, 1.5f);
        var kvPattern = Bf16.FromSingles(rng.Array((1 << 20) + 17, 1.5f));
        int ldq = Heads * HeadDim, kvDim = KvHeads * HeadDim;

        foreach (int s in new[] { 2048, 8192, 32768 })
        {
            using var q = new DeviceBuffer<float>((long)s * ldq);
            using var kc = new DeviceBuffer<Bf16>((long)s * kvDim);
            using var vc = new DeviceBuffer<Bf16>((long)s * kvDim);
            using var o = new DeviceBuffer<Bf16>((long)s * ldq);
            Fill(q, qPattern);
            Fill(kc, kvPattern);
            Fill(vc, kvPattern.Reverse().ToArray());
            double flops = 2.0 * s * s * HeadDim * Heads;
            var paths = s == 2048 ? new[] { AttentionPath.Flash4Warps, AttentionPath.Flash8Warps, AttentionPath.Simple }
                : new[] { AttentionPath.Flash4Warps, AttentionPath.Flash8Warps };
            foreach (var path in paths)
            {
                attention.Path = path;
                int reps = path == AttentionPath.Simple ? 3 : s >= 32768 ? 5 : 15;
                double ms = MedianMs(reps, () => attention.Launch(Stream, q, ldq, kc, vc, s, o, s, Heads, KvHeads, HeadDim, 0));
                Gpu.Log($"bench prefill 1x{s} causal {path} ({attention.LastLaunch.Kernel}): {ms:F3} ms, {flops / ms / 1e9:F1} TFLOP/s");
            }
        }

        const int ctx = 2048, seqs = 32;
        long kvbs = (long)ctx * kvDim;
        using (var q = new DeviceBuffer<float>((long)seqs * ldq))
        using (var kc = new DeviceBuffer<Bf16>(seqs * kvbs))
        using (var vc = new DeviceBuffer<Bf16>(seqs * kvbs))
        using (var o = new DeviceBuffer<Bf16>((long)seqs * ldq))
        {
            Fill(q, qPattern);
            Fill(kc, kvPattern);
            Fill(vc, kvPattern.Reverse().ToArray());
            foreach (var path in new[] { AttentionPath.Auto, AttentionPath.Flash8Warps, AttentionPath.Simple })
                foreach (int batch in new[] { 1, seqs })
                {
                    attention.Path = path;
                    int next = 0;
                    void Step()
                    {
                        // batch 1 walks over the 32 caches so each launch reads from device memory, not L2.
                        int first = batch == 1 ? next++ % seqs : 0;
                        attention.LaunchBatched(Stream, q.Span.Slice((long)first * ldq), ldq, ldq, kc.Span.Slice(first * kvbs), vc.Span.Slice(first * kvbs),
                            kvbs, ctx, o.Span.Slice((long)first * ldq), ldq, batch, 1, Heads, KvHeads, HeadDim, ctx - 1);
                    }
                    double ms = MedianMs(path == AttentionPath.Simple ? 5 : 64, Step);
                    double bytes = 2.0 * batch * ctx * kvDim * 2;
                    using var a = new CudaEvent();
                    using var b = new CudaEvent();
                    a.Record(Stream);
                    for (int i = 0; i < 32; i++) Step();
                    b.Record(Stream);
                    double backToBack = CudaEvent.ElapsedMs(a, b) / 32;
                    Gpu.Log($"bench decode batch {batch} ctx {ctx} {path} ({attention.LastLaunch.Kernel}, {attention.LastLaunch.Splits} splits): " +
                        $"{ms * 1000:F1} us/launch median, {bytes / ms / 1e6:F0} GB/s; back-to-back {backToBack * 1000:F1} us, {bytes / backToBack / 1e6:F0} GB/s");
                }
        }
    }
}
