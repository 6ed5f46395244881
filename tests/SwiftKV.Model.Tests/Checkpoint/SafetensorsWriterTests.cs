// SafetensorsWriter: the layout it writes, checked by parsing the bytes directly, and round trips through the reader.
using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Model.Tests.Checkpoint;

public sealed class SafetensorsWriterTests : IDisposable
{
    readonly TempDirectory dir = new();

    public void Dispose() => dir.Dispose();

    [Fact]
    public void Write_Bf16_LaysOutPaddedHeaderAndContiguousData()
    {
        string path = dir.File("w.safetensors");
        SafetensorsWriter.Write(path, [TensorToWrite.Of("a", [3], [1f, -3f, 2f]), TensorToWrite.Of("b", [1, 1], [0.5f])],
            TensorDtype.BF16, new Dictionary<string, string> { ["format"] = "pt" });

        byte[] bytes = File.ReadAllBytes(path);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0UL, n % 8);
        using var header = JsonDocument.Parse(Encoding.UTF8.GetString(bytes, 8, (int)n).TrimEnd(' '));
        Assert.Equal("pt", header.RootElement.GetProperty("__metadata__").GetProperty("format").GetString());
        Assert.Equal("BF16", header.RootElement.GetProperty("a").GetProperty("dtype").GetString());
        Assert.Equal("[0,6]", header.RootElement.GetProperty("a").GetProperty("data_offsets").GetRawText());
        Assert.Equal("[6,8]", header.RootElement.GetProperty("b").GetProperty("data_offsets").GetRawText());
        Assert.Equal(RawSafetensors.U16(0x3F80, 0xC040, 0x4000, 0x3F00), bytes[(8 + (int)n)..]);
    }

    [Theory]
    [InlineData(TensorDtype.F32)]
    [InlineData(TensorDtype.F16)]
    [InlineData(TensorDtype.BF16)]
    public void Write_ThenOpen_RoundTripsWithinDtypePrecision(TensorDtype dtype)
    {
        var rng = new Random(7);
        float[] values = Enumerable.Range(0, 1000).Select(_ => (float)(rng.NextDouble() * 8 - 4)).ToArray();
        string path = dir.File("rt.safetensors");
        SafetensorsWriter.Write(path, [TensorToWrite.Of("m", [10, 100], values)], dtype);

        using var file = SafetensorsFile.Open(path);
        Assert.Equal(dtype, file.Get("m").Dtype);
        Assert.Equal([10L, 100L], file.Get("m").Shape);
        float[] back = file.ReadFloat32("m");
        // Half an ulp of the stored type, relative: 2^-24 (f32), 2^-11 (f16), 2^-8 (bf16).
        double tolerance = dtype switch { TensorDtype.F32 => 0, TensorDtype.F16 => 1.0 / 2048, _ => 1.0 / 256 };
        for (int i = 0; i < values.Length; i++)
            Assert.True(Math.Abs(back[i] - values[i]) <= tolerance * Math.Abs(values[i]), $"element {i}: {values[i]} -> {back[i]}");
    }

    [Fact]
    public void Write_WrongValueCount_ThrowsNamingTensor()
    {
        var e = Assert.Throws<ArgumentException>(() =>
            SafetensorsWriter.Write(dir.File("x.safetensors"), [TensorToWrite.Of("w", [2, 2], [1f, 2f, 3f])], TensorDtype.F32));
        Assert.Contains("'w'", e.Message);
    }

    [Fact]
    public void Write_DuplicateName_Throws() =>
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(dir.File("x.safetensors"),
            [TensorToWrite.Of("w", [1], [1f]), TensorToWrite.Of("w", [1], [2f])], TensorDtype.F32));
}
