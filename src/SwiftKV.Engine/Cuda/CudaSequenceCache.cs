// The KV cache of one sequence on the CUDA backend: for each distinct cache (one per full layer, one per
// AcrossKV group of SwiftKV layers) keys and values of shape (capacity, num_kv_heads, head_dim), bf16, keys stored
// after RoPE. The caches sit in one key and one value buffer (num_caches, capacity, ...), so SingleInputKV's one GEMM
// over every later cache can address them all through one 3-D tensor map. Dispose frees the device memory at once.
using SwiftKV.Cuda;

namespace SwiftKV.Engine.Cuda;

/// <summary>A bf16 KV cache in device memory, owned by one <see cref="CudaBackend"/>.</summary>
public sealed class CudaSequenceCache : ISequenceCache
{
    DeviceBuffer<Bf16>? _keys;
    DeviceBuffer<Bf16>? _values;
    readonly long _cacheElements;

    internal CudaSequenceCache(CudaBackend owner, int numCaches, int capacity, int kvDim)
    {
        Owner = owner;
        Capacity = capacity;
        NumCaches = numCaches;
        _cacheElements = (long)capacity * kvDim;
        var keys = new DeviceBuffer<Bf16>(numCaches * _cacheElements);
        try
        {
            _values = new DeviceBuffer<Bf16>(numCaches * _cacheElements);
        }
        catch
        {
            keys.Dispose();
            throw;
        }
        _keys = keys;
        KvBytes = 2L * numCaches * _cacheElements * 2;
    }

    internal CudaBackend Owner { get; }
    public int Length { get; internal set; }
    public int Capacity { get; }
    public long KvBytes { get; }
    public int NumCaches { get; }
    public bool IsDisposed => _keys is null;

    CudaSequenceCache Live => _keys is null ? throw new ObjectDisposedException(nameof(CudaSequenceCache)) : this;

    /// <summary>Keys of cache <paramref name="cacheIndex"/>: (capacity, num_kv_heads, head_dim) bf16.</summary>
    internal DeviceSpan<Bf16> Keys(int cacheIndex) => Live._keys!.Span.Slice(Checked(cacheIndex) * _cacheElements, _cacheElements);
    internal DeviceSpan<Bf16> Values(int cacheIndex) => Live._values!.Span.Slice(Checked(cacheIndex) * _cacheElements, _cacheElements);
    /// <summary>Every cache's keys: (num_caches, capacity, num_kv_heads, head_dim) bf16.</summary>
    internal DeviceSpan<Bf16> KeyStack => Live._keys!.Span;
    internal DeviceSpan<Bf16> ValueStack => Live._values!.Span;

    int Checked(int cacheIndex)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(cacheIndex);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(cacheIndex, NumCaches);
        return cacheIndex;
    }
    internal void ThrowIfDisposed() => _ = Live;
    /// <summary>This sequence's captured decode step (it bakes in these buffers' addresses), owned by the cache.</summary>
    internal DecodeGraph? DecodeGraph { get; set; }

    public void Dispose()
    {
        if (_keys is null) return;
        DecodeGraph?.Dispose();
        DecodeGraph = null;
        _keys.Dispose();
        _values!.Dispose();
        _keys = null;
        _values = null;
    }
}
