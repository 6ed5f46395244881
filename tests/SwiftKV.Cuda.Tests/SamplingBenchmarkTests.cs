// Sampling kernel benchmark (not a timed test: it only prints), run when SWIFTKV_BENCH=1: sample_rows_f32 over rows
// of Llama 3's 128256 logits, the threshold search as built (16 cuts per pass) against the two-way bisection alone
// (the embedded source compiled with SEARCH_PASSES 0), and the argmax every step runs first. CUDA events, median of 20.
using SwiftKV.Cuda.Kernels;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class SamplingBenchmarkTests : GpuFixtureTest
{
    unsafe void Launch(CudaKernel kernel, int rows, ulong logits, ulong parameters, ulong topK, ulong output)
    {
        int n = 128256;
        void** args = stackalloc void*[] { &logits, &n, &parameters, &topK, &output };
        kernel.Launch(Stream, ((uint)rows, 1, 1), 1024, 17 * 1024 * 4, args);
    }

    [Fact]
    public void SampleRows_Timing()
    {
        Gpu.Require();
        Assert.SkipUnless(Environment.GetEnvironmentVariable("SWIFTKV_BENCH") == "1", "set SWIFTKV_BENCH=1 to time the sampling kernel");
        const int n = 128256, tableBytes = 17 * 1024 * 4;
        var headers = new[] { ("swiftkv_common.cuh", KernelLibrary.Read("swiftkv_common.cuh")) };
        CudaKernel Build(string label, string defines)
        {
            var cubin = NvrtcCompiler.Compile($"sampling_{label}.cu", defines + KernelLibrary.Read("sampling.cu"), headers);
            var k = new CudaModule(cubin, $"sampling_{label}.cu").GetKernel("sample_rows_f32");
            k.SetAttribute(CudaKernel.AttrMaxDynamicSharedBytes, tableBytes);
            return k;
        }
        var kernels = new[] { ("16-cut search", Build("search", "")), ("bisection only", Build("bisect", "#define SEARCH_PASSES 0\n")) };
        var argmax = new ArgmaxKernel(Library);
        var rng = new Random(4);
        foreach (var (rows, peaked) in new[] { (1, false), (32, false), (128, false), (1, true), (32, true) })
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
                foreach (var (label, kernel) in kernels)
                {
                    ulong la = dLogits.Address, pa = dParams.Address, ka = dK.Address, oa = dOut.Address;
                    double ms = Time(() => Launch(kernel, rows, la, pa, ka, oa));
                    picks.Add(dOut.ToArray());
                    Gpu.Log($"rows {rows}{(peaked ? " peaked" : "")}, T {t} top-k {k} top-p {p}: {label} {ms * 1e3:F0} us");
                }
                Gpu.Log($"rows {rows}{(peaked ? " peaked" : "")}, T {t} top-k {k} top-p {p}: the two searches pick the same tokens in {picks[0].Zip(picks[1]).Count(z => z.First == z.Second)}/{rows} rows");
            }
        }
    }
}
