// The kernel sources embedded in this assembly (native-kernels/*.cu, plus *.cuh headers any of them may
// include) and the modules compiled from them. One module per .cu file, compiled on first use and kept for
// the life of the library; disposing the library unloads the modules.
using System.Collections.Concurrent;
using System.Reflection;

namespace SwiftKV.Cuda;

/// <summary>Compiles and loads the embedded kernel files on demand.</summary>
public sealed class KernelLibrary : IDisposable
{
    const string Prefix = "native-kernels/";
    readonly ConcurrentDictionary<string, Lazy<CudaModule>> _modules = new();
    bool _disposed;

    /// <summary>
    /// Whether launchers whose kernels wait for their predecessor on the device (griddepcontrol.wait) launch them
    /// programmatically, so a kernel's start (and its weight prefetch) overlaps the tail of the one before it.
    /// On by default on sm_90+, never below; turning it off restores plain stream order (benchmarks compare both).
    /// </summary>
    public bool ProgrammaticLaunch
    {
        get => _programmatic ??= CudaRuntime.Device.ComputeMajor >= 9;
        set => _programmatic = value && CudaRuntime.Device.ComputeMajor >= 9;
    }
    bool? _programmatic;

    /// <summary>Names of the embedded .cu files ("rms_norm.cu", ...).</summary>
    public static IReadOnlyList<string> SourceFiles { get; } = Assembly.GetExecutingAssembly().GetManifestResourceNames()
        .Where(n => n.StartsWith(Prefix, StringComparison.Ordinal) && n.EndsWith(".cu", StringComparison.Ordinal))
        .Select(n => n[Prefix.Length..]).Order(StringComparer.Ordinal).ToArray();

    static readonly Lazy<IReadOnlyList<(string Name, string Text)>> Headers = new(() => Assembly.GetExecutingAssembly().GetManifestResourceNames()
        .Where(n => n.StartsWith(Prefix, StringComparison.Ordinal) && n.EndsWith(".cuh", StringComparison.Ordinal))
        .Select(n => (n[Prefix.Length..], Read(n[Prefix.Length..]))).ToArray());

    /// <summary>The embedded headers (name, text), as every module is compiled with them.</summary>
    internal static IReadOnlyList<(string Name, string Text)> HeaderSources => Headers.Value;

    /// <summary>The text of an embedded kernel file.</summary>
    public static string Read(string file)
    {
        using var s = Assembly.GetExecutingAssembly().GetManifestResourceStream(Prefix + file)
            ?? throw new CudaException($"kernel source '{file}' is not embedded in SwiftKV.Cuda (expected native-kernels/{file}).");
        using var r = new StreamReader(s);
        return r.ReadToEnd();
    }

    /// <summary>The kernel <paramref name="entry"/> of <paramref name="file"/>, compiling and loading the file if needed.</summary>
    public CudaKernel Get(string file, string entry)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var lazy = _modules.GetOrAdd(file, f => new Lazy<CudaModule>(() => new CudaModule(NvrtcCompiler.Compile(f, Read(f), Headers.Value), f)));
        CudaModule module;
        try
        {
            module = lazy.Value;
        }
        catch
        {
            // Lazy keeps its exception: without this, one transient failure (out of memory while loading) would fail
            // this kernel file for the backend's lifetime. The next Get tries again.
            _modules.TryRemove(KeyValuePair.Create(file, lazy));
            throw;
        }
        return module.GetKernel(entry);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var m in _modules.Values)
            if (m.IsValueCreated) m.Value.Dispose();
    }
}
