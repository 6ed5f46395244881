// Two models in one process (a SwiftKV model next to its teacher, keyed clients): one backend captures its decode
// graphs while another thread copies buffers, allocates and frees, creates cuBLAS handles, and loads a second model.
// Before the fix (backend streams were blocking, nothing ordered cuBLAS handle set-up against captures), legacy-stream
// copies and cuBLAS handles on the other thread invalidated the capture and the decode step threw.
using SwiftKV.Engine;
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Cuda;
using SwiftKV.Engine.Tests;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class ConcurrentCaptureTests
{
    public enum Neighbour { Copies, AllocateAndFree, PinnedHostMemory, Modules, CublasHandle, StreamsAndEvents, LoadModel }

    [Theory]
    [InlineData(Neighbour.Copies)]
    [InlineData(Neighbour.AllocateAndFree)]
    [InlineData(Neighbour.PinnedHostMemory)]
    [InlineData(Neighbour.Modules)]
    [InlineData(Neighbour.CublasHandle)]
    [InlineData(Neighbour.StreamsAndEvents)]
    [InlineData(Neighbour.LoadModel)]
    public void DecodeCaptures_SurviveWorkOnAnotherThread(Neighbour neighbour)
    {
        Gpu.Require();
        var spec = new ModelSpec(Hidden: 128, Heads: 8, KvHeads: 2, HeadDim: 64, Seed: 41);
        var weights = TestModels.Build(spec);
        using var gpu = new CudaBackend(weights);
        var cpu = new CpuBackend(CudaBackendTests.RoundToBf16(weights));
        var prompt = TestModels.RandomTokens(5, spec.Vocab, 42);
        float[] expected;
        using (var c = cpu.CreateCache(8)) expected = cpu.Forward(c, prompt, LogitsSelection.LastToken);

        var data = Enumerable.Range(0, 1 << 16).Select(i => (float)i).ToArray();
        var neighbourWeights = neighbour == Neighbour.LoadModel ? TestModels.Build(spec with { Seed = 43 }) : null;
        Exception? failure = null;
        int neighbourRounds = 0;
        bool stop = false;
        var thread = new Thread(() =>
        {
            try
            {
                while (!Volatile.Read(ref stop))
                {
                    switch (neighbour)
                    {
                        case Neighbour.Copies:
                            using (var b = new DeviceBuffer<float>(data))
                                Assert.Equal(data[^1], b.ToArray()[^1]);
                            break;
                        case Neighbour.AllocateAndFree:
                            new DeviceBuffer<float>(1 << 20).Dispose();
                            break;
                        case Neighbour.PinnedHostMemory:
                            new PinnedHostBuffer(1 << 20).Dispose();
                            break;
                        case Neighbour.Modules:
                            using (var library = new KernelLibrary())
                                library.Get("rms_norm.cu", "rms_norm_f32");
                            break;
                        case Neighbour.CublasHandle:
                            using (var s = new CudaStream(nonBlocking: true))
                                new Cublas(s).Dispose();
                            break;
                        case Neighbour.StreamsAndEvents:
                            new CudaStream(nonBlocking: true).Dispose();
                            new CudaEvent().Dispose();
                            break;
                        case Neighbour.LoadModel:
                            using (var other = new CudaBackend(neighbourWeights!))
                            using (var oc = other.CreateCache(8))
                                other.Forward(oc, prompt, LogitsSelection.LastToken);
                            break;
                    }
                    neighbourRounds++;
                }
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        int steps = 0;
        try
        {
            // A fresh cache per round: its first single-token step captures a decode graph.
            for (; steps < 300 && Volatile.Read(ref failure) is null; steps++)
            {
                using var cache = gpu.CreateCache(8);
                gpu.Forward(cache, prompt.AsSpan(0, 4), LogitsSelection.LastToken);
                var logits = gpu.Forward(cache, prompt.AsSpan(4, 1), LogitsSelection.LastToken);
                double maxB = expected.Max(Math.Abs), maxD = expected.Zip(logits, (e, g) => Math.Abs(e - g)).Max();
                Assert.True(maxD / maxB <= 1e-2, $"round {steps}: decode logits off by {maxD / maxB:E3}");
            }
        }
        finally
        {
            Volatile.Write(ref stop, true);
            thread.Join();
        }
        Gpu.Log($"concurrent capture ({neighbour}): {steps} captured decode steps, {neighbourRounds} neighbour rounds");
        Assert.Null(failure);
        Assert.True(neighbourRounds > 0);
    }
}
