// The CPU paged KV pool: for each distinct cache (one per full layer, one per AcrossKV group of SwiftKV layers)
// one key and one value array of shape (num_blocks, block_size, num_kv_heads, head_dim), fp32, keys after RoPE.
// A block id means the same slot range in every cache, so one block table per sequence serves all of them.
using SwiftKV.Engine.Serving;

namespace SwiftKV.Engine.Cpu;

/// <summary>A pool of KV blocks owned by one <see cref="CpuBackend"/>.</summary>
public sealed class CpuPagedKvCache : IPagedKvCache
{
    float[][]? _keys;
    float[][]? _values;

    internal CpuPagedKvCache(CpuBackend owner, int numCaches, int numBlocks, int blockSize, int kvDim)
    {
        Owner = owner;
        NumBlocks = numBlocks;
        BlockSize = blockSize;
        NumCaches = numCaches;
        KvDim = kvDim;
        long perCache = (long)numBlocks * blockSize * kvDim;
        if (perCache > Array.MaxLength)
            throw new ArgumentOutOfRangeException(nameof(numBlocks), numBlocks,
                $"{numBlocks} blocks of {blockSize} positions x {kvDim} floats exceed one CPU array ({Array.MaxLength} elements); use fewer blocks.");
        _keys = new float[numCaches][];
        _values = new float[numCaches][];
        for (int i = 0; i < numCaches; i++)
        {
            _keys[i] = new float[perCache];
            _values[i] = new float[perCache];
        }
        BytesPerBlock = 2L * numCaches * blockSize * kvDim * sizeof(float);
    }

    internal CpuBackend Owner { get; }
    /// <summary>num_key_value_heads * head_dim.</summary>
    internal int KvDim { get; }
    public int NumBlocks { get; }
    public int BlockSize { get; }
    public int NumCaches { get; }
    public long BytesPerBlock { get; }

    CpuPagedKvCache Live => _keys is null ? throw new ObjectDisposedException(nameof(CpuPagedKvCache)) : this;

    /// <summary>Keys of cache <paramref name="cacheIndex"/>: (num_blocks, block_size, num_kv_heads, head_dim).</summary>
    internal float[] Keys(int cacheIndex) => Live._keys![cacheIndex];
    /// <summary>Values of cache <paramref name="cacheIndex"/>: (num_blocks, block_size, num_kv_heads, head_dim).</summary>
    internal float[] Values(int cacheIndex) => Live._values![cacheIndex];

    internal void ThrowIfDisposed() => _ = Live;

    public void Dispose()
    {
        _keys = null;
        _values = null;
    }
}
