// Finds the CUDA shared libraries at run time: the driver (libcuda.so.1, installed with the NVIDIA driver) and the
// toolkit's NVRTC, cuBLAS and cuBLASLt (CUDA_HOME / CUDA_PATH, /usr/local/cuda, then the loader path). The P/Invoke
// declarations name the logical libraries "cuda", "nvrtc", "cublas" and "cublasLt"; the resolver maps them to what was found.
using System.Reflection;
using System.Runtime.InteropServices;

namespace SwiftKV.Cuda.Native;

internal static class CudaLibraries
{
    public const string Driver = "cuda";
    public const string Nvrtc = "nvrtc";
    public const string Cublas = "cublas";
    public const string CublasLt = "cublasLt";
    /// <summary>NCCL, loaded only by multi-GPU work (libnccl.so.2, from the NVIDIA package libnccl2 or the CUDA toolkit's folders).</summary>
    public const string Nccl = "nccl";

    static readonly object Gate = new();
    static readonly Dictionary<string, nint> Loaded = new();
    static readonly Dictionary<string, string> Failures = new();
    static bool _resolverSet;

    /// <summary>Registers the resolver once; every *Native class calls this from its static constructor.</summary>
    public static void EnsureResolver()
    {
        lock (Gate)
        {
            if (_resolverSet) return;
            NativeLibrary.SetDllImportResolver(typeof(CudaLibraries).Assembly, Resolve);
            _resolverSet = true;
        }
    }

    static nint Resolve(string name, Assembly assembly, DllImportSearchPath? path) =>
        name is Driver or Nvrtc or Cublas or CublasLt or Nccl && TryLoad(name, out var h, out _) ? h : 0;

    /// <summary>The CUDA toolkit root: CUDA_HOME, CUDA_PATH or /usr/local/cuda, if it exists.</summary>
    public static string? ToolkitRoot()
    {
        foreach (var c in new[] { Environment.GetEnvironmentVariable("CUDA_HOME"), Environment.GetEnvironmentVariable("CUDA_PATH"), "/usr/local/cuda" })
            if (!string.IsNullOrEmpty(c) && Directory.Exists(c)) return c;
        return null;
    }

    /// <summary>Loads one logical library; on failure <paramref name="reason"/> says what to install or set.</summary>
    public static bool TryLoad(string name, out nint handle, out string reason)
    {
        lock (Gate)
        {
            if (Loaded.TryGetValue(name, out handle)) { reason = ""; return true; }
            if (Failures.TryGetValue(name, out reason!)) return false;
            foreach (var candidate in Candidates(name))
            {
                if (NativeLibrary.TryLoad(candidate, out handle))
                {
                    Loaded[name] = handle;
                    reason = "";
                    return true;
                }
            }
            reason = name switch
            {
                Driver => "libcuda.so.1 (the NVIDIA driver's CUDA library) was not found: install the NVIDIA driver and make sure a GPU is visible.",
                Nvrtc => "NVRTC (libnvrtc.so.*) was not found: install the CUDA toolkit's NVRTC (e.g. apt package cuda-nvrtc-13-0) and set CUDA_HOME or LD_LIBRARY_PATH to it.",
                Nccl => "NCCL (libnccl.so.2) was not found: install NVIDIA's NCCL (e.g. apt package libnccl2) and set LD_LIBRARY_PATH to it if it is not in the loader's path; it is needed only to train on several GPUs.",
                CublasLt => "cuBLASLt (libcublasLt.so.*) was not found: install the CUDA toolkit's cuBLAS (e.g. apt package libcublas-13-0, which ships cuBLASLt) and set CUDA_HOME or LD_LIBRARY_PATH to it.",
                _ => "cuBLAS (libcublas.so.*) was not found: install the CUDA toolkit's cuBLAS (e.g. apt package libcublas-13-0) and set CUDA_HOME or LD_LIBRARY_PATH to it.",
            };
            Failures[name] = reason;
            handle = 0;
            return false;
        }
    }

    static IEnumerable<string> Candidates(string name)
    {
        if (OperatingSystem.IsWindows())
        {
            if (name == Nccl) yield break;   // NCCL ships for Linux only
            if (name == Driver) yield return "nvcuda.dll";
            foreach (var f in ToolkitFiles(name switch { Nvrtc => "nvrtc64_*.dll", CublasLt => "cublasLt64_*.dll", _ => "cublas64_*.dll" }, "bin")) yield return f;
            yield break;
        }
        if (name == Nccl)
        {
            foreach (var f in ToolkitFiles("libnccl.so*", "lib64", "targets/x86_64-linux/lib", "lib")) yield return f;
            yield return "libnccl.so.2";
            yield return "libnccl.so";
            yield break;
        }
        if (name == Driver)
        {
            yield return "libcuda.so.1";
            yield return "libcuda.so";
            yield break;
        }
        string stem = name switch { Nvrtc => "libnvrtc", CublasLt => "libcublasLt", _ => "libcublas" };
        // cuBLAS loads cuBLASLt by soname; loading it first from the same folder makes that lookup succeed
        // even when the folder is not on LD_LIBRARY_PATH.
        foreach (var f in ToolkitFiles(stem + ".so*", "lib64", "targets/x86_64-linux/lib", "lib"))
        {
            if (name == Cublas)
            {
                var lt = NewestFirst(Directory.GetFiles(Path.GetDirectoryName(f)!, "libcublasLt.so*")).FirstOrDefault();
                if (lt is not null) NativeLibrary.TryLoad(lt, out _);
            }
            yield return f;
        }
        foreach (var v in new[] { 13, 12, 11 }) yield return $"{stem}.so.{v}";
        yield return stem + ".so";
    }

    /// <summary>Per folder, the files in <see cref="NewestFirst"/> order.</summary>
    static IEnumerable<string> ToolkitFiles(string pattern, params string[] subdirs)
    {
        var roots = new List<string>();
        if (ToolkitRoot() is { } root) roots.AddRange(subdirs.Select(s => Path.Combine(root, s)));
        roots.Add("/usr/lib/x86_64-linux-gnu");
        foreach (var dir in roots.Where(Directory.Exists))
        {
            var files = Directory.GetFiles(dir, pattern)
                .Where(f => !Path.GetFileName(f).Contains("builtins") && !f.EndsWith(".alt", StringComparison.Ordinal)
                    && Path.GetFileName(f).Contains("Lt") == pattern.Contains("Lt"));
            foreach (var f in NewestFirst(files)) yield return f;
        }
    }

    /// <summary>
    /// Versioned files by version, newest first (libnvrtc.so.13.0.48 before libnvrtc.so.12.4.127, whatever their names'
    /// lengths), then unversioned ones (libnvrtc.so, a dev symlink). A folder holding two CUDA majors thus gives the newer;
    /// CudaRuntime names a driver too old for it.
    /// </summary>
    internal static IEnumerable<string> NewestFirst(IEnumerable<string> files) =>
        files.OrderByDescending(Version).ThenByDescending(f => f, StringComparer.Ordinal);

    /// <summary>The numbers after ".so." (or in "64_13.dll"), compared part by part; none for an unversioned name.</summary>
    static VersionKey Version(string file)
    {
        string name = Path.GetFileName(file);
        int so = name.IndexOf(".so.", StringComparison.Ordinal);
        string digits = so >= 0 ? name[(so + 4)..] : name.Contains('_') ? name[(name.LastIndexOf('_') + 1)..].Replace(".dll", "", StringComparison.Ordinal) : "";
        var parts = digits.Split('.').Select(p => int.TryParse(p, out int n) ? n : -1).TakeWhile(n => n >= 0).ToArray();
        return new VersionKey(parts);
    }

    readonly record struct VersionKey(int[] Parts) : IComparable<VersionKey>
    {
        public int CompareTo(VersionKey other)
        {
            for (int i = 0; i < Math.Max(Parts.Length, other.Parts.Length); i++)
            {
                int a = i < Parts.Length ? Parts[i] : -1, b = i < other.Parts.Length ? other.Parts[i] : -1;
                if (a != b) return a.CompareTo(b);
            }
            return 0;
        }
    }
}
