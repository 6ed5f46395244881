// SafetensorsCheckpoint: finding the files of a directory and refusing inconsistent shard indexes.
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Model.Tests.Checkpoint;

public sealed class SafetensorsCheckpointTests : IDisposable
{
    readonly TempDirectory dir = new();

    public void Dispose() => dir.Dispose();

    void Shard(string name, params string[] tensors) =>
        SafetensorsWriter.Write(dir.File(name), tensors.Select(t => TensorToWrite.Of(t, [1], [1f])).ToList(), TensorDtype.F32);

    void Index(string weightMapJson) =>
        File.WriteAllText(dir.File(SafetensorsCheckpoint.IndexFileName), $$"""{"metadata":{},"weight_map":{{weightMapJson}}}""");

    InvalidModelException OpenFails() => Assert.Throws<InvalidModelException>(() => SafetensorsCheckpoint.Open(dir.Path).Dispose());

    [Fact]
    public void Open_TwoShards_FindsEveryTensorInItsFile()
    {
        Shard("a.safetensors", "x", "y");
        Shard("b.safetensors", "z");
        Index("""{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"}""");
        using var ckpt = SafetensorsCheckpoint.Open(dir.Path);
        Assert.Equal(["x", "y", "z"], ckpt.TensorNames.Order());
        Assert.True(ckpt.TryGet("z", out var info, out var file));
        Assert.EndsWith("b.safetensors", file.Path);
        Assert.Equal([1L], info.Shape);
        Assert.Equal([1f], ckpt.ReadFloat32("y"));
    }

    [Fact]
    public void Open_EmptyDirectory_Throws() => Assert.Contains("not a safetensors checkpoint", OpenFails().Message);

    [Fact]
    public void Open_ListedShardMissing_ThrowsNamingShard()
    {
        Shard("a.safetensors", "x");
        Index("""{"x":"a.safetensors","y":"gone.safetensors"}""");
        Assert.Contains("'gone.safetensors'", OpenFails().Message);
    }

    [Fact]
    public void Open_StaleIndex_ThrowsNamingTensorAndShard()
    {
        Shard("a.safetensors", "x");
        Index("""{"x":"a.safetensors","w":"a.safetensors"}""");
        var e = OpenFails();
        Assert.Contains("'w'", e.Message);
        Assert.Contains("stale index", e.Message);
    }

    [Fact]
    public void Open_TensorInTwoShards_Throws()
    {
        Shard("a.safetensors", "x");
        Shard("b.safetensors", "x", "y");
        Index("""{"x":"a.safetensors","y":"b.safetensors"}""");
        Assert.Contains("appears in both", OpenFails().Message);
    }

    [Theory]
    [InlineData("""{"x":"../a.safetensors"}""")]
    [InlineData("""{"x":"/etc/a.safetensors"}""")]
    [InlineData("""{"x":"sub\\a.safetensors"}""")]
    public void Open_ShardPathOutsideDirectory_Throws(string weightMap)
    {
        Index(weightMap);
        Assert.Contains("not a plain file name", OpenFails().Message);
    }

    /// <summary>An index saved with a UTF-8 byte order mark (as Windows editors save) opens like one without.</summary>
    [Fact]
    public void Open_IndexWithUtf8Bom_ReadsIt()
    {
        Shard("a.safetensors", "x");
        File.WriteAllText(dir.File(SafetensorsCheckpoint.IndexFileName), """{"metadata":{},"weight_map":{"x":"a.safetensors"}}""",
            new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: true));
        Assert.Equal(0xEF, File.ReadAllBytes(dir.File(SafetensorsCheckpoint.IndexFileName))[0]);
        using var ckpt = SafetensorsCheckpoint.Open(dir.Path);
        Assert.Equal(["x"], ckpt.TensorNames);
    }

    /// <summary>A directory where a weights file belongs is named as one (it read as a missing file).</summary>
    [Fact]
    public void Open_WeightsFileIsADirectory_SaysSo()
    {
        Directory.CreateDirectory(dir.File(SafetensorsCheckpoint.SingleFileName));
        Assert.Contains($"{dir.File(SafetensorsCheckpoint.SingleFileName)} is a directory, not a file", OpenFails().Message);
        Directory.Delete(dir.File(SafetensorsCheckpoint.SingleFileName));

        Shard("a.safetensors", "x");
        Directory.CreateDirectory(dir.File("b.safetensors"));
        Index("""{"x":"a.safetensors","y":"b.safetensors"}""");
        var e = OpenFails();
        Assert.Contains("shard 'b.safetensors' is listed", e.Message);
        Assert.Contains($"{dir.File("b.safetensors")} is a directory, not a file", e.Message);
    }

    [Fact]
    public void ReadFloat32_UnknownTensor_ThrowsNamingDirectory()
    {
        Shard("model.safetensors", "x");
        using var ckpt = SafetensorsCheckpoint.Open(dir.Path);
        var e = Assert.Throws<InvalidModelException>(() => ckpt.ReadFloat32("nope"));
        Assert.Contains("'nope'", e.Message);
    }
}
