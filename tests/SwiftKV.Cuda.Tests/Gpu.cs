// Shared plumbing for the GPU tests: skip cleanly when this machine has no usable CUDA, poisoned buffers,
// and the tolerance check every comparison uses. Tests run one at a time: they share one GPU, and the leak
// tests read process-wide memory counters.
using SwiftKV.Cuda;
using Xunit;

[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace SwiftKV.Cuda.Tests;

internal static class Gpu
{
    /// <summary>Skips the calling test unless CUDA is usable (<see cref="Require"/>) and the device is sm_90a (the wgmma kernels).</summary>
    public static void RequireHopper()
    {
        Require();
        Assert.SkipUnless(CudaRuntime.Device.Arch == "sm_90a", $"the wgmma kernels need sm_90a ({CudaRuntime.Device.Arch})");
    }

    /// <summary>Skips the calling test unless a GPU, the driver, NVRTC and cuBLAS are all usable.</summary>
    public static void Require()
    {
        bool ok = CudaRuntime.TryInitialize(out var reason);
        Assert.SkipUnless(ok, "no usable CUDA: " + reason);
    }

    public static DeviceBuffer<float> Poisoned(long n) => new(Enumerable.Repeat(float.NaN, (int)n).ToArray());
    public static DeviceBuffer<Bf16> PoisonedBf16(long n) => new(Enumerable.Repeat(Bf16.FromSingle(float.NaN), (int)n).ToArray());

    /// <summary>Asserts |actual - expected| &lt;= atol + rtol·|expected| element-wise; NaN never passes.</summary>
    public static void Close(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected, double rtol, double atol, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            double d = Math.Abs(actual[i] - expected[i]);
            if (!(d <= atol + rtol * Math.Abs(expected[i])))
                Assert.Fail($"{what}: index {i}: got {actual[i]}, expected {expected[i]} (|diff| {d:E3})");
        }
    }

    /// <summary>A logit row's error: max |actual - expected| over max |expected|; a non-finite actual value fails.</summary>
    public static double RowError(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        double maxDiff = 0, maxRef = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(float.IsFinite(actual[i]), $"non-finite logit at {i}");
            maxDiff = Math.Max(maxDiff, Math.Abs(expected[i] - actual[i]));
            maxRef = Math.Max(maxRef, Math.Abs(expected[i]));
        }
        return maxDiff / Math.Max(maxRef, 1e-30);
    }

    public static void Log(string line) => Console.WriteLine("[gpu-test] " + line);
}

/// <summary>One stream + kernel library per test class.</summary>
public abstract class GpuFixtureTest : IDisposable
{
    CudaStream? _stream;
    KernelLibrary? _library;

    protected CudaStream Stream => _stream ??= new CudaStream();
    protected KernelLibrary Library => _library ??= new KernelLibrary();

    public void Dispose()
    {
        _library?.Dispose();
        _stream?.Dispose();
        GC.SuppressFinalize(this);
    }
}
