// Reads one .safetensors file: an 8-byte little-endian header length N, N bytes of JSON
// ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}), then the data.
// The header is checked in full at open, with positional reads, so a truncated or hand-edited file fails there
// with the file and tensor named, not later in a kernel. The data is then memory-mapped read-only: tensors are
// converted straight from the page cache (no intermediate copy), large ones on all cores, and a device backend
// can upload from the mapping through GetBytes.
// NOTE: touching a mapped page past the end of a file that shrank after opening kills the process (SIGBUS), so
// every read first checks the file is still long enough and throws instead.
using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;

namespace SwiftKV.Model.Checkpoint;

/// <summary>An open, memory-mapped safetensors file. Disposing it unmaps and closes the file.</summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    /// <summary>The reference implementation refuses headers over 100 MB; a real one is a few hundred KB.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    /// <summary>Elements one task converts; tensors of more than two chunks are converted in parallel.</summary>
    const int ChunkElements = 1 << 20;

    readonly SafeFileHandle handle;
    readonly MemoryMappedFile map;
    readonly MemoryMappedViewAccessor view;
    readonly byte* data;
    readonly Dictionary<string, TensorInfo> byName;
    int disposed;

    public string Path { get; }
    /// <summary>Tensors in header order.</summary>
    public IReadOnlyList<TensorInfo> Tensors { get; }
    /// <summary>The optional <c>__metadata__</c> map (Hugging Face writes {"format": "pt"}).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    SafetensorsFile(string path, SafeFileHandle handle, List<TensorInfo> tensors, Dictionary<string, string> metadata)
    {
        Path = path;
        this.handle = handle;
        Tensors = tensors;
        Metadata = metadata;
        byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        map = MemoryMappedFile.CreateFromFile(handle, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: true);
        try
        {
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* pointer = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
            data = pointer + view.PointerOffset;
        }
        catch
        {
            view?.Dispose();
            map.Dispose();
            throw;
        }
    }

    /// <summary>Opens <paramref name="path"/>, validates its header and maps it; throws <see cref="InvalidModelException"/> naming the problem.</summary>
    public static SafetensorsFile Open(string path)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("safetensors reading needs a little-endian machine.");
        if (!File.Exists(path)) throw new InvalidModelException($"safetensors file not found: {path}");
        var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
        try
        {
            var (tensors, metadata) = ReadHeader(handle, path);
            return new SafetensorsFile(path, handle, tensors, metadata);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    public bool Contains(string name) => byName.ContainsKey(name);

    public bool TryGet(string name, out TensorInfo info) => byName.TryGetValue(name, out info!);

    /// <summary>The header entry of <paramref name="name"/>; throws naming the file when it is absent.</summary>
    public TensorInfo Get(string name) =>
        byName.TryGetValue(name, out var info) ? info : throw new InvalidModelException($"{Path}: no tensor named '{name}'.");

    /// <summary>Reads a F32, F16 or BF16 tensor as a new fp32 array.</summary>
    public float[] ReadFloat32(string name)
    {
        var info = Get(name);
        if (info.ElementCount > Array.MaxLength)
            throw new InvalidModelException($"{Path}: tensor '{name}' {info.ShapeText} has {info.ElementCount} elements, more than one array holds.");
        var values = GC.AllocateUninitializedArray<float>((int)info.ElementCount);
        ReadFloat32(info, values);
        return values;
    }

    /// <summary>Reads a F32, F16 or BF16 tensor of this file into <paramref name="destination"/> (exactly its element count).</summary>
    public void ReadFloat32(TensorInfo info, Span<float> destination)
    {
        CheckOwn(info);
        if (destination.Length != info.ElementCount)
            throw new ArgumentException($"tensor '{info.Name}' has {info.ElementCount} elements; destination holds {destination.Length}.", nameof(destination));
        if (!info.Dtype.ConvertsToFloat32())
            throw new InvalidModelException($"{Path}: tensor '{info.Name}' has dtype {info.Dtype.SafetensorsName()}, which cannot be read as fp32 (supported: F32, F16, BF16).");
        CheckStillMapped(info);

        int size = info.Dtype.ElementSize();
        byte* source = data + info.DataOffset;
        int count = destination.Length;
        var dtype = info.Dtype;
        fixed (float* target = destination)
        {
            if (count <= 2 * ChunkElements)
            {
                Fp32Conversion.ToFloat32(new ReadOnlySpan<byte>(source, count * size), dtype, new Span<float>(target, count));
                return;
            }
            // Pointers cannot be captured by a lambda; their addresses can.
            nint src = (nint)source, dst = (nint)target;
            int chunks = (count + ChunkElements - 1) / ChunkElements;
            Parallel.For(0, chunks, c =>
            {
                int first = c * ChunkElements, n = Math.Min(ChunkElements, count - first);
                Fp32Conversion.ToFloat32(new ReadOnlySpan<byte>((byte*)src + (long)first * size, n * size), dtype, new Span<float>((float*)dst + first, n));
            });
        }
    }

    /// <summary>The tensor's stored bytes, whatever its dtype (for copying a tensor unchanged).</summary>
    public byte[] ReadBytes(string name)
    {
        var info = Get(name);
        if (info.ByteLength > Array.MaxLength)
            throw new InvalidModelException($"{Path}: tensor '{name}' is {info.ByteLength} bytes, more than one array holds.");
        var bytes = GC.AllocateUninitializedArray<byte>((int)info.ByteLength);
        GetBytes(info, 0, bytes.Length).CopyTo(bytes);
        return bytes;
    }

    /// <summary>
    /// <paramref name="length"/> stored bytes of a tensor from <paramref name="byteOffset"/>, straight from the
    /// mapping (no copy), for uploading to a device. Valid until this file is disposed.
    /// </summary>
    public ReadOnlySpan<byte> GetBytes(TensorInfo info, long byteOffset, int length)
    {
        CheckOwn(info);
        if (byteOffset < 0 || length < 0 || byteOffset + length > info.ByteLength)
            throw new ArgumentOutOfRangeException(nameof(byteOffset), $"bytes [{byteOffset}, {byteOffset + length}) are outside tensor '{info.Name}' ({info.ByteLength} bytes).");
        CheckStillMapped(info);
        return new ReadOnlySpan<byte>(data + info.DataOffset + byteOffset, length);
    }

    void CheckOwn(TensorInfo info)
    {
        ObjectDisposedException.ThrowIf(disposed != 0, this);
        if (!byName.TryGetValue(info.Name, out var own) || own.DataOffset != info.DataOffset || own.ByteLength != info.ByteLength)
            throw new ArgumentException($"tensor '{info.Name}' does not belong to {Path}.", nameof(info));
    }

    void CheckStillMapped(TensorInfo info)
    {
        long length = RandomAccess.GetLength(handle);
        if (length < info.DataOffset + info.ByteLength)
            throw new InvalidModelException($"{Path}: file is now {length} bytes, too short for tensor '{info.Name}' (was it truncated after opening?).");
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        view.SafeMemoryMappedViewHandle.ReleasePointer();
        view.Dispose();
        map.Dispose();
        handle.Dispose();
    }

    static (List<TensorInfo>, Dictionary<string, string>) ReadHeader(SafeFileHandle handle, string path)
    {
        long fileLength = RandomAccess.GetLength(handle);
        if (fileLength < 8) throw new InvalidModelException($"{path}: {fileLength} bytes is too short for a safetensors file (8-byte header length missing).");
        Span<byte> prefix = stackalloc byte[8];
        ReadAll(handle, prefix, 0, path);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (prefix.SequenceEqual("version "u8)) GitLfsPointer.Refuse(path);
        if (headerLength > MaxHeaderBytes)
            throw new InvalidModelException($"{path}: header length {headerLength} exceeds the {MaxHeaderBytes}-byte limit (not a safetensors file?).");
        if ((long)headerLength > fileLength - 8)
            throw new InvalidModelException($"{path}: header length {headerLength} runs past the end of the {fileLength}-byte file (truncated?).");
        var headerBytes = new byte[headerLength];
        ReadAll(handle, headerBytes, 8, path);
        long dataStart = 8 + (long)headerLength;
        long dataLength = fileLength - dataStart;

        Tokenization.CheckpointJson.RequireUtf8(headerBytes, $"{path} (header)");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(headerBytes);
        }
        catch (JsonException e)
        {
            throw new InvalidModelException($"{path}: header is not valid JSON ({e.Message}).", e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new InvalidModelException($"{path}: header must be a JSON object, got {doc.RootElement.ValueKind}.");
            Tokenization.CheckpointJson.RequireText(doc.RootElement, headerBytes, $"{path} (header)");
            var tensors = new List<TensorInfo>();
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var property in doc.RootElement.EnumerateObject())
            {
                if (!seen.Add(property.Name)) throw new InvalidModelException($"{path}: header names '{property.Name}' twice.");
                if (property.Name == "__metadata__")
                    ReadMetadata(property.Value, metadata, path);
                else
                    tensors.Add(ReadEntry(property.Name, property.Value, dataStart, dataLength, path));
            }
            CheckNoOverlap(tensors, path);
            return (tensors, metadata);
        }
    }

    static void ReadMetadata(JsonElement value, Dictionary<string, string> metadata, string path)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw new InvalidModelException($"{path}: __metadata__ must be an object of strings, got {value.ValueKind}.");
        foreach (var p in value.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.String)
                throw new InvalidModelException($"{path}: __metadata__ '{p.Name}' must be a string, got {p.Value.ValueKind}.");
            metadata[p.Name] = p.Value.GetString()!;
        }
    }

    static TensorInfo ReadEntry(string name, JsonElement entry, long dataStart, long dataLength, string path)
    {
        string where = $"{path}: tensor '{name}'";
        if (entry.ValueKind != JsonValueKind.Object)
            throw new InvalidModelException($"{where}: entry must be an object, got {entry.ValueKind}.");
        if (!entry.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
            throw new InvalidModelException($"{where}: missing string 'dtype'.");
        string dtypeName = dtypeElement.GetString()!;
        if (!TensorDtypes.TryParseSafetensorsName(dtypeName, out var dtype))
            throw new InvalidModelException($"{where}: unknown dtype '{dtypeName}'.");

        if (!entry.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
            throw new InvalidModelException($"{where}: missing array 'shape'.");
        var shape = new List<long>();
        long elements = 1;
        foreach (var d in shapeElement.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
                throw new InvalidModelException($"{where}: shape entries must be non-negative integers, got {d.GetRawText()}.");
            shape.Add(dim);
            try { elements = checked(elements * dim); }
            catch (OverflowException) { throw new InvalidModelException($"{where}: shape {TensorInfo.FormatShape(shape)} overflows 64 bits."); }
        }

        if (!entry.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2
            || offsets[0].ValueKind != JsonValueKind.Number || offsets[1].ValueKind != JsonValueKind.Number
            || !offsets[0].TryGetInt64(out long begin) || !offsets[1].TryGetInt64(out long end))
            throw new InvalidModelException($"{where}: 'data_offsets' must be [begin, end] integers.");
        if (begin < 0 || end < begin)
            throw new InvalidModelException($"{where}: data_offsets [{begin}, {end}] are not an ordered non-negative range.");
        if (end > dataLength)
            throw new InvalidModelException($"{where}: data_offsets end {end} is past the {dataLength} data bytes in the file (truncated?).");
        long expectedBytes;
        try { expectedBytes = checked(elements * dtype.ElementSize()); }
        catch (OverflowException) { throw new InvalidModelException($"{where}: byte size of shape {TensorInfo.FormatShape(shape)} overflows 64 bits."); }
        if (end - begin != expectedBytes)
            throw new InvalidModelException(
                $"{where}: data_offsets span {end - begin} bytes but {dtypeName} {TensorInfo.FormatShape(shape)} needs {expectedBytes}.");
        return new TensorInfo(name, dtype, shape, dataStart + begin, end - begin);
    }

    static void CheckNoOverlap(List<TensorInfo> tensors, string path)
    {
        var sorted = tensors.Where(t => t.ByteLength > 0).OrderBy(t => t.DataOffset).ToList();
        for (int i = 1; i < sorted.Count; i++)
        {
            if (sorted[i].DataOffset < sorted[i - 1].DataOffset + sorted[i - 1].ByteLength)
                throw new InvalidModelException($"{path}: tensors '{sorted[i - 1].Name}' and '{sorted[i].Name}' overlap in the data section.");
        }
    }

    static void ReadAll(SafeFileHandle handle, Span<byte> destination, long offset, string path)
    {
        while (destination.Length > 0)
        {
            int n = RandomAccess.Read(handle, destination, offset);
            if (n == 0) throw new InvalidModelException($"{path}: unexpected end of file at byte {offset}.");
            destination = destination[n..];
            offset += n;
        }
    }
}
