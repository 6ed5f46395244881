// SafetensorsFile against files laid out by hand from the safetensors format definition.
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Model.Tests.Checkpoint;

public sealed class SafetensorsFileTests : IDisposable
{
    readonly TempDirectory dir = new();

    public void Dispose() => dir.Dispose();

    string WriteRaw(string header, byte[] data, string name = "model.safetensors")
    {
        string path = dir.File(name);
        File.WriteAllBytes(path, RawSafetensors.Build(header, data));
        return path;
    }

    static InvalidModelException OpenFails(string path) => Assert.Throws<InvalidModelException>(() => SafetensorsFile.Open(path).Dispose());

    [Fact]
    public void Open_HandBuiltFile_ReadsShapesDtypesAndValues()
    {
        // a: F32 [2,2]; b: BF16 [3] = 1, -3, +inf; c: F16 [2] = 1, -2.
        byte[] data = [.. RawSafetensors.F32(1f, -2f, 0.5f, 3f), .. RawSafetensors.U16(0x3F80, 0xC040, 0x7F80), .. RawSafetensors.U16(0x3C00, 0xC000)];
        string path = WriteRaw("""
            {"__metadata__":{"format":"pt"},
             "a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},
             "b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},
             "c":{"dtype":"F16","shape":[2],"data_offsets":[22,26]}}
            """, data);

        using var file = SafetensorsFile.Open(path);

        Assert.Equal(["a", "b", "c"], file.Tensors.Select(t => t.Name));
        Assert.Equal("pt", file.Metadata["format"]);
        Assert.Equal([2L, 2L], file.Get("a").Shape);
        Assert.Equal(TensorDtype.BF16, file.Get("b").Dtype);
        Assert.Equal([1f, -2f, 0.5f, 3f], file.ReadFloat32("a"));
        Assert.Equal([1f, -3f, float.PositiveInfinity], file.ReadFloat32("b"));
        Assert.Equal([1f, -2f], file.ReadFloat32("c"));
        Assert.Equal(RawSafetensors.U16(0x3F80, 0xC040, 0x7F80), file.ReadBytes("b"));
    }

    [Fact]
    public void Open_EmptyTensorAndScalar_AreAccepted()
    {
        string path = WriteRaw("""{"e":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}""",
            RawSafetensors.F32(7f));
        using var file = SafetensorsFile.Open(path);
        Assert.Empty(file.ReadFloat32("e"));
        Assert.Equal([7f], file.ReadFloat32("s"));
    }

    [Fact]
    public void Open_LargeF32Tensor_ReadsAcrossChunks()
    {
        var values = Enumerable.Range(0, 3_000_000).Select(i => (float)i).ToArray();
        string header = $$$"""{"w":{"dtype":"F32","shape":[{{{values.Length}}}],"data_offsets":[0,{{{values.Length * 4}}}]}}""";
        string path = WriteRaw(header, RawSafetensors.F32(values));
        using var file = SafetensorsFile.Open(path);
        Assert.Equal(values, file.ReadFloat32("w"));
    }

    [Fact]
    public void Open_MissingFile_ThrowsNamingPath()
    {
        var e = OpenFails(dir.File("nope.safetensors"));
        Assert.Contains("nope.safetensors", e.Message);
    }

    [Fact]
    public void Open_ShorterThanLengthPrefix_Throws()
    {
        string path = dir.File("short.safetensors");
        File.WriteAllBytes(path, [1, 2, 3]);
        Assert.Contains("too short", OpenFails(path).Message);
    }

    [Fact]
    public void Open_HeaderLengthPastEndOfFile_ThrowsTruncated()
    {
        byte[] bytes = RawSafetensors.Build("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", RawSafetensors.F32(1f));
        string path = dir.File("cut.safetensors");
        File.WriteAllBytes(path, bytes[..20]);
        Assert.Contains("past the end", OpenFails(path).Message);
    }

    [Fact]
    public void Open_TruncatedData_ThrowsNamingTensor()
    {
        string path = WriteRaw("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", RawSafetensors.F32(1f, 2f));
        var e = OpenFails(path);
        Assert.Contains("'w'", e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void Open_OffsetsDisagreeWithShape_ThrowsWithBothSizes()
    {
        string path = WriteRaw("""{"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,8]}}""", new byte[8]);
        var e = OpenFails(path);
        Assert.Contains("'w'", e.Message);
        Assert.Contains("8 bytes", e.Message);
        Assert.Contains("needs 6", e.Message);
    }

    [Theory]
    [InlineData("""not json""", "not valid JSON")]
    [InlineData("""[1,2]""", "must be a JSON object")]
    [InlineData("""{"w":{"dtype":"Q4_K","shape":[1],"data_offsets":[0,1]}}""", "unknown dtype 'Q4_K'")]
    [InlineData("""{"w":{"shape":[1],"data_offsets":[0,4]}}""", "missing string 'dtype'")]
    [InlineData("""{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}""", "non-negative integers")]
    [InlineData("""{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}""", "not an ordered")]
    [InlineData("""{"w":{"dtype":"F32","shape":[1]}}""", "data_offsets")]
    [InlineData("""{"w":{"dtype":"F32","shape":[1],"data_offsets":["0","4"]}}""", "'data_offsets' must be [begin, end] integers")]
    [InlineData("""{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,null]}}""", "'data_offsets' must be [begin, end] integers")]
    [InlineData("""{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", "names 'w' twice")]
    [InlineData("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", "overlap")]
    [InlineData("""{"__metadata__":{"format":1}}""", "__metadata__ 'format' must be a string")]
    public void Open_MalformedHeader_ThrowsNamingProblem(string header, string expected)
    {
        string path = WriteRaw(header, new byte[16]);
        var e = OpenFails(path);
        Assert.Contains(expected, e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void Open_GitLfsPointer_SaysToFetchTheWeights()
    {
        string path = dir.File("model.safetensors");
        File.WriteAllText(path, "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 16060522560\n");
        var e = OpenFails(path);
        Assert.Contains("Git LFS pointer", e.Message);
        Assert.Contains("git lfs pull", e.Message);
    }

    /// <summary>
    /// Newer safetensors element types beside the weights (a complex rope table, MX scales) open; reading such a tensor
    /// fails naming its type (an unused one made the whole file fail to open).
    /// </summary>
    [Theory]
    [InlineData("C64", 8)]
    [InlineData("F8_E8M0", 1)]
    public void Open_NewerDtypeBesideTheWeights_OpensAndFailsOnlyWhenRead(string dtype, int size)
    {
        string path = WriteRaw($$$"""{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"{{{dtype}}}","shape":[2],"data_offsets":[4,{{{4 + 2 * size}}}]}}""",
            [.. RawSafetensors.F32(3f), .. new byte[2 * size]]);
        using var file = SafetensorsFile.Open(path);
        Assert.Equal([3f], file.ReadFloat32("w"));
        var e = Assert.Throws<InvalidModelException>(() => file.ReadFloat32("x"));
        Assert.Contains(dtype, e.Message);
    }

    [Fact]
    public void ReadFloat32_IntegerTensor_ThrowsNamingDtype()
    {
        string path = WriteRaw("""{"ids":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}""", new byte[4]);
        using var file = SafetensorsFile.Open(path);
        var e = Assert.Throws<InvalidModelException>(() => file.ReadFloat32("ids"));
        Assert.Contains("'ids'", e.Message);
        Assert.Contains("I32", e.Message);
    }

    [Fact]
    public void Get_UnknownName_ThrowsNamingFileAndTensor()
    {
        string path = WriteRaw("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", RawSafetensors.F32(1f));
        using var file = SafetensorsFile.Open(path);
        var e = Assert.Throws<InvalidModelException>(() => file.Get("b"));
        Assert.Contains("'b'", e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void ReadFloat32_LargeBf16Tensor_ConvertsEveryChunkInPlace()
    {
        // Over two conversion chunks and not a multiple of one, so the parallel path and its ragged end both run.
        const int n = 5 * (1 << 20) + 3;
        var bits = new ushort[n];
        for (int i = 0; i < n; i++) bits[i] = (ushort)(0x3C00 + (i * 7919 % 0x0800)); // finite positives around 2^-7..2^1
        string path = WriteRaw($$$"""{"w":{"dtype":"BF16","shape":[{{{n}}}],"data_offsets":[0,{{{2 * n}}}]}}""", RawSafetensors.U16(bits));

        using var file = SafetensorsFile.Open(path);
        float[] values = file.ReadFloat32("w");

        for (int i = 0; i < n; i++)
        {
            if (values[i] != BitConverter.Int32BitsToSingle(bits[i] << 16))
                Assert.Fail($"element {i}: got {values[i]}, bits 0x{bits[i]:X4}");
        }
    }

    [Fact]
    public void GetBytes_Slice_ReturnsMappedBytes()
    {
        string path = WriteRaw("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[4,10]}}""",
            [.. RawSafetensors.F32(1f), .. RawSafetensors.U16(0x1111, 0x2233, 0x4455)]);
        using var file = SafetensorsFile.Open(path);
        var b = file.Get("b");
        Assert.Equal(RawSafetensors.U16(0x2233, 0x4455), file.GetBytes(b, 2, 4).ToArray());
        Assert.Throws<ArgumentOutOfRangeException>(() => file.GetBytes(b, 4, 4).ToArray());
    }

    [Fact]
    public void ReadFloat32_FileTruncatedAfterOpening_ThrowsInsteadOfCrashing()
    {
        string path = WriteRaw("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""",
            RawSafetensors.F32(1f, 2f, 3f));
        using var file = SafetensorsFile.Open(path);
        using (var shrink = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
            shrink.SetLength(shrink.Length - 8);

        Assert.Equal([1f], file.ReadFloat32("a"));
        var e = Assert.Throws<InvalidModelException>(() => file.ReadFloat32("b"));
        Assert.Contains("'b'", e.Message);
        Assert.Contains("truncated after opening", e.Message);
    }

    [Fact]
    public void ReadFloat32_AfterDispose_ThrowsObjectDisposed()
    {
        string path = WriteRaw("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", RawSafetensors.F32(1f));
        var file = SafetensorsFile.Open(path);
        file.Dispose();
        file.Dispose();
        Assert.Throws<ObjectDisposedException>(() => file.ReadFloat32("a"));
    }
}
