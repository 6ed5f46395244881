// Sampling kernel benchmark (not a timed test: it only prints), run when SWIFTKV_BENCH=1: sample_rows_f32 over rows
// of Llama 3's 128256 logits, the threshold search as built (16 cuts per pass) against the two-way bisection alone
// (the embedded source compiled with SEARCH_PASSES 0), the cluster entry sample_rows_cluster_f32 at a few cluster and
// block sizes (sm_90+), and the argmax every step runs first. CUDA events, median of 20.
using SwiftKV.Cuda.Kernels;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class SamplingBenchmarkTests : GpuFixtureTest
{
    // ctas 0: the one-CTA entry (grid rows x 1024 threads); else the cluster entry built with SC_CTAS = ctas, SC_THREADS = threads.
    sealed record Variant(string Label, CudaKernel Kernel, int Ctas, int Threads)
    {
        public uint SharedBytes(int n) => Ctas == 0 ? 17 * 1024 * 4 : (uint)SamplingKernel.ClusterSharedBytes(Ctas, Threads, n);
    }

    unsafe void Launch(Variant v, int rows, ulong logits, ulong parameters, ulong topK, ulong output)
    {
        int n = 128256;
        void** args = stackalloc void*[] { &logits, &n, &parameters, &topK, &output };
        if (v.Ctas == 0) v.Kernel.Launch(Stream, ((uint)rows, 1, 1), 1024, v.SharedBytes(n), args);
        else v.Kernel.Launch(Stream, ((uint)v.Ctas, (uint)rows, 1), (uint)v.Threads, v.SharedBytes(n), args);
    }

    [Fact]
    public void SampleRows_Timing()
    {
        Gpu.Require();
        Assert.SkipUnless(Environment.GetEnvironmentVariable("SWIFTKV_BENCH") == "1", "set SWIFTKV_BENCH=1 to time the sampling kernel");
        const int n = 128256;
        var headers = new[] { ("swiftkv_common.cuh", KernelLibrary.Read("swiftkv_common.cuh")) };
        Variant Build(string label, string defines, int ctas = 0, int threads = 1024)
        {
            var cubin = NvrtcCompiler.Compile($"sampling_{label}.cu", defines + KernelLibrary.Read("sampling.cu"), headers);
            var v = new Variant(label, new CudaModule(cubin, $"sampling_{label}.cu").GetKernel(ctas == 0 ? "sample_rows_f32" : "sample_rows_cluster_f32"), ctas, threads);
            v.Kernel.SetAttribute(CudaKernel.AttrMaxDynamicSharedBytes, (int)v.SharedBytes(n));
            return v;
        }
        var kernels = new List<Variant> { Build("16-cut search", ""), Build("bisection only", "#define SEARCH_PASSES 0\n") };
        if (CudaRuntime.Device.ComputeMajor >= 9)
            foreach (var (ctas, threads) in new[] { (8, 512), (8, 256), (4, 512), (4, 256) })
                kernels.Add(Build($"cluster {ctas}x{threads}", $"#define SC_CTAS {ctas}\n#define SC_THREADS {threads}\n", ctas, threads));
        var argmax = new ArgmaxKernel(Library);
        var rng = new Random(4);
        foreach (var (rows, peaked) in new[] { (1, false), (8, false), (32, false), (128, false), (1, true), (32, true) })
        {
            // Logits shaped like a language model's: a few strong candidates over a long tail; "peaked": one token far
            // above the rest (a confident step, where the top token alone reaches top_p).
            var logits = new float[(long)rows * n];
            for (long i = 0; i < logits.Length; i++) logits[i] = (float)(rng.NextDouble() * 10 - 12 + (rng.Next(2000) == 0 ? 14 : 0));
            if (peaked) for (int r = 0; r < rows; r++) logits[(long)r * n + rng.Next(n)] = 30f;
            using var dLogits = new DeviceBuffer<float>(logits);
            using var dOut = new DeviceBuffer<int>(rows);
            using var dTopK = new DeviceBuffer<int>(rows);
            using var e0 = new CudaEvent();
            using var e1 = new CudaEvent();
            double Time(Action launch)
            {
                launch();
                var ms = new List<double>();
                for (int i = 0; i < 20; i++)
                {
                    e0.Record(Stream);
                    launch();
                    e1.Record(Stream);
                    Stream.Synchronize();
                    ms.Add(CudaEvent.ElapsedMs(e0, e1));
                }
                ms.Sort();
                return ms[ms.Count / 2];
            }
            double am = Time(() => argmax.Launch(Stream, dLogits, rows, n, dOut));
            Gpu.Log($"rows {rows}{(peaked ? " peaked" : "")}: argmax {am * 1e3:F0} us");
            foreach (var (t, k, p) in new[] { (0.7f, 0, 0.9f), (0.7f, 50, 0.95f), (1f, 0, 1f) })
            {
                using var dParams = new DeviceBuffer<float>(Enumerable.Range(0, rows).SelectMany(r => new[] { 1f / t, p, (r + 0.5f) / rows }).ToArray());
                using var dK = new DeviceBuffer<int>(Enumerable.Repeat(k, rows).ToArray());
                var picks = new List<int[]>();
                foreach (var v in kernels)
                {
                    ulong la = dLogits.Address, pa = dParams.Address, ka = dK.Address, oa = dOut.Address;
                    double ms = Time(() => Launch(v, rows, la, pa, ka, oa));
                    picks.Add(dOut.ToArray());
                    Gpu.Log($"rows {rows}{(peaked ? " peaked" : "")}, T {t} top-k {k} top-p {p}: {v.Label} {ms * 1e3:F1} us");
                }
                Gpu.Log($"rows {rows}{(peaked ? " peaked" : "")}, T {t} top-k {k} top-p {p}: same tokens as the 16-cut one-CTA entry in "
                    + string.Join(", ", kernels.Skip(1).Select((v, i) => $"{v.Label} {picks[0].Zip(picks[i + 1]).Count(z => z.First == z.Second)}/{rows}")));
            }
        }
    }
}
