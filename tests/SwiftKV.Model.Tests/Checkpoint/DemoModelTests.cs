// The demo checkpoint cache: made once, reused, and made again when a file was damaged after it was made (a
// truncated weights file used to fail every later run with the same error, since the completion marker was trusted).
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Model.Tests.Checkpoint;

public sealed class DemoModelTests : IDisposable
{
    readonly TempDirectory _root = new();

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
    }

    /// <summary>A staging folder left by a run killed while making the model goes once it is old; a fresh one stays.</summary>
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
