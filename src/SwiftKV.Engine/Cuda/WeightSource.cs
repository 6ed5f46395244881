// Where CudaWeights gets its values. Three sources:
//   HostWeightSource        fp32 LlamaWeights already in memory (tests, the CPU-built toy models).
//   CheckpointWeightSource  safetensors straight to the GPU: the memory-mapped bytes are copied (bf16) or converted
//                           (fp16/fp32 -> bf16, fp8 weights dequantized with their scales -> bf16, on the host by
//                           all cores) into pinned staging slots, each slot's
//                           upload queued asynchronously, so reading slot i+1 overlaps the DMA of slot i. No fp32 copy
//                           of the model is ever made.
//   RandomWeightSource      seeded uniform values made on the GPU (benchmarks at 8B shape without a 16 GB file).
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
    const int SlotBytes = 64 << 20;
    const int PieceBytes = 2 << 20;
    readonly SafetensorsCheckpoint _checkpoint;
    readonly WeightQuantization? _quantization;
    readonly CudaStream _stream;
    readonly PinnedHostBuffer[] _staging = new PinnedHostBuffer[Slots];
    readonly CudaEvent[] _done = new CudaEvent[Slots];
    readonly bool[] _used = new bool[Slots];
    int _next;

    public CheckpointWeightSource(SafetensorsCheckpoint checkpoint, WeightQuantization? quantization, CudaStream stream)
    {
        _checkpoint = checkpoint;
        _quantization = quantization;
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
        int size = info.Dtype.ElementSize();
        var fp8 = info.Dtype.IsFloat8() ? ScaledFp8Tensor.Open(_quantization, _checkpoint, info, file) : null;
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
                var outBytes = new Span<byte>((byte*)dstAddr + e0 * 2, (int)(cnt * 2));
                if (fp8 is not null)
                {
                    DequantizeToBf16(fp8, first + e0, MemoryMarshal.Cast<byte, ushort>(outBytes));
                    return;
                }
                var src = file.GetBytes(info, (first + e0) * size, checked((int)(cnt * size)));
                if (dtype == TensorDtype.BF16) src.CopyTo(outBytes);
                else ToBf16(src, dtype, MemoryMarshal.Cast<byte, ushort>(outBytes));
            });
            Send(slot, destination.Address + (ulong)(first * 2), n * 2);
            BytesRead += n * size;
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

    static void DequantizeToBf16(ScaledFp8Tensor fp8, long first, Span<ushort> dst)
    {
        Span<float> tmp = stackalloc float[1024];
        for (int at = 0; at < dst.Length; at += tmp.Length)
        {
            int n = Math.Min(tmp.Length, dst.Length - at);
            fp8.Dequantize(first + at, tmp[..n]);
            for (int i = 0; i < n; i++) dst[at + i] = Bf16.FromSingle(tmp[i]).Bits;
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
    }
}

/// <summary>
/// Seeded random weights made on the GPU: matrices U(-a, a) with a = 1/sqrt(in_features) (activations keep their
/// scale through the layers), norm weights 1, biases 0. Each tensor's values depend on the seed and its name only.
/// </summary>
internal sealed class RandomWeightSource(RandomFillKernel fill, CudaStream stream, ulong seed) : WeightSource
{
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
