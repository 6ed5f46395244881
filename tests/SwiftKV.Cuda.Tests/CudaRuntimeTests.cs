// The native boundary: initialisation answers with a reason instead of throwing, libraries resolve,
// NVRTC compiles every embedded kernel file and caches the CUBIN on disk.
using SwiftKV.Cuda;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class CudaRuntimeTests
{
    [Fact]
    public void TryInitialize_ReturnsDeviceOrReason()
    {
        bool ok = CudaRuntime.TryInitialize(out var reason);
        if (ok)
        {
            Assert.Equal("", reason);
            Gpu.Log("device: " + CudaRuntime.Device);
        }
        else
        {
            Assert.False(string.IsNullOrWhiteSpace(reason));
            Assert.Throws<CudaException>(() => CudaRuntime.Device);
        }
    }

    /// <summary>
    /// A driver of an older major version than the libraries is named at start with what to do (no GPU needed: the check
    /// is arithmetic on the two versions), where it used to surface as an obscure status from the first GEMM.
    /// </summary>
    [Theory]
    [InlineData(13000, 13, 0, true)]
    [InlineData(13010, 13, 0, true)]    // a newer driver runs older libraries
    [InlineData(12080, 13, 0, false)]
    [InlineData(12040, 12, 8, true)]    // minor-version compatibility within a major
    public void DriverVersion_AgainstTheLibraries(int driver, int nvrtcMajor, int nvrtcMinor, bool supported)
    {
        if (supported)
        {
            CudaRuntime.CheckDriverSupports(driver, nvrtcMajor, nvrtcMinor);
            return;
        }
        var e = Assert.Throws<CudaException>(() => CudaRuntime.CheckDriverSupports(driver, nvrtcMajor, nvrtcMinor));
        Assert.Equal("the NVIDIA driver supports CUDA up to 12.8, older than the CUDA 13.0 libraries found (NVRTC, cuBLAS): update the NVIDIA driver " +
            "to one for CUDA 13, or point CUDA_HOME at a CUDA 12.x toolkit.", e.Message);
    }

    /// <summary>
    /// Library files by version, not by the length of their names: a folder with CUDA 12 and 13 libraries gives 13 (the
    /// old order put libnvrtc.so.12.4.127 first, its name being longest).
    /// </summary>
    [Fact]
    public void LibraryCandidates_NewestVersionFirst()
    {
        string[] files = ["/l/libnvrtc.so", "/l/libnvrtc.so.12.4.127", "/l/libnvrtc.so.13", "/l/libnvrtc.so.13.0.48", "/l/libnvrtc.so.12"];
        Assert.Equal(["/l/libnvrtc.so.13.0.48", "/l/libnvrtc.so.13", "/l/libnvrtc.so.12.4.127", "/l/libnvrtc.so.12", "/l/libnvrtc.so"],
            Native.CudaLibraries.NewestFirst(files));
        Assert.Equal(["c:/b/cublas64_13.dll", "c:/b/cublas64_12.dll"], Native.CudaLibraries.NewestFirst(["c:/b/cublas64_12.dll", "c:/b/cublas64_13.dll"]));
    }

    /// <summary>Errors after which the context is unusable are flagged (a server must restart), others are not.</summary>
    [Theory]
    [InlineData(700, true)]    // CUDA_ERROR_ILLEGAL_ADDRESS
    [InlineData(702, true)]    // CUDA_ERROR_LAUNCH_TIMEOUT
    [InlineData(719, true)]    // CUDA_ERROR_LAUNCH_FAILED
    [InlineData(2, false)]     // CUDA_ERROR_OUT_OF_MEMORY
    [InlineData(901, false)]   // CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
    public void StickyErrors_AreFlagged(int status, bool lost) => Assert.Equal(lost, Native.CuDriver.IsContextLost(status));

    [Fact]
    public void KernelLibrary_EmbedsEveryKernelFile()
    {
        // Every .cu under the repository's native-kernels/ (found above the test binaries) is embedded, and nothing else.
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !Directory.Exists(Path.Combine(dir.FullName, "native-kernels"))) dir = dir.Parent;
        Assert.NotNull(dir);
        var files = Directory.GetFiles(Path.Combine(dir.FullName, "native-kernels"), "*.cu").Select(f => Path.GetFileName(f)!).Order(StringComparer.Ordinal).ToArray();
        Assert.Contains("attention.cu", files);
        Assert.Equal(files, KernelLibrary.SourceFiles);
        foreach (var f in KernelLibrary.SourceFiles) Assert.Contains("extern \"C\" __global__", KernelLibrary.Read(f));
    }

    [Fact]
    public void NvrtcCompiler_CompilesEveryFileAndReusesDiskCache()
    {
        Gpu.Require();
        string dir = Path.Combine(Path.GetTempPath(), "swiftkv-kernel-cache-" + Guid.NewGuid().ToString("N"));
        string? old = Environment.GetEnvironmentVariable("SWIFTKV_KERNEL_CACHE");
        Environment.SetEnvironmentVariable("SWIFTKV_KERNEL_CACHE", dir);
        try
        {
            int before = NvrtcCompiler.CompileCount;
            var sw = System.Diagnostics.Stopwatch.StartNew();
            using (var lib = new KernelLibrary())
                foreach (var (file, entry) in Entries) lib.Get(file, entry);
            var cold = sw.Elapsed;
            Assert.Equal(before + Entries.Length, NvrtcCompiler.CompileCount);
            Assert.Equal(Entries.Length, Directory.GetFiles(dir, "*.skvc").Length);
            sw.Restart();
            using (var lib = new KernelLibrary())
                foreach (var (file, entry) in Entries) lib.Get(file, entry);
            Assert.Equal(before + Entries.Length, NvrtcCompiler.CompileCount);
            Gpu.Log($"NVRTC compile of {Entries.Length} kernel files: cold {cold.TotalMilliseconds:F0} ms, from disk cache {sw.Elapsed.TotalMilliseconds:F0} ms ({CudaRuntime.Device.Arch})");
        }
        finally
        {
            Environment.SetEnvironmentVariable("SWIFTKV_KERNEL_CACHE", old);
            try { Directory.Delete(dir, true); } catch (IOException) { }
        }
    }

    [Fact]
    public void KernelLibrary_UnknownEntry_ThrowsNamingIt()
    {
        Gpu.Require();
        using var lib = new KernelLibrary();
        var e = Assert.Throws<CudaException>(() => lib.Get("argmax.cu", "no_such_kernel"));
        Assert.Contains("no_such_kernel", e.Message);
        Assert.Equal("cuModuleGetFunction(argmax.cu:no_such_kernel)", e.Call);
    }

    static readonly (string, string)[] Entries =
    [
        ("argmax.cu", "argmax_f32"), ("attention.cu", "attention_bf16"), ("embedding.cu", "embedding_bf16"),
        ("kv_cache.cu", "kv_write_bf16"), ("rms_norm.cu", "rms_norm_f32"), ("rope.cu", "rope_f32"), ("silu_mul.cu", "silu_mul_f32"),
    ];
}
