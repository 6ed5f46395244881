// Compiles CUDA C++ source to a CUBIN for the GPU found at run time, with an on-disk cache keyed by the SHA-256
// of (source, headers, arch, options, NVRTC version), so a second start loads the CUBIN without compiling.
// Cache folder: $SWIFTKV_KERNEL_CACHE, else $XDG_CACHE_HOME/swiftkv/kernels, else ~/.cache/swiftkv/kernels.
using System.Security.Cryptography;
using System.Text;
using SwiftKV.Cuda.Native;

namespace SwiftKV.Cuda;

/// <summary>NVRTC front end with a disk cache. Thread-safe.</summary>
public static unsafe class NvrtcCompiler
{
    /// <summary>Where compiled kernels are cached.</summary>
    public static string CacheDirectory
    {
        get
        {
            if (Environment.GetEnvironmentVariable("SWIFTKV_KERNEL_CACHE") is { Length: > 0 } d) return d;
            string root = Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } x
                ? x
                : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
            return Path.Combine(root, "swiftkv", "kernels");
        }
    }

    /// <summary>Compilations that actually ran NVRTC in this process (cache misses).</summary>
    public static int CompileCount => _compiles;
    static int _compiles;

    /// <summary>
    /// Returns the CUBIN for <paramref name="source"/> on the current device. <paramref name="headers"/> are
    /// (include name, text) pairs the source may #include. Compile errors throw with NVRTC's log.
    /// </summary>
    public static byte[] Compile(string name, string source, IReadOnlyList<(string Name, string Text)> headers)
    {
        var dev = CudaRuntime.Device;
        var options = Options(dev.Arch);
        string key = Key(name, source, headers, options, dev.NvrtcVersion);
        // ".skvc": the checked entry format below. Its own name, so an older build of this library sharing the cache
        // directory (which reads bare .cubin files) never loads one of these, and this build never deletes its files.
        string file = Path.Combine(CacheDirectory, $"{Path.GetFileNameWithoutExtension(name)}-{dev.Arch}-{key}.skvc");
        if (File.Exists(file) && TryReadCache(file) is { } cached) return cached;
        var cubin = Run(name, source, headers, options);
        Interlocked.Increment(ref _compiles);
        TryWriteCache(file, cubin);
        return cubin;
    }

    /// <summary>
    /// Compiles for another GPU architecture ("sm_80", ...), without the cache: tests check on one GPU that the kernel
    /// files other GPUs load build for them too.
    /// </summary>
    internal static byte[] CompileFor(string arch, string name, string source, IReadOnlyList<(string Name, string Text)> headers)
    {
        CudaRuntime.Bind();
        return Run(name, source, headers, Options(arch));
    }

    static List<string> Options(string arch)
    {
        var options = new List<string> { $"--gpu-architecture={arch}", "--std=c++17", "-default-device" };
        if (CudaLibraries.ToolkitRoot() is { } root && Directory.Exists(Path.Combine(root, "include")))
            options.Add("-I" + Path.Combine(root, "include"));
        options.AddRange(ExperimentDefines(Environment.GetEnvironmentVariable("SWIFTKV_NVRTC_DEFINES")));
        return options;
    }

    /// <summary>
    /// Kernel experiments on a device without a compiler (no nvcc there for .NET builds): SWIFTKV_NVRTC_DEFINES="A=1 B=2"
    /// compiles every module with -DA=1 -DB=2, so a benchmark can time a kernel's variant switches (QG_STAGES, ...)
    /// in the engine. Part of the cache key like any option. Unset in normal use.
    /// </summary>
    internal static IReadOnlyList<string> ExperimentDefines(string? value) =>
        (value ?? "")
            .Split([' ', ';', ','], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(d => System.Text.RegularExpressions.Regex.IsMatch(d, "^[A-Za-z_][A-Za-z0-9_]*(=[A-Za-z0-9_.+-]*)?$")
                ? "-D" + d : throw new ArgumentException($"SWIFTKV_NVRTC_DEFINES: '{d}' is not NAME or NAME=VALUE (only -D switches may be set this way)."))
            .ToList();

    static string Key(string name, string source, IReadOnlyList<(string Name, string Text)> headers, List<string> options, string nvrtc)
    {
        var sb = new StringBuilder().Append(name).Append('\0').Append(source).Append('\0').Append(nvrtc);
        foreach (var (n, t) in headers) sb.Append('\0').Append(n).Append('\0').Append(t);
        foreach (var o in options.Where(o => !o.StartsWith("-I", StringComparison.Ordinal))) sb.Append('\0').Append(o);
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(sb.ToString())))[..24];
    }

    // Cache entry: "SKVCUBIN", the CUBIN's length (8 bytes, little-endian), its SHA-256, then the CUBIN. A truncated or
    // damaged entry (power loss after the rename, a disk error, two writers) fails the check and is compiled again,
    // instead of failing every start in cuModuleLoadData or, worse, loading a wrong kernel.
    static ReadOnlySpan<byte> CacheMagic => "SKVCUBIN"u8;
    const int CacheHeader = 8 + 8 + 32;

    internal static byte[]? TryReadCache(string file)
    {
        try
        {
            byte[] all = File.ReadAllBytes(file);
            if (all.Length > CacheHeader && all.AsSpan(0, 8).SequenceEqual(CacheMagic)
                && BitConverter.ToInt64(all, 8) == all.Length - CacheHeader)
            {
                byte[] cubin = all[CacheHeader..];
                if (SHA256.HashData(cubin).AsSpan().SequenceEqual(all.AsSpan(16, 32))) return cubin;
            }
            File.Delete(file);   // damaged: compiled again and rewritten below
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Unreadable (another user's cache, a disk error): compile instead.
        }
        return null;
    }

    internal static void TryWriteCache(string file, byte[] cubin)
    {
        // A unique temp name per write: two processes (or containers sharing a volume, often both pid 1) or two
        // backends in one process never write the same temp file; the rename is atomic.
        string tmp = file + "." + Guid.NewGuid().ToString("N") + ".tmp";
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(file)!);
            var entry = new byte[CacheHeader + cubin.Length];
            CacheMagic.CopyTo(entry);
            BitConverter.TryWriteBytes(entry.AsSpan(8), (long)cubin.Length);
            SHA256.HashData(cubin).CopyTo(entry, 16);
            cubin.CopyTo(entry, CacheHeader);
            using (var f = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write))
            {
                f.Write(entry);
                f.Flush(flushToDisk: true);
            }
            File.Move(tmp, file, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A read-only home only costs a recompile next start. A full disk must not also leave a partial temp file
            // behind on every start.
            try { File.Delete(tmp); } catch (Exception d) when (d is IOException or UnauthorizedAccessException) { }
        }
    }

    static byte[] Run(string name, string source, IReadOnlyList<(string Name, string Text)> headers, List<string> options)
    {
        var allocations = new List<nint>();
        byte* Utf8(string s)
        {
            var p = System.Runtime.InteropServices.Marshal.StringToCoTaskMemUTF8(s);
            allocations.Add(p);
            return (byte*)p;
        }
        nint prog = 0;
        try
        {
            var headerTexts = stackalloc byte*[Math.Max(1, headers.Count)];
            var headerNames = stackalloc byte*[Math.Max(1, headers.Count)];
            for (int i = 0; i < headers.Count; i++)
            {
                headerTexts[i] = Utf8(headers[i].Text);
                headerNames[i] = Utf8(headers[i].Name);
            }
            NvrtcNative.Check(NvrtcNative.nvrtcCreateProgram(out prog, Utf8(source), Utf8(name), headers.Count, headerTexts, headerNames),
                $"nvrtcCreateProgram({name})");
            var opts = stackalloc byte*[options.Count];
            for (int i = 0; i < options.Count; i++) opts[i] = Utf8(options[i]);
            int status = NvrtcNative.nvrtcCompileProgram(prog, options.Count, opts);
            if (status != 0)
            {
                string log = Log(prog);
                try { NvrtcNative.Check(status, $"nvrtcCompileProgram({name})"); }
                catch (CudaException e) { throw new CudaException($"{e.Message} with options [{string.Join(' ', options)}]:\n{log}") { Call = e.Call, Status = e.Status, IsOutOfMemory = e.IsOutOfMemory }; }
            }
            NvrtcNative.Check(NvrtcNative.nvrtcGetCUBINSize(prog, out nuint size), $"nvrtcGetCUBINSize({name})");
            var cubin = new byte[(int)size];
            fixed (byte* p = cubin) NvrtcNative.Check(NvrtcNative.nvrtcGetCUBIN(prog, p), $"nvrtcGetCUBIN({name})");
            return cubin;
        }
        finally
        {
            if (prog != 0) NvrtcNative.nvrtcDestroyProgram(ref prog);
            foreach (var p in allocations) System.Runtime.InteropServices.Marshal.FreeCoTaskMem(p);
        }
    }

    static string Log(nint prog)
    {
        if (NvrtcNative.nvrtcGetProgramLogSize(prog, out nuint size) != 0 || size <= 1) return "(no log)";
        var buf = new byte[(int)size];
        fixed (byte* p = buf) NvrtcNative.nvrtcGetProgramLog(prog, p);
        return Encoding.UTF8.GetString(buf, 0, buf.Length - 1);
    }
}
