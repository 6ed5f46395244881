// The on-disk NVRTC cache entry (NvrtcCompiler.TryWriteCache / TryReadCache): pure file handling, no GPU needed, so
// these run in CI. A damaged entry must read as a miss (and be removed) so the kernel is compiled again, never be
// handed to cuModuleLoadData.
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class KernelCacheTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "swiftkv-cache-tests-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    static byte[] Cubin(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    [Fact]
    public void Entry_RoundTrips_AndLeavesNoTempFiles()
    {
        string file = Path.Combine(_dir, "gemv-sm_90a-abc.skvc");
        var cubin = Cubin(5000, 1);
        NvrtcCompiler.TryWriteCache(file, cubin);
        Assert.Equal(cubin, NvrtcCompiler.TryReadCache(file));
        NvrtcCompiler.TryWriteCache(file, Cubin(300, 2));   // a second writer replaces it atomically
        Assert.Equal(Cubin(300, 2), NvrtcCompiler.TryReadCache(file));
        Assert.Single(Directory.GetFiles(_dir));
    }

    [Theory]
    [InlineData("truncated")]
    [InlineData("flipped")]
    [InlineData("raw")]      // a bare CUBIN under this name
    [InlineData("empty")]
    public void DamagedEntry_IsAMiss_AndIsRemoved(string damage)
    {
        string file = Path.Combine(_dir, "rope-sm_90a-def.skvc");
        var cubin = Cubin(4096, 3);
        NvrtcCompiler.TryWriteCache(file, cubin);
        byte[] bytes = File.ReadAllBytes(file);
        bytes = damage switch
        {
            "truncated" => bytes[..(bytes.Length - 100)],
            "flipped" => bytes.Select((b, i) => i == bytes.Length - 7 ? (byte)(b ^ 0x10) : b).ToArray(),
            "raw" => cubin,
            _ => [],
        };
        File.WriteAllBytes(file, bytes);
        Assert.Null(NvrtcCompiler.TryReadCache(file));
        Assert.False(File.Exists(file));
    }

    /// <summary>SWIFTKV_NVRTC_DEFINES (kernel experiments): NAME or NAME=VALUE words become -D switches; anything else, such
    /// as another compiler option, is refused by name instead of reaching NVRTC.</summary>
    [Fact]
    public void ExperimentDefines_AreDSwitchesOnly()
    {
        Assert.Empty(NvrtcCompiler.ExperimentDefines(null));
        Assert.Empty(NvrtcCompiler.ExperimentDefines("  "));
        Assert.Equal(["-DQG_STAGES=3", "-DQG_ROPE=0", "-DGG_FAST_SILU"], NvrtcCompiler.ExperimentDefines("QG_STAGES=3 QG_ROPE=0;GG_FAST_SILU"));
        Assert.Equal(["-DX=1.5e-3"], NvrtcCompiler.ExperimentDefines("X=1.5e-3"));
        foreach (var bad in new[] { "-O3", "A=1 --use_fast_math", "A=$(id)", "1A=2", "A=\"x\"" })
        {
            var e = Assert.Throws<ArgumentException>(() => NvrtcCompiler.ExperimentDefines(bad));
            Assert.Contains("SWIFTKV_NVRTC_DEFINES", e.Message);
        }
    }
}
