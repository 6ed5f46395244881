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
}
