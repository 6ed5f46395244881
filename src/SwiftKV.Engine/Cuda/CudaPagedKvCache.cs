// The CUDA paged KV pool of the serving engine: for each distinct cache (one per full layer, one per AcrossKV group
// of SwiftKV layers) one key and one value buffer of shape (num_blocks, block_size, num_kv_heads, head_dim), bf16,
// keys stored after RoPE: CpuPagedKvCache's layout on the device. A block id means the same slot range in every
// cache, so one block table per sequence serves all of them. Dispose frees the device memory at once.
using SwiftKV.Cuda;
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Serving;

namespace SwiftKV.Engine.Cuda;

/// <summary>A pool of bf16 KV blocks in device memory, owned by one <see cref="CudaBackend"/>.</summary>
public sealed class CudaPagedKvCache : IPagedKvCache
{
    DeviceBuffer<Bf16>[]? _keys;
    DeviceBuffer<Bf16>[]? _values;
    readonly int _kvHeads, _headDim;

    internal CudaPagedKvCache(CudaBackend owner, int numCaches, int numBlocks, int blockSize, int kvHeads, int headDim)
    {
        Owner = owner;
        NumBlocks = numBlocks;
        BlockSize = blockSize;
        NumCaches = numCaches;
        _kvHeads = kvHeads;
        _headDim = headDim;
        long perCache = (long)numBlocks * blockSize * kvHeads * headDim;
        var keys = new DeviceBuffer<Bf16>[numCaches];
        var values = new DeviceBuffer<Bf16>[numCaches];
        try
        {
            for (int i = 0; i < numCaches; i++)
            {
                keys[i] = new DeviceBuffer<Bf16>(perCache);
                values[i] = new DeviceBuffer<Bf16>(perCache);
            }
        }
        catch
        {
            foreach (var b in keys.Concat(values)) b?.Dispose();
            throw;
        }
        _keys = keys;
        _values = values;
        BytesPerBlock = 2L * numCaches * blockSize * kvHeads * headDim * 2;
    }

    internal CudaBackend Owner { get; }
    public int NumBlocks { get; }
    public int BlockSize { get; }
    public int NumCaches { get; }
    public long BytesPerBlock { get; }
    /// <summary>Device bytes the pool holds (every cache's keys and values).</summary>
    public long Bytes => BytesPerBlock * NumBlocks;
    public bool IsDisposed => _keys is null;

    CudaPagedKvCache Live => _keys is null ? throw new ObjectDisposedException(nameof(CudaPagedKvCache)) : this;

    /// <summary>Cache <paramref name="cacheIndex"/> as the paged attention and KV-write kernels take it.</summary>
    internal AttentionPagedCache Cache(int cacheIndex) =>
        new(Live._keys![cacheIndex].Span, _values![cacheIndex].Span, NumBlocks, BlockSize, _kvHeads, _headDim);

    internal void ThrowIfDisposed() => _ = Live;

    public void Dispose()
    {
        if (_keys is null) return;
        foreach (var b in _keys.Concat(_values!)) b.Dispose();
        _keys = null;
        _values = null;
    }
}
