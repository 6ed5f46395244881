// Writes one .safetensors file from fp32 values, stored as F32, F16 or BF16. Tensors are produced one at a
// time through a callback, so a converter can stream a whole checkpoint while holding one tensor in memory.
// NOTE: the header is padded with spaces to a multiple of 8 bytes, as the reference writer does, so every
// tensor's data starts 8-byte aligned when the file is mapped.
using System.Buffers;
using System.Text.Json;

namespace SwiftKV.Model.Checkpoint;

/// <summary>A tensor to write: its name, shape and a callback that supplies its fp32 values when its turn comes.</summary>
public sealed record TensorToWrite(string Name, IReadOnlyList<long> Shape, Func<float[]> Values)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => checked(a * b));

    /// <summary>A tensor whose values are already in memory.</summary>
    public static TensorToWrite Of(string name, IReadOnlyList<long> shape, float[] values) => new(name, shape, () => values);
}

/// <summary>Writes safetensors files.</summary>
public static class SafetensorsWriter
{
    const int ChunkElements = 1 << 20;

    /// <summary>
    /// Writes <paramref name="tensors"/> in order to <paramref name="path"/>, each stored as <paramref name="dtype"/>.
    /// Throws <see cref="ArgumentException"/> for a duplicate name or values that do not match a shape.
    /// </summary>
    public static void Write(string path, IReadOnlyList<TensorToWrite> tensors, TensorDtype dtype,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        if (!dtype.ConvertsToFloat32()) throw new ArgumentException($"cannot store fp32 values as {dtype.SafetensorsName()}.", nameof(dtype));
        byte[] header = BuildHeader(tensors, dtype, metadata);

        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        Span<byte> prefix = stackalloc byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
        stream.Write(prefix);
        stream.Write(header);

        int size = dtype.ElementSize();
        byte[] buffer = ArrayPool<byte>.Shared.Rent(ChunkElements * size);
        try
        {
            foreach (var t in tensors)
            {
                float[] values = t.Values();
                if (values.LongLength != t.ElementCount)
                    throw new ArgumentException($"tensor '{t.Name}' {TensorInfo.FormatShape(t.Shape)} needs {t.ElementCount} values, got {values.LongLength}.");
                for (int start = 0; start < values.Length; start += ChunkElements)
                {
                    int count = Math.Min(ChunkElements, values.Length - start);
                    var bytes = buffer.AsSpan(0, count * size);
                    Fp32Conversion.FromFloat32(values.AsSpan(start, count), dtype, bytes);
                    stream.Write(bytes);
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Bytes a file of these tensors takes (header excluded), for planning shards.</summary>
    public static long DataBytes(IEnumerable<TensorToWrite> tensors, TensorDtype dtype) =>
        tensors.Sum(t => t.ElementCount * dtype.ElementSize());

    static byte[] BuildHeader(IReadOnlyList<TensorToWrite> tensors, TensorDtype dtype, IReadOnlyDictionary<string, string>? metadata)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        using var json = new MemoryStream();
        using (var w = new Utf8JsonWriter(json))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var t in tensors)
            {
                if (t.Name == "__metadata__" || !names.Add(t.Name))
                    throw new ArgumentException($"tensor name '{t.Name}' is reserved or given twice.", nameof(tensors));
                if (t.Shape.Any(d => d < 0)) throw new ArgumentException($"tensor '{t.Name}' has a negative dimension {TensorInfo.FormatShape(t.Shape)}.", nameof(tensors));
                long bytes = checked(t.ElementCount * dtype.ElementSize());
                w.WriteStartObject(t.Name);
                w.WriteString("dtype", dtype.SafetensorsName());
                w.WriteStartArray("shape");
                foreach (long d in t.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }
            w.WriteEndObject();
        }
        int padded = (int)((json.Length + 7) / 8 * 8);
        var header = new byte[padded];
        json.ToArray().CopyTo(header, 0);
        header.AsSpan((int)json.Length).Fill((byte)' ');
        return header;
    }
}
