// Launcher for native-kernels/attention_kv_write.cu: a batched step's K/V rows into their paged slots.
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// Writes rows of K and V projections (fp32, row stride ld; biases added and K rotated with RoPE at positions[r]
/// when given) as bf16 (or, for an fp8 cache, e4m3 with a scale per slot and KV head) into slot slotMapping[r] = block · block_size + offset of a paged cache; a negative slot
/// skips the row. Slot mapping and positions are device arrays, so a captured graph replays with new contents.
/// </summary>
public sealed unsafe class AttentionKvWriteKernel(KernelLibrary library)
{
    CudaKernel? _kernel, _fp8, _withQueries;

    public void Launch(CudaStream stream, DeviceSpan<float> k, DeviceSpan<float> v, int ld, DeviceSpan<float>? kBias, DeviceSpan<float>? vBias,
        DeviceSpan<float>? invFreq, DeviceSpan<int> positions, DeviceSpan<int> slotMapping, int rows, AttentionPagedCache cache)
    {
        const string n = "paged_kv_write";
        CheckRows(n, cache, rows, kBias, vBias, invFreq, positions, slotMapping);
        int kvDim = cache.KvDim;
        if (ld < kvDim) throw new ArgumentOutOfRangeException(nameof(ld), ld, $"{n}: row stride must be >= kv_heads * head_dim ({kvDim}).");
        long need = (long)(rows - 1) * ld + kvDim;
        KernelGuard.Fits(k, need, n, nameof(k), $"({rows}, {ld})");
        KernelGuard.Fits(v, need, n, nameof(v), $"({rows}, {ld})");

        ulong pk = k.Address, pv = v.Address, pkb = KernelGuard.Address(kBias), pvb = KernelGuard.Address(vBias), pf = KernelGuard.Address(invFreq),
            pp = invFreq is null ? 0 : positions.Address, ps = slotMapping.Address, pkc = cache.Keys.Address, pvc = cache.Values.Address;
        int kvHeads = cache.KvHeads, headDim = cache.HeadDim;
        if (cache.Fp8 is { } f)
        {
            // One warp per KV head holds its head_dim values in registers (4 pairs per lane).
            if (headDim > 256) throw new ArgumentOutOfRangeException(nameof(cache), headDim, $"{n}: the fp8 cache needs head_dim <= 256.");
            _fp8 ??= library.Get("attention_kv_write.cu", "paged_kv_write_fp8");
            ulong p8k = f.Keys.Address, p8v = f.Values.Address, psk = f.KeyScales.Address, psv = f.ValueScales.Address;
            void** a8 = stackalloc void*[] { &pk, &pv, &ld, &pkb, &pvb, &pf, &pp, &ps, &rows, &kvHeads, &headDim, &p8k, &p8v, &psk, &psv };
            _fp8.Launch(stream, ((uint)rows, 1, 1), 128, 0, a8, RowGrid.ProgrammaticFor(rows) && library.ProgrammaticLaunch);
            return;
        }
        _kernel ??= library.Get("attention_kv_write.cu", "paged_kv_write_bf16");
        void** args = stackalloc void*[] { &pk, &pv, &ld, &pkb, &pvb, &pf, &pp, &ps, &rows, &kvHeads, &headDim, &pkc, &pvc };
        _kernel.Launch(stream, RowGrid.For(rows, kvHeads * (headDim / 2)), RowGrid.Threads, 0, args, RowGrid.ProgrammaticFor(rows) && library.ProgrammaticLaunch);
    }

    /// <summary>The checks both launches share: the pool, the row count, the K/V biases, RoPE's inputs (when given), the slots.</summary>
    static void CheckRows(string n, AttentionPagedCache cache, int rows, DeviceSpan<float>? kBias, DeviceSpan<float>? vBias, DeviceSpan<float>? invFreq,
        DeviceSpan<int> positions, DeviceSpan<int> slotMapping)
    {
        cache.Check(n);
        KernelGuard.Positive(rows, n, nameof(rows));
        int kvDim = cache.KvDim;
        KernelGuard.FitsOptional(kBias, kvDim, n, nameof(kBias), $"({kvDim})");
        KernelGuard.FitsOptional(vBias, kvDim, n, nameof(vBias), $"({kvDim})");
        KernelGuard.FitsOptional(invFreq, cache.HeadDim / 2, n, nameof(invFreq), $"({cache.HeadDim / 2})");
        if (invFreq is not null) KernelGuard.Fits(positions, rows, n, nameof(positions), $"({rows})");
        KernelGuard.Fits(slotMapping, rows, n, nameof(slotMapping), $"({rows})");
    }

    /// <summary>
    /// For a fused [q | k | v] projection (fp32 rows of stride <paramref name="ld"/>: q in the first heads · head_dim
    /// columns, then K, then V) and a bf16 pool: the K/V write of <see cref="Launch"/> and bias + RoPE on q in place
    /// (RopeRowsKernel's work) in one launch. Same bits as the two launches.
    /// </summary>
    public void LaunchWithQueries(CudaStream stream, DeviceSpan<float> qkv, int ld, int heads, DeviceSpan<float>? qBias, DeviceSpan<float>? kBias,
        DeviceSpan<float>? vBias, DeviceSpan<float> invFreq, DeviceSpan<int> positions, DeviceSpan<int> slotMapping, int rows, AttentionPagedCache cache)
    {
        const string n = "paged_rope_qkv_write_bf16";
        CheckRows(n, cache, rows, kBias, vBias, invFreq, positions, slotMapping);
        if (cache.Fp8 is not null) throw new ArgumentException($"{n}: the pool is fp8; rotate q with RopeRowsKernel and write K/V with Launch.", nameof(cache));
        KernelGuard.Positive(heads, n, nameof(heads));
        int kvHeads = cache.KvHeads, headDim = cache.HeadDim, qDim = heads * headDim, kvDim = cache.KvDim;
        if (ld < qDim + 2 * kvDim) throw new ArgumentOutOfRangeException(nameof(ld), ld, $"{n}: row stride must be >= (heads + 2 kv_heads) * head_dim ({qDim + 2 * kvDim}).");
        KernelGuard.Fits(qkv, (long)(rows - 1) * ld + qDim + 2 * kvDim, n, nameof(qkv), $"({rows}, {ld})");
        KernelGuard.FitsOptional(qBias, qDim, n, nameof(qBias), $"({qDim})");
        ulong pq = qkv.Address, pqb = KernelGuard.Address(qBias), pkb = KernelGuard.Address(kBias), pvb = KernelGuard.Address(vBias), pf = invFreq.Address,
            pp = positions.Address, ps = slotMapping.Address, pkc = cache.Keys.Address, pvc = cache.Values.Address;
        _withQueries ??= library.Get("attention_kv_write.cu", n);
        void** args = stackalloc void*[] { &pq, &ld, &pqb, &pkb, &pvb, &pf, &pp, &ps, &rows, &heads, &kvHeads, &headDim, &pkc, &pvc };
        _withQueries.Launch(stream, RowGrid.For(rows, (heads + kvHeads) * (headDim / 2)), RowGrid.Threads, 0, args,
            RowGrid.ProgrammaticFor(rows) && library.ProgrammaticLaunch);
    }
}
