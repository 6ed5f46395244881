// One paged KV cache as the attention kernels see it: the serving engine's layout per distinct cache (one per full
// layer, one per AcrossKV group), the same as CpuPagedKvCache but bf16 on the device, or fp8 e4m3 with one fp32 scale
// per (slot, KV head) (the serving engine's opt-in KvCacheDtype.Fp8E4M3: half the bytes per token).
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// Keys and values of one cache, each (num_blocks, block_size, num_kv_heads, head_dim) bf16, keys stored after RoPE.
/// Position p of a sequence lives in block table[p / block_size], slot p % block_size; slot index
/// block · block_size + offset addresses row slot · num_kv_heads · head_dim.
/// </summary>
public readonly record struct AttentionPagedCache(DeviceSpan<Bf16> Keys, DeviceSpan<Bf16> Values, int NumBlocks, int BlockSize, int KvHeads, int HeadDim)
{
    /// <summary>
    /// fp8 storage instead of <see cref="Keys"/> / <see cref="Values"/> (which are then not read): see
    /// <see cref="AttentionPagedFp8"/>. Null: the bf16 pool.
    /// </summary>
    public AttentionPagedFp8? Fp8 { get; init; }

    /// <summary>An fp8 e4m3 cache of the same layout.</summary>
    public static AttentionPagedCache OfFp8(AttentionPagedFp8 fp8, int numBlocks, int blockSize, int kvHeads, int headDim) =>
        new(default, default, numBlocks, blockSize, kvHeads, headDim) { Fp8 = fp8 };

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
        if (Fp8 is { } f)
        {
            string scales = $"({NumBlocks} x {BlockSize}, {KvHeads})";
            KernelGuard.Fits(f.Keys, n, kernel, "fp8 keys", shape);
            KernelGuard.Fits(f.Values, n, kernel, "fp8 values", shape);
            KernelGuard.Fits(f.KeyScales, n / HeadDim, kernel, "key scales", scales);
            KernelGuard.Fits(f.ValueScales, n / HeadDim, kernel, "value scales", scales);
            return;
        }
        KernelGuard.Fits(Keys, n, kernel, nameof(Keys), shape);
        KernelGuard.Fits(Values, n, kernel, nameof(Values), shape);
    }
}

/// <summary>
/// An fp8 paged cache: keys and values as e4m3 bytes in the bf16 pool's layout (num_blocks, block_size, kv_heads,
/// head_dim), and per (slot, KV head) one fp32 scale each, (num_blocks · block_size, kv_heads): the stored value is
/// byte · scale, scale = max |x| / 448 over that head's head_dim values (448 = e4m3's largest finite value).
/// </summary>
public readonly record struct AttentionPagedFp8(DeviceSpan<byte> Keys, DeviceSpan<byte> Values, DeviceSpan<float> KeyScales, DeviceSpan<float> ValueScales);
