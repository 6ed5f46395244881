// The CUDA paged KV pool of the serving engine: for each distinct cache (one per full layer, one per AcrossKV group
// of SwiftKV layers) one key and one value buffer of shape (num_blocks, block_size, num_kv_heads, head_dim), keys
// stored after RoPE: CpuPagedKvCache's layout on the device. Elements are bf16, or (KvCacheDtype.Fp8E4M3) e4m3 bytes
// with one fp32 scale per (slot, KV head) for K and for V, ~half the bytes. A block id means the same slot range in
// every cache, so one block table per sequence serves all of them. Dispose frees the device memory at once.
using SwiftKV.Cuda;
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Serving;

namespace SwiftKV.Engine.Cuda;

/// <summary>A pool of bf16 or fp8 KV blocks in device memory, owned by one <see cref="CudaBackend"/>.</summary>
public sealed class CudaPagedKvCache : IPagedKvCache
{
    // Every device buffer of every cache (bf16 keys and values, or fp8 bytes plus scales). Null after Dispose.
    List<IDisposable>? _buffers;
    readonly AttentionPagedCache[] _caches;

    internal CudaPagedKvCache(CudaBackend owner, int numCaches, int numBlocks, int blockSize, int kvHeads, int headDim,
        KvCacheDtype dtype = KvCacheDtype.Bf16)
    {
        Owner = owner;
        NumBlocks = numBlocks;
        BlockSize = blockSize;
        NumCaches = numCaches;
        Dtype = dtype;
        long perCache, scales;
        try
        {
            perCache = checked((long)numBlocks * blockSize * kvHeads * headDim);
            scales = checked((long)numBlocks * blockSize * kvHeads);
            _ = checked(2 * numCaches * perCache * (dtype == KvCacheDtype.Fp8E4M3 ? 1 : 2));
        }
        catch (OverflowException)
        {
            // A wrapped size would allocate a tiny pool that kernels then write far past.
            throw new ArgumentException($"a KV pool of {numBlocks} blocks x {blockSize} positions x {kvHeads} KV heads x {headDim} is too large to address: lower NumKvBlocks or BlockSize.");
        }
        var buffers = new List<IDisposable>();
        T Own<T>(T b) where T : IDisposable { buffers.Add(b); return b; }
        _caches = new AttentionPagedCache[numCaches];
        try
        {
            for (int i = 0; i < numCaches; i++)
                _caches[i] = dtype == KvCacheDtype.Fp8E4M3
                    ? AttentionPagedCache.OfFp8(new AttentionPagedFp8(Own(new DeviceBuffer<byte>(perCache)).Span, Own(new DeviceBuffer<byte>(perCache)).Span,
                        Own(new DeviceBuffer<float>(scales)).Span, Own(new DeviceBuffer<float>(scales)).Span), numBlocks, blockSize, kvHeads, headDim)
                    : new AttentionPagedCache(Own(new DeviceBuffer<Bf16>(perCache)).Span, Own(new DeviceBuffer<Bf16>(perCache)).Span, numBlocks, blockSize, kvHeads, headDim);
        }
        catch
        {
            foreach (var b in buffers) b.Dispose();
            throw;
        }
        _buffers = buffers;
        long perToken = dtype == KvCacheDtype.Fp8E4M3 ? (long)kvHeads * headDim + 4L * kvHeads : (long)kvHeads * headDim * 2;
        BytesPerBlock = 2L * numCaches * blockSize * perToken;
    }

    internal CudaBackend Owner { get; }
    public int NumBlocks { get; }
    public int BlockSize { get; }
    public int NumCaches { get; }
    /// <summary>Element type of the keys and values.</summary>
    public KvCacheDtype Dtype { get; }
    public long BytesPerBlock { get; }
    /// <summary>Device bytes the pool holds (every cache's keys and values, and for fp8 their scales).</summary>
    public long Bytes => BytesPerBlock * NumBlocks;
    public bool IsDisposed => _buffers is null;

    CudaPagedKvCache Live => _buffers is null ? throw new ObjectDisposedException(nameof(CudaPagedKvCache)) : this;

    /// <summary>Cache <paramref name="cacheIndex"/> as the paged attention and KV-write kernels take it.</summary>
    internal AttentionPagedCache Cache(int cacheIndex) => Live._caches[cacheIndex];

    internal void ThrowIfDisposed() => _ = Live;

    public void Dispose()
    {
        if (_buffers is null) return;
        foreach (var b in _buffers) b.Dispose();
        _buffers = null;
    }
}
