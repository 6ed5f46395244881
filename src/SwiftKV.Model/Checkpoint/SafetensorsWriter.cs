// Writes one .safetensors file from fp32 values, stored as F32, F16 or BF16. Tensors are produced one at a
// time, either as a whole array (Func<float[]>) or block by block through a TensorFill callback, so a converter
// streams a checkpoint holding one tensor in memory and ModelMaker streams one holding only a block.
// Each block is converted to its storage type on all cores, and written on a background task while the next
// block is produced (two byte buffers), so producing, converting and writing overlap.
// NOTE: the header is padded with spaces to a multiple of 8 bytes, as the reference writer does, so every
// tensor's data starts 8-byte aligned when the file is mapped.
using System.Buffers.Binary;
using System.Text.Json;

namespace SwiftKV.Model.Checkpoint;

/// <summary>Writes elements [<paramref name="firstElement"/>, <paramref name="firstElement"/> + destination.Length) of a tensor, in row-major order.</summary>
public delegate void TensorFill(long firstElement, Span<float> destination);

/// <summary>A tensor to write: its name, shape and where its fp32 values come from when its turn comes.</summary>
public sealed class TensorToWrite
{
    readonly Func<float[]>? values;
    readonly TensorFill? fill;

    /// <summary>A tensor whose values <paramref name="values"/> returns as one array (called once, when the tensor is written).</summary>
    public TensorToWrite(string name, IReadOnlyList<long> shape, Func<float[]> values)
        : this(name, shape) => this.values = values ?? throw new ArgumentNullException(nameof(values));

    TensorToWrite(string name, IReadOnlyList<long> shape, TensorFill fill)
        : this(name, shape) => this.fill = fill ?? throw new ArgumentNullException(nameof(fill));

    TensorToWrite(string name, IReadOnlyList<long> shape)
    {
        Name = name ?? throw new ArgumentNullException(nameof(name));
        Shape = shape ?? throw new ArgumentNullException(nameof(shape));
        ElementCount = shape.Aggregate(1L, (a, b) => checked(a * b));
    }

    public string Name { get; }
    public IReadOnlyList<long> Shape { get; }
    public long ElementCount { get; }

    /// <summary>A tensor whose values are already in memory.</summary>
    public static TensorToWrite Of(string name, IReadOnlyList<long> shape, float[] values) => new(name, shape, () => values);

    /// <summary>A tensor produced block by block: the whole tensor is never in memory, whatever its size.</summary>
    public static TensorToWrite Streamed(string name, IReadOnlyList<long> shape, TensorFill fill) => new(name, shape, fill);

    internal bool IsStreamed => fill is not null;

    /// <summary>The same tensor, whose values (or each block of them) are produced only while <paramref name="token"/> is not cancelled.</summary>
    internal TensorToWrite WithCancellation(CancellationToken token)
    {
        if (!token.CanBeCanceled) return this;
        if (fill is { } f)
            return new TensorToWrite(Name, Shape, (TensorFill)((first, destination) => { token.ThrowIfCancellationRequested(); f(first, destination); }));
        var v = values!;
        return new TensorToWrite(Name, Shape, () => { token.ThrowIfCancellationRequested(); return v(); });
    }

    /// <summary>The array of a non-streamed tensor, checked against the shape; null for a streamed one.</summary>
    internal float[]? Materialize()
    {
        if (values is null) return null;
        float[] v = values();
        if (v is null || v.LongLength != ElementCount)
            throw new ArgumentException($"tensor '{Name}' {TensorInfo.FormatShape(Shape)} needs {ElementCount} values, got {v?.LongLength.ToString() ?? "null"}.");
        return v;
    }

    internal void Fill(long firstElement, Span<float> destination) => fill!(firstElement, destination);
}

/// <summary>Writes safetensors files.</summary>
public static class SafetensorsWriter
{
    /// <summary>Elements produced, converted and written per step (16 MB of fp32).</summary>
    const int BlockElements = 1 << 22;
    /// <summary>Below this, converting on one thread beats scheduling work on several.</summary>
    const int ParallelGrain = 1 << 18;

    /// <summary>
    /// Writes <paramref name="tensors"/> in order to <paramref name="path"/>, each stored as <paramref name="dtype"/>.
    /// Throws <see cref="ArgumentException"/> for a duplicate name or values that do not match a shape.
    /// </summary>
    public static void Write(string path, IReadOnlyList<TensorToWrite> tensors, TensorDtype dtype,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("safetensors writing needs a little-endian machine.");
        if (!dtype.ConvertsToFloat32()) throw new ArgumentException($"cannot store fp32 values as {dtype.SafetensorsName()}.", nameof(dtype));
        byte[] header = BuildHeader(tensors, dtype, metadata);

        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        Span<byte> prefix = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
        stream.Write(prefix);
        stream.Write(header);

        int size = dtype.ElementSize();
        int block = (int)Math.Clamp(tensors.Count == 0 ? 1 : tensors.Max(t => t.ElementCount), 1, BlockElements);
        float[]? scratch = tensors.Any(t => t.IsStreamed) ? new float[block] : null;
        byte[][] buffers = [new byte[block * size], new byte[block * size]];
        int next = 0;
        Task pending = Task.CompletedTask;
        try
        {
            foreach (var t in tensors)
            {
                float[]? array = t.Materialize();
                for (long start = 0; start < t.ElementCount; start += block)
                {
                    int count = (int)Math.Min(block, t.ElementCount - start);
                    float[] source = array ?? scratch!;
                    int sourceOffset = array is null ? 0 : (int)start;
                    if (array is null) t.Fill(start, scratch.AsSpan(0, count));

                    // The pending write reads the other buffer, so this one is free.
                    byte[] bytes = buffers[next];
                    Convert(source, sourceOffset, count, dtype, bytes);
                    pending.GetAwaiter().GetResult();
                    int length = count * size;
                    pending = Task.Run(() => stream.Write(bytes, 0, length));
                    next ^= 1;
                }
            }
            pending.GetAwaiter().GetResult();
        }
        finally
        {
            // On an error, let an in-flight write finish before the stream is disposed under it.
            try { pending.Wait(); } catch (AggregateException) { }
        }
    }

    /// <summary>Bytes a file of these tensors takes (header excluded), for planning shards.</summary>
    public static long DataBytes(IEnumerable<TensorToWrite> tensors, TensorDtype dtype) =>
        tensors.Sum(t => t.ElementCount * dtype.ElementSize());

    static void Convert(float[] source, int offset, int count, TensorDtype dtype, byte[] destination)
    {
        int size = dtype.ElementSize();
        if (count < 2 * ParallelGrain)
        {
            Fp32Conversion.FromFloat32(source.AsSpan(offset, count), dtype, destination.AsSpan(0, count * size));
            return;
        }
        int pieces = (count + ParallelGrain - 1) / ParallelGrain;
        Parallel.For(0, pieces, p =>
        {
            int first = p * ParallelGrain, n = Math.Min(ParallelGrain, count - first);
            Fp32Conversion.FromFloat32(source.AsSpan(offset + first, n), dtype, destination.AsSpan(first * size, n * size));
        });
    }

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
