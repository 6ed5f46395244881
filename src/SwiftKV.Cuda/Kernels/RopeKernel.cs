// Launcher for native-kernels/rope.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// In-place bias + RoPE on query rows q (rows, ld): heads × head_dim from column 0, row r at position pos0 + r, or
/// at positionBase[0] + r when <c>positionBase</c> is given (read on the device: replayable in a CUDA graph).
/// </summary>
public sealed unsafe class RopeKernel(KernelLibrary library)
{
    readonly CudaKernel _k = library.Get("rope.cu", "rope_f32");
    CudaKernel? _table;

    public void Launch(CudaStream stream, DeviceSpan<float> q, int ld, DeviceSpan<float>? bias, DeviceSpan<float> invFreq,
        int rows, int heads, int headDim, int pos0, DeviceSpan<int>? positionBase = null)
    {
        const string n = "rope_f32";
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(heads, n, nameof(heads));
        if (headDim < 2 || headDim % 2 != 0) throw new ArgumentOutOfRangeException(nameof(headDim), headDim, $"{n}: head_dim must be even and >= 2.");
        if (ld < heads * headDim) throw new ArgumentOutOfRangeException(nameof(ld), ld, $"{n}: row stride must be >= heads * head_dim ({heads * headDim}).");
        ArgumentOutOfRangeException.ThrowIfNegative(pos0);
        KernelGuard.Fits(q, (long)(rows - 1) * ld + heads * headDim, n, nameof(q), $"({rows}, {ld})");
        KernelGuard.FitsOptional(bias, heads * headDim, n, nameof(bias), $"({heads * headDim})");
        KernelGuard.Fits(invFreq, headDim / 2, n, nameof(invFreq), $"({headDim / 2})");
        KernelGuard.FitsOptional(positionBase, 1, n, nameof(positionBase), "(1)");
        ulong pq = q.Address, pb = KernelGuard.Address(bias), pf = invFreq.Address, pp = KernelGuard.Address(positionBase);
        void** args = stackalloc void*[] { &pq, &ld, &pb, &pf, &rows, &heads, &headDim, &pos0, &pp };
        _k.Launch(stream, RowGrid.For(rows, heads * (headDim / 2)), RowGrid.Threads, 0, args, library.ProgrammaticLaunch && RowGrid.ProgrammaticFor(rows));
    }

    /// <summary>
    /// The step's angles for the kernels that rotate as they go (the [q; k; v] GEMM's epilogue, the wgmma attention's
    /// Q staging): table (rows, headDim) fp32, row r (position pos0 + r) = cos of its headDim/2 pairs, then their sin.
    /// </summary>
    public void LaunchTable(CudaStream stream, DeviceSpan<float> invFreq, int rows, int headDim, int pos0, DeviceSpan<float> table)
    {
        const string n = "rope_table_f32";
        KernelGuard.Positive(rows, n, nameof(rows));
        if (headDim < 2 || headDim % 2 != 0 || headDim > 2048) throw new ArgumentOutOfRangeException(nameof(headDim), headDim, $"{n}: head_dim must be even, 2..2048.");
        ArgumentOutOfRangeException.ThrowIfNegative(pos0);
        KernelGuard.Fits(invFreq, headDim / 2, n, nameof(invFreq), $"({headDim / 2})");
        KernelGuard.Fits(table, (long)rows * headDim, n, nameof(table), $"({rows}, {headDim})");
        _table ??= library.Get("rope.cu", n);
        ulong pf = invFreq.Address, pt = table.Address;
        void** args = stackalloc void*[] { &pf, &rows, &headDim, &pos0, &pt };
        _table.Launch(stream, ((uint)rows, 1, 1), (uint)(headDim / 2), 0, args);
    }
}
