// Where CudaWeights gets its values. Three sources:
//   HostWeightSource        fp32 LlamaWeights already in memory (tests, the CPU-built toy models).
//   CheckpointWeightSource  safetensors straight to the GPU: the memory-mapped bytes are copied (bf16) or converted
//                           (fp16/fp32 -> bf16 on the host, by all cores) into pinned staging slots, each slot's
//                           upload queued asynchronously, so reading slot i+1 overlaps the DMA of slot i. No fp32 copy
//                           of the model is ever made. FP8 weights go up as their codes (one byte each) with their
//                           scales, and a kernel (weight_fp8.cu) writes the bf16 values on the GPU.
//   RandomWeightSource      seeded uniform values made on the GPU (benchmarks at 8B shape without a 16 GB file), or
//                           random e4m3 codes with row scales (benchmarks of fp8-held weights).
// An FP8 checkpoint's e4m3 matrices whose scale spans each row can also stay fp8 on the GPU (E4m3RowScales /
// E4m3Codes): CudaWeights decides which.
using System.Runtime.InteropServices;
using SwiftKV.Cuda;
using SwiftKV.Cuda.Kernels;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;

namespace SwiftKV.Engine.Cuda;

/// <summary>Fills device buffers with named tensors; <see cref="Finish"/> waits until every fill has landed.</summary>
internal abstract class WeightSource : IDisposable
{
    /// <summary>Fills <paramref name="destination"/> (exactly spec's element count) with the bf16 matrix.</summary>
    public abstract void Matrix(DeviceSpan<Bf16> destination, TensorSpec spec);
    /// <summary>Fills <paramref name="destination"/> with the fp32 vector.</summary>
    public abstract void Vector(DeviceSpan<float> destination, TensorSpec spec);
    /// <summary>
    /// The matrix's scales, one per row, when this source holds it as fp8 e4m3 codes whose scale spans each whole row
    /// (an FP8 checkpoint's per-channel or per-matrix scales), so the GPU can keep the codes; else null.
    /// </summary>
    public virtual float[]? E4m3RowScales(TensorSpec spec) => null;
    /// <summary>Fills <paramref name="destination"/> with a kept matrix's row scales (as <see cref="E4m3RowScales"/> gave them).</summary>
    public virtual void E4m3Scales(DeviceSpan<float> destination, float[] rowScales) =>
        throw new NotSupportedException("this weight source holds no e4m3 codes.");
    /// <summary>Fills <paramref name="destination"/> with the e4m3 codes of a matrix <see cref="E4m3RowScales"/> answered for.</summary>
    public virtual void E4m3Codes(DeviceSpan<byte> destination, TensorSpec spec) =>
        throw new NotSupportedException($"this weight source holds no e4m3 codes ('{spec.Name}').");
    public virtual void Finish() { }
    public virtual void Dispose() { }
}

internal sealed class HostWeightSource(LlamaWeights weights, CudaStream stream) : WeightSource
{
    readonly Dictionary<string, float[]> _tensors = LlamaWeightMap.Tensors(weights).ToDictionary(t => t.Spec.Name, t => t.Values, StringComparer.Ordinal);

    float[] Get(TensorSpec spec) => _tensors.TryGetValue(spec.Name, out var v) ? v : throw new InvalidModelException($"weights lack '{spec.Name}'.");

    public override void Matrix(DeviceSpan<Bf16> destination, TensorSpec spec)
    {
        var v = Get(spec);
        var host = GC.AllocateUninitializedArray<Bf16>(v.Length);
        for (int i = 0; i < v.Length; i++) host[i] = Bf16.FromSingle(v[i]);
        Upload(destination, host);
    }

    public override void Vector(DeviceSpan<float> destination, TensorSpec spec) => Upload(destination, Get(spec));

    void Upload<T>(DeviceSpan<T> destination, T[] host) where T : unmanaged
    {
        if (host.LongLength != destination.Length) throw new InvalidModelException($"tensor holds {host.LongLength} values; the device buffer expects {destination.Length}.");
        stream.Upload<T>(host, destination);
    }
}

/// <summary>Streams a checked safetensors checkpoint to the GPU through <see cref="Slots"/> pinned buffers.</summary>
internal sealed unsafe class CheckpointWeightSource : WeightSource
{
    const int Slots = 4;
    public const int DefaultSlotBytes = 64 << 20;
    public const int DefaultPieceBytes = 2 << 20;
    // Tests pass small slots and pieces so that a toy matrix spans several and their runs start inside rows and blocks.
    readonly int SlotBytes, PieceBytes;
    readonly SafetensorsCheckpoint _checkpoint;
    readonly WeightQuantization? _quantization;
    readonly KernelLibrary _kernels;
    readonly CudaStream _stream;
    readonly PinnedHostBuffer[] _staging = new PinnedHostBuffer[Slots];
    readonly CudaEvent[] _done = new CudaEvent[Slots];
    readonly bool[] _used = new bool[Slots];
    int _next;

    // FP8 checkpoints only: the kernel, the two formats' value tables, one slot of codes and the current matrix's scales.
    Fp8WeightKernel? _fp8;
    DeviceBuffer<float>? _fp8Tables;
    DeviceBuffer<byte>? _fp8Codes;
    DeviceBuffer<float>? _fp8Scales;

    public CheckpointWeightSource(SafetensorsCheckpoint checkpoint, WeightQuantization? quantization, KernelLibrary kernels, CudaStream stream,
        int slotBytes = DefaultSlotBytes, int pieceBytes = DefaultPieceBytes)
    {
        if (slotBytes < 1024 || pieceBytes < 2 || pieceBytes % 2 != 0 || slotBytes % 4 != 0)
            throw new ArgumentOutOfRangeException(nameof(slotBytes), "staging slots of >= 1 KiB (a multiple of 4) and even pieces.");
        SlotBytes = slotBytes;
        PieceBytes = pieceBytes;
        _checkpoint = checkpoint;
        _quantization = quantization;
        _kernels = kernels;
        _stream = stream;
        try
        {
            for (int i = 0; i < Slots; i++)
            {
                _staging[i] = new PinnedHostBuffer(SlotBytes);
                _done[i] = new CudaEvent();
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Bytes read from the checkpoint so far.</summary>
    public long BytesRead { get; private set; }

    (TensorInfo Info, SafetensorsFile File) Find(TensorSpec spec) =>
        _checkpoint.TryGet(spec.Name, out var info, out var file) ? (info, file)
            : throw new InvalidModelException($"{_checkpoint.Directory}: checkpoint has no tensor '{spec.Name}'.");

    public override void Matrix(DeviceSpan<Bf16> destination, TensorSpec spec)
    {
        var (info, file) = Find(spec);
        if (info.ElementCount != destination.Length) throw new InvalidModelException($"'{spec.Name}' has {info.ElementCount} elements, expected {destination.Length}.");
        if (info.Dtype.IsFloat8())
        {
            MatrixFp8(destination, ScaledFp8Tensor.Open(_quantization, _checkpoint, info, file), file);
            return;
        }
        int size = info.Dtype.ElementSize();
        long perSlot = SlotBytes / 2;   // elements of bf16 output per slot
        for (long first = 0; first < info.ElementCount; first += perSlot)
        {
            long n = Math.Min(perSlot, info.ElementCount - first);
            var slot = Acquire();
            byte* dst = _staging[slot].Pointer;
            var dtype = info.Dtype;
            // Every core copies (or converts) its own 2 MiB pieces: page faults on the mapping are served in parallel.
            long pieces = (n * 2 + PieceBytes - 1) / PieceBytes, pieceElems = PieceBytes / 2;
            nint dstAddr = (nint)dst;
            Parallel.For(0, pieces, p =>
            {
                long e0 = p * pieceElems, cnt = Math.Min(pieceElems, n - e0);
                var src = file.GetBytes(info, (first + e0) * size, checked((int)(cnt * size)));
                var outBytes = new Span<byte>((byte*)dstAddr + e0 * 2, (int)(cnt * 2));
                if (dtype == TensorDtype.BF16) src.CopyTo(outBytes);
                else ToBf16(src, dtype, MemoryMarshal.Cast<byte, ushort>(outBytes));
            });
            Send(slot, destination.Address + (ulong)(first * 2), n * 2);
            BytesRead += n * size;
        }
    }

    public override float[]? E4m3RowScales(TensorSpec spec)
    {
        var (info, file) = Find(spec);
        return info.Dtype == TensorDtype.F8E4M3 ? ScaledFp8Tensor.Open(_quantization, _checkpoint, info, file).RowScales() : null;
    }

    /// <summary>Through a staging slot, as the other uploads: a synchronous copy would drain the pipeline at every kept matrix.</summary>
    public override void E4m3Scales(DeviceSpan<float> destination, float[] rowScales)
    {
        if ((long)rowScales.Length * sizeof(float) > SlotBytes) throw new InvalidModelException($"{rowScales.Length} row scales are more than the loader stages at once.");
        if (rowScales.Length != destination.Length) throw new InvalidModelException($"{rowScales.Length} row scales for a matrix of {destination.Length} rows.");
        int slot = Acquire();
        rowScales.CopyTo(_staging[slot].AsSpan<float>(rowScales.Length));
        Send(slot, destination.Address, (long)rowScales.Length * sizeof(float));
    }

    /// <summary>The codes as stored, a slot at a time, straight into the device buffer (no kernel: the GPU keeps them).</summary>
    public override void E4m3Codes(DeviceSpan<byte> destination, TensorSpec spec)
    {
        var (info, file) = Find(spec);
        if (info.Dtype != TensorDtype.F8E4M3) throw new InvalidModelException($"'{spec.Name}' is {info.Dtype}, not F8_E4M3.");
        if (info.ElementCount != destination.Length) throw new InvalidModelException($"'{spec.Name}' has {info.ElementCount} elements, expected {destination.Length}.");
        for (long first = 0; first < info.ElementCount; first += SlotBytes)
        {
            long n = Math.Min(SlotBytes, info.ElementCount - first);
            int slot = Acquire();
            nint dstAddr = (nint)_staging[slot].Pointer;
            long pieces = (n + PieceBytes - 1) / PieceBytes;
            Parallel.For(0, pieces, p =>
            {
                long b0 = p * PieceBytes, cnt = Math.Min(PieceBytes, n - b0);
                file.GetBytes(info, first + b0, (int)cnt).CopyTo(new Span<byte>((byte*)dstAddr + b0, (int)cnt));
            });
            Send(slot, destination.Address + (ulong)first, n);
            BytesRead += n;
        }
    }

    public override void Vector(DeviceSpan<float> destination, TensorSpec spec)
    {
        var (info, file) = Find(spec);
        if (info.ElementCount != destination.Length) throw new InvalidModelException($"'{spec.Name}' has {info.ElementCount} elements, expected {destination.Length}.");
        if (destination.ByteLength > SlotBytes) throw new InvalidModelException($"'{spec.Name}' is too large for a vector ({destination.Length} elements).");
        var slot = Acquire();
        file.ReadFloat32(info, _staging[slot].AsSpan<float>((int)destination.Length));
        Send(slot, destination.Address, destination.ByteLength);
        BytesRead += info.ByteLength;
    }

    /// <summary>
    /// An fp8 matrix: its scales, then its codes a slot at a time, each slot dequantized into place by the kernel. The
    /// device buffers are reused in stream order (the next copy into them is queued behind the kernel that reads them).
    /// </summary>
    void MatrixFp8(DeviceSpan<Bf16> destination, ScaledFp8Tensor fp8, SafetensorsFile file)
    {
        var info = fp8.Weight;
        if (info.ElementCount != destination.Length) throw new InvalidModelException($"'{info.Name}' has {info.ElementCount} elements, expected {destination.Length}.");
        if (_fp8 is null)
        {
            _fp8 = new Fp8WeightKernel(_kernels);
            // Uploaded on the loader's stream: a synchronous copy is not ordered with it (CudaStream's remarks).
            _fp8Tables = new DeviceBuffer<float>(512);
            _stream.Upload<float>([.. Float8.Values(TensorDtype.F8E4M3), .. Float8.Values(TensorDtype.F8E5M2)], _fp8Tables.Span);
            _fp8Codes = new DeviceBuffer<byte>(SlotBytes);
        }
        var table = _fp8Tables!.Span.Slice(info.Dtype == TensorDtype.F8E4M3 ? 0 : 256, 256);
        var scales = fp8.Scales;
        if (scales.Length * sizeof(float) > SlotBytes) throw new InvalidModelException($"'{info.Name}' has {scales.Length} scales, more than the loader stages at once.");
        if (_fp8Scales is null || _fp8Scales.Length < scales.Length)
        {
            _stream.Synchronize();   // the old buffer may still be read by a queued kernel
            _fp8Scales?.Dispose();
            _fp8Scales = new DeviceBuffer<float>(Math.Max(scales.Length, 1 << 16));
        }
        int slot = Acquire();
        scales.CopyTo(_staging[slot].AsSpan<float>(scales.Length));
        Send(slot, _fp8Scales.Address, (long)scales.Length * sizeof(float));
        BytesRead += fp8.ScaleByteLength;

        for (long first = 0; first < info.ElementCount; first += SlotBytes)
        {
            long n = Math.Min(SlotBytes, info.ElementCount - first);
            slot = Acquire();
            nint dstAddr = (nint)_staging[slot].Pointer;
            long pieces = (n + PieceBytes - 1) / PieceBytes;
            Parallel.For(0, pieces, p =>
            {
                long b0 = p * PieceBytes, cnt = Math.Min(PieceBytes, n - b0);
                file.GetBytes(info, first + b0, (int)cnt).CopyTo(new Span<byte>((byte*)dstAddr + b0, (int)cnt));
            });
            Send(slot, _fp8Codes!.Address, n);
            _fp8.Dequantize(_stream, _fp8Codes.Span, first, table, _fp8Scales.Span, fp8.Columns, fp8.BlockRows, fp8.BlockColumns, fp8.ScaleColumns,
                destination.Slice(first, n));
            BytesRead += n;
        }
    }

    static void ToBf16(ReadOnlySpan<byte> src, TensorDtype dtype, Span<ushort> dst)
    {
        Span<float> tmp = stackalloc float[1024];
        int size = dtype.ElementSize();
        for (int at = 0; at < dst.Length; at += tmp.Length)
        {
            int n = Math.Min(tmp.Length, dst.Length - at);
            Fp32Conversion.ToFloat32(src.Slice(at * size, n * size), dtype, tmp[..n]);
            for (int i = 0; i < n; i++) dst[at + i] = Bf16.FromSingle(tmp[i]).Bits;
        }
    }

    /// <summary>The next staging slot, once the upload that last used it has finished.</summary>
    int Acquire()
    {
        int s = _next;
        _next = (_next + 1) % Slots;
        if (_used[s]) _done[s].Synchronize();
        return s;
    }

    void Send(int slot, ulong destination, long bytes)
    {
        _stream.CopyBytesAsync(destination, _staging[slot].Pointer, bytes);
        _done[slot].Record(_stream);
        _used[slot] = true;
    }

    public override void Finish() => _stream.Synchronize();

    public override void Dispose()
    {
        try { _stream.Synchronize(); } catch (CudaException) { }
        foreach (var e in _done) e?.Dispose();
        foreach (var b in _staging) b?.Dispose();
        _fp8Tables?.Dispose();
        _fp8Codes?.Dispose();
        _fp8Scales?.Dispose();
    }
}

/// <summary>
/// Seeded random weights made on the GPU: matrices U(-a, a) with a = 1/sqrt(in_features) (activations keep their
/// scale through the layers), norm weights 1, biases 0. Each tensor's values depend on the seed and its name only.
/// </summary>
internal sealed class RandomWeightSource(RandomFillKernel fill, CudaStream stream, ulong seed, bool e4m3 = false) : WeightSource
{
    /// <summary>With e4m3: every layer matrix as random e4m3 codes of magnitude below 2, scaled by a / 2 per row (embedding and lm_head stay bf16, as FP8 checkpoints keep them).</summary>
    public override float[]? E4m3RowScales(TensorSpec spec) =>
        e4m3 && spec.Name is not (LlamaTensorNames.EmbedTokens or LlamaTensorNames.LmHead) ? Enumerable.Repeat((float)(0.5 / Math.Sqrt(spec.Shape[^1])), checked((int)spec.Shape[0])).ToArray() : null;

    public override void E4m3Codes(DeviceSpan<byte> destination, TensorSpec spec) => fill.E4m3(stream, destination, seed ^ NameHash(spec.Name));

    public override void E4m3Scales(DeviceSpan<float> destination, float[] rowScales) => stream.Upload<float>(rowScales, destination);

    public override void Matrix(DeviceSpan<Bf16> destination, TensorSpec spec)
    {
        float a = (float)(1.0 / Math.Sqrt(spec.Shape[^1]));
        fill.Uniform(stream, destination, seed ^ NameHash(spec.Name), a);
    }

    public override void Vector(DeviceSpan<float> destination, TensorSpec spec) =>
        fill.Constant(stream, destination, spec.Name.EndsWith(".bias", StringComparison.Ordinal) ? 0f : 1f);

    public override void Finish() => stream.Synchronize();

    static ulong NameHash(string name)
    {
        ulong h = 14695981039346656037UL;   // FNV-1a
        foreach (char ch in name) h = (h ^ ch) * 1099511628211UL;
        return h;
    }
}
