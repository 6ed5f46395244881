// The default checkpoint of the CLI demo and the samples: a small random-weight SwiftKV model (the "demo" preset,
// SwiftKV on the later half of the layers, AcrossKV 2-way) with the demo tokenizer, made once under the user's
// cache directory and reused by every later run.
// NOTE: random weights, so its text is gibberish by construction; it exists to show the pipeline and the prefill
// saving without a download. The name carries a version: change it when the recipe changes, so old caches are
// not mistaken for the new model.
using SwiftKV.Model.Tokenization;

namespace SwiftKV.Model.Checkpoint;

/// <summary>Finds or makes the demo checkpoint.</summary>
public static class DemoModel
{
    /// <summary>Directory name of the demo checkpoint inside the cache root.</summary>
    public const string Name = "swiftkv-demo-v1";

    const string CompleteMarker = ".complete";

    /// <summary>
    /// The cache root: <c>$SWIFTKV_CACHE</c>, else <c>$XDG_CACHE_HOME/swiftkv</c>, else <c>~/.cache/swiftkv</c>. A variable
    /// set to an empty value counts as unset (it would put the model in the current directory); one that names a file is
    /// an error naming the variable.
    /// </summary>
    public static string CacheRoot()
    {
        static string? Variable(string name) => Environment.GetEnvironmentVariable(name) is { Length: > 0 } v && !string.IsNullOrWhiteSpace(v) ? v : null;
        string? explicitRoot = Variable("SWIFTKV_CACHE");
        string root = explicitRoot ?? Path.Combine(Variable("XDG_CACHE_HOME")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache"), "swiftkv");
        if (File.Exists(root))
            throw new InvalidModelException($"the demo model's cache {root} is a file, not a directory" +
                (explicitRoot is not null ? " (set by SWIFTKV_CACHE): point SWIFTKV_CACHE at a directory." : ": move it, or set SWIFTKV_CACHE to a directory."));
        return root;
    }

    /// <summary>The demo model's config: the "demo" preset with SwiftKV on layers 4..7 and AcrossKV groups of 2.</summary>
    public static LlamaConfig Config() =>
        (ModelPresets.Get("demo") with { SwiftKv = true, ModelType = "llama_swiftkv", NumKeyValueLayers = 4, KeyValueGroupSize = 2 }).Validate();

    /// <summary>
    /// The demo checkpoint's directory under <paramref name="cacheRoot"/> (default <see cref="CacheRoot"/>), made
    /// first if it is missing or was left half-written. <paramref name="log"/> hears one line when it is made.
    /// </summary>
    public static string Ensure(string? cacheRoot = null, Action<string>? log = null)
    {
        string dir = Path.Combine(cacheRoot ?? CacheRoot(), Name);
        if (File.Exists(Path.Combine(dir, CompleteMarker)))
        {
            // A cache damaged after it was made (a truncated or edited file) is made again rather than failing every run:
            // the headers and shapes are checked, which reads no weights, and the tokenizer is read (a few KB).
            try
            {
                VerifyWhole(dir);
                return dir;
            }
            catch (Exception e) when (e is InvalidModelException or IOException or UnauthorizedAccessException)
            {
                log?.Invoke($"the demo checkpoint in {dir} is damaged ({e.Message.Split('\n')[0]}); making it again...");
            }
        }
        else
        {
            log?.Invoke($"making the demo checkpoint once in {dir} (random weights, SwiftKV 50% + AcrossKV 2-way)...");
        }
        MakeCacheRoot(Path.GetDirectoryName(dir)!);
        RemoveStaleStaging(dir);
        // Write beside the final directory and rename, so two processes racing here never see a partial model.
        string staging = dir + ".tmp-" + Guid.NewGuid().ToString("N");
        try
        {
            ModelMaker.Write(staging, Config(), new ModelMakerOptions { Seed = 2026, Dtype = TensorDtype.BF16, InitStd = 0.05f });
            LlamaTokenizer.CreateDemo().Save(staging);
            File.WriteAllText(Path.Combine(staging, CompleteMarker), "");
            if (File.Exists(Path.Combine(dir, CompleteMarker)) && Verifies(dir)) return dir;
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
            Directory.Move(staging, dir);
        }
        catch (IOException) when (File.Exists(Path.Combine(dir, CompleteMarker)))
        {
            // Another process finished first; its copy is identical (same seed, same recipe).
        }
        catch (UnauthorizedAccessException e)
        {
            throw CannotWrite(Path.GetDirectoryName(dir)!, e);
        }
        finally
        {
            if (Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
        }
        return dir;
    }

    static void MakeCacheRoot(string root)
    {
        try
        {
            Directory.CreateDirectory(root);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw CannotWrite(root, e);
        }
    }

    static InvalidModelException CannotWrite(string root, Exception e) =>
        new($"the demo model's cache {root} cannot be written ({e.Message}): " +
            (Environment.GetEnvironmentVariable("SWIFTKV_CACHE") is { Length: > 0 } ? "SWIFTKV_CACHE names it; point SWIFTKV_CACHE at a directory you can write." : "set SWIFTKV_CACHE to a directory you can write."), e);

    /// <summary>
    /// Staging folders a run left when it was killed while writing (Ctrl-C skips the finally below): ~120 MB each.
    /// Only those untouched for ten minutes go, so a run writing one now is left alone.
    /// </summary>
    static void RemoveStaleStaging(string dir)
    {
        var parent = Path.GetDirectoryName(dir);
        if (parent is null || !Directory.Exists(parent)) return;
        foreach (var stale in Directory.EnumerateDirectories(parent, Path.GetFileName(dir) + ".tmp-*"))
        {
            try
            {
                if (DateTime.UtcNow - Directory.GetLastWriteTimeUtc(stale) > TimeSpan.FromMinutes(10)
                    && Directory.EnumerateFiles(stale).All(f => DateTime.UtcNow - File.GetLastWriteTimeUtc(f) > TimeSpan.FromMinutes(10)))
                    Directory.Delete(stale, recursive: true);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // another process removed it, or it is not ours to remove
            }
        }
    }

    static void VerifyWhole(string dir)
    {
        LlamaCheckpointLoader.Verify(dir);
        LlamaTokenizer.Load(dir);
    }

    static bool Verifies(string dir)
    {
        try
        {
            VerifyWhole(dir);
            return true;
        }
        catch (Exception e) when (e is InvalidModelException or IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }
}
