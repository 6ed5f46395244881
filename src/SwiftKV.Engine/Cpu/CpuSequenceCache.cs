// The KV cache of one sequence on the CPU backend: for each distinct cache (one per layer, or one per AcrossKV
// group for SwiftKV layers) a key and a value array of shape (capacity, num_kv_heads, head_dim), fp32.
// Keys are stored after RoPE. Layers of one AcrossKV group read the same arrays, which is where the memory goes.
namespace SwiftKV.Engine.Cpu;

/// <summary>An fp32 KV cache owned by one <see cref="CpuBackend"/>.</summary>
public sealed class CpuSequenceCache : ISequenceCache
{
    float[][]? _keys;
    float[][]? _values;

    internal CpuSequenceCache(CpuBackend owner, int numCaches, int capacity, int kvDim)
    {
        Owner = owner;
        Capacity = capacity;
        KvDim = kvDim;
        _keys = new float[numCaches][];
        _values = new float[numCaches][];
        for (int i = 0; i < numCaches; i++)
        {
            _keys[i] = new float[(long)capacity * kvDim];
            _values[i] = new float[(long)capacity * kvDim];
        }
        KvBytes = 2L * numCaches * capacity * kvDim * sizeof(float);
    }

    internal CpuBackend Owner { get; }
    /// <summary>num_key_value_heads * head_dim.</summary>
    internal int KvDim { get; }
    public int Length { get; internal set; }
    public int Capacity { get; }
    public long KvBytes { get; }
    public int NumCaches => Live._keys!.Length;
    public bool IsDisposed => _keys is null;

    CpuSequenceCache Live => _keys is null ? throw new ObjectDisposedException(nameof(CpuSequenceCache)) : this;

    /// <summary>Keys of cache <paramref name="cacheIndex"/>: (capacity, num_kv_heads, head_dim).</summary>
    internal float[] Keys(int cacheIndex) => Live._keys![cacheIndex];
    /// <summary>Values of cache <paramref name="cacheIndex"/>: (capacity, num_kv_heads, head_dim).</summary>
    internal float[] Values(int cacheIndex) => Live._values![cacheIndex];

    internal void ThrowIfDisposed() => _ = Live;

    public void Dispose()
    {
        _keys = null;
        _values = null;
    }
}
