// One paged KV cache as the attention kernels see it: the serving engine's layout per distinct cache (one per full
// layer, one per AcrossKV group), the same as CpuPagedKvCache but bf16 on the device.
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// Keys and values of one cache, each (num_blocks, block_size, num_kv_heads, head_dim) bf16, keys stored after RoPE.
/// Position p of a sequence lives in block table[p / block_size], slot p % block_size; slot index
/// block · block_size + offset addresses row slot · num_kv_heads · head_dim.
/// </summary>
public readonly record struct AttentionPagedCache(DeviceSpan<Bf16> Keys, DeviceSpan<Bf16> Values, int NumBlocks, int BlockSize, int KvHeads, int HeadDim)
{
    /// <summary>num_kv_heads · head_dim.</summary>
    public int KvDim => KvHeads * HeadDim;

    internal void Check(string kernel)
    {
        KernelGuard.Positive(NumBlocks, kernel, nameof(NumBlocks));
        KernelGuard.Positive(BlockSize, kernel, nameof(BlockSize));
        KernelGuard.Positive(KvHeads, kernel, nameof(KvHeads));
        if (HeadDim < 2 || HeadDim % 2 != 0) throw new ArgumentOutOfRangeException(nameof(HeadDim), HeadDim, $"{kernel}: head_dim must be even and >= 2.");
        long n = (long)NumBlocks * BlockSize * KvDim;
        string shape = $"({NumBlocks}, {BlockSize}, {KvHeads}, {HeadDim})";
        KernelGuard.Fits(Keys, n, kernel, nameof(Keys), shape);
        KernelGuard.Fits(Values, n, kernel, nameof(Values), shape);
    }
}
