// The demo checkpoint cache: made once, reused, and made again when a file was damaged after it was made (a
// truncated weights file used to fail every later run with the same error, since the completion marker was trusted).
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Model.Tests.Checkpoint;

public sealed class DemoModelTests : IDisposable
{
    readonly TempDirectory _root = new();

    /// <summary>
    /// An empty SWIFTKV_CACHE put the demo model in the current directory; one naming a file failed with a path error
    /// that never named the variable. (No other test in this assembly reads the variable.)
    /// </summary>
    [Fact]
    public void CacheRoot_EmptyVariableIsUnset_AFileIsNamed()
    {
        string? saved = Environment.GetEnvironmentVariable("SWIFTKV_CACHE");
        try
        {
            Environment.SetEnvironmentVariable("SWIFTKV_CACHE", _root.Path);
            Assert.Equal(_root.Path, DemoModel.CacheRoot());
            Environment.SetEnvironmentVariable("SWIFTKV_CACHE", " ");
            Assert.True(Path.IsPathRooted(DemoModel.CacheRoot()));
            Assert.EndsWith("swiftkv", DemoModel.CacheRoot());
            string file = Path.Combine(_root.Path, "a-file");
            File.WriteAllText(file, "");
            Environment.SetEnvironmentVariable("SWIFTKV_CACHE", file);
            var e = Assert.Throws<InvalidModelException>(DemoModel.CacheRoot);
            Assert.Contains("(set by SWIFTKV_CACHE): point SWIFTKV_CACHE at a directory", e.Message);
        }
        finally
        {
            Environment.SetEnvironmentVariable("SWIFTKV_CACHE", saved);
        }
    }

    public void Dispose() => _root.Dispose();

    [Fact]
    public void Ensure_ReusesTheCache_AndRemakesItWhenDamaged()
    {
        var log = new List<string>();
        string dir = DemoModel.Ensure(_root.Path, log.Add);
        Assert.Single(log);
        Assert.Contains("making the demo checkpoint once", log[0]);
        string weights = Path.Combine(dir, "model.safetensors");
        var made = File.ReadAllBytes(weights);

        Assert.Equal(dir, DemoModel.Ensure(_root.Path, log.Add));
        Assert.Single(log);   // reused, nothing made

        using (var fs = new FileStream(weights, FileMode.Open)) fs.SetLength(fs.Length / 2);
        Assert.Equal(dir, DemoModel.Ensure(_root.Path, log.Add));
        Assert.Equal(2, log.Count);
        Assert.Contains("is damaged", log[1]);
        Assert.Equal(made, File.ReadAllBytes(weights));   // the same recipe and seed: the same bytes again
        LlamaCheckpointLoader.Verify(dir);

        // A damaged tokenizer too: the weights' check did not read it, so every run failed on it.
        string tokenizer = Path.Combine(dir, "tokenizer.json");
        var tokenizerMade = File.ReadAllBytes(tokenizer);
        File.WriteAllText(tokenizer, "{");
        Assert.Equal(dir, DemoModel.Ensure(_root.Path, log.Add));
        Assert.Equal(3, log.Count);
        Assert.Contains("is damaged", log[2]);
        Assert.Contains("tokenizer.json", log[2]);
        Assert.Equal(tokenizerMade, File.ReadAllBytes(tokenizer));
    }

    /// <summary>A staging folder left by a run killed while making the model goes once it is old; a fresh one stays.</summary>
    /// <summary>A cache root that cannot be made is named with what to do, not as "Could not find file '/proc/nope'".</summary>
    [Fact]
    public void Ensure_CacheRootThatCannotBeMade_IsNamed()
    {
        string file = Path.Combine(_root.Path, "a-file");
        File.WriteAllText(file, "");
        var e = Assert.Throws<InvalidModelException>(() => DemoModel.Ensure(Path.Combine(file, "cache")));
        Assert.Contains($"the demo model's cache {Path.Combine(file, "cache")} cannot be written", e.Message);
        Assert.Contains("SWIFTKV_CACHE", e.Message);
    }

    [Fact]
    public void Ensure_RemovesStagingLeftByAKilledRun()
    {
        string old = Path.Combine(_root.Path, DemoModel.Name + ".tmp-old"), fresh = Path.Combine(_root.Path, DemoModel.Name + ".tmp-fresh");
        foreach (var d in new[] { old, fresh })
        {
            Directory.CreateDirectory(d);
            File.WriteAllText(Path.Combine(d, "model.safetensors"), "partial");
        }
        var longAgo = DateTime.UtcNow.AddHours(-1);
        File.SetLastWriteTimeUtc(Path.Combine(old, "model.safetensors"), longAgo);
        Directory.SetLastWriteTimeUtc(old, longAgo);
        DemoModel.Ensure(_root.Path);
        Assert.False(Directory.Exists(old));
        Assert.True(Directory.Exists(fresh));
    }
}
