// The KV cache of one sequence on the CUDA backend: for each distinct cache (one per full layer, one per
// AcrossKV group of SwiftKV layers) a key and a value buffer of shape (capacity, num_kv_heads, head_dim), bf16,
// keys stored after RoPE. Dispose frees the device memory at once.
using SwiftKV.Cuda;

namespace SwiftKV.Engine.Cuda;

/// <summary>A bf16 KV cache in device memory, owned by one <see cref="CudaBackend"/>.</summary>
public sealed class CudaSequenceCache : ISequenceCache
{
    DeviceBuffer<Bf16>[]? _keys;
    DeviceBuffer<Bf16>[]? _values;

    internal CudaSequenceCache(CudaBackend owner, int numCaches, int capacity, int kvDim)
    {
        Owner = owner;
        Capacity = capacity;
        var keys = new DeviceBuffer<Bf16>[numCaches];
        var values = new DeviceBuffer<Bf16>[numCaches];
        try
        {
            for (int i = 0; i < numCaches; i++)
            {
                keys[i] = new DeviceBuffer<Bf16>((long)capacity * kvDim);
                values[i] = new DeviceBuffer<Bf16>((long)capacity * kvDim);
            }
        }
        catch
        {
            foreach (var b in keys.Concat(values)) b?.Dispose();
            throw;
        }
        _keys = keys;
        _values = values;
        KvBytes = 2L * numCaches * capacity * kvDim * 2;
    }

    internal CudaBackend Owner { get; }
    public int Length { get; internal set; }
    public int Capacity { get; }
    public long KvBytes { get; }
    public int NumCaches => Live._keys!.Length;
    public bool IsDisposed => _keys is null;

    CudaSequenceCache Live => _keys is null ? throw new ObjectDisposedException(nameof(CudaSequenceCache)) : this;

    /// <summary>Keys of cache <paramref name="cacheIndex"/>: (capacity, num_kv_heads, head_dim) bf16.</summary>
    internal DeviceBuffer<Bf16> Keys(int cacheIndex) => Live._keys![cacheIndex];
    internal DeviceBuffer<Bf16> Values(int cacheIndex) => Live._values![cacheIndex];
    internal void ThrowIfDisposed() => _ = Live;
    /// <summary>This sequence's captured decode step (it bakes in these buffers' addresses), owned by the cache.</summary>
    internal DecodeGraph? DecodeGraph { get; set; }

    public void Dispose()
    {
        if (_keys is null) return;
        DecodeGraph?.Dispose();
        DecodeGraph = null;
        foreach (var b in _keys.Concat(_values!)) b.Dispose();
        _keys = null;
        _values = null;
    }
}
