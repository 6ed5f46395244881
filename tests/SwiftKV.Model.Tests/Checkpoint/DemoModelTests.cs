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
}
