// Launchers for native-kernels/serving_rows.cu: per-row RoPE and row gathers of the serving engine's batched step.
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// In-place bias + RoPE on query rows q (rows, ld), heads × head_dim from column 0, row r at position
/// positions[r] (a device array: a batched step mixes sequences at unrelated positions).
/// </summary>
public sealed unsafe class RopeRowsKernel(KernelLibrary library)
{
    readonly CudaKernel _k = library.Get("serving_rows.cu", "rope_rows_f32");

    public void Launch(CudaStream stream, DeviceSpan<float> q, int ld, DeviceSpan<float>? bias, DeviceSpan<float> invFreq,
        DeviceSpan<int> positions, int rows, int heads, int headDim)
    {
        const string n = "rope_rows_f32";
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(heads, n, nameof(heads));
        if (headDim < 2 || headDim % 2 != 0) throw new ArgumentOutOfRangeException(nameof(headDim), headDim, $"{n}: head_dim must be even and >= 2.");
        if (ld < heads * headDim) throw new ArgumentOutOfRangeException(nameof(ld), ld, $"{n}: row stride must be >= heads * head_dim ({heads * headDim}).");
        KernelGuard.Fits(q, (long)(rows - 1) * ld + heads * headDim, n, nameof(q), $"({rows}, {ld})");
        KernelGuard.FitsOptional(bias, heads * headDim, n, nameof(bias), $"({heads * headDim})");
        KernelGuard.Fits(invFreq, headDim / 2, n, nameof(invFreq), $"({headDim / 2})");
        KernelGuard.Fits(positions, rows, n, nameof(positions), $"({rows})");
        ulong pq = q.Address, pb = KernelGuard.Address(bias), pf = invFreq.Address, pp = positions.Address;
        void** args = stackalloc void*[] { &pq, &ld, &pb, &pf, &pp, &rows, &heads, &headDim };
        _k.Launch(stream, RowGrid.For(rows, heads * (headDim / 2)), RowGrid.Threads, 0, args, RowGrid.ProgrammaticFor(rows) && library.ProgrammaticLaunch);
    }
}

/// <summary>dst (rows, cols) fp32 row r = src row index[r]; the indices must already be checked (the kernel trusts them).</summary>
public sealed unsafe class GatherRowsKernel(KernelLibrary library)
{
    readonly CudaKernel _k = library.Get("serving_rows.cu", "gather_rows_f32");

    public void Launch(CudaStream stream, DeviceSpan<float> src, long srcRows, DeviceSpan<int> index, int rows, int cols, DeviceSpan<float> dst)
    {
        const string n = "gather_rows_f32";
        KernelGuard.Positive(rows, n, nameof(rows));
        KernelGuard.Positive(cols, n, nameof(cols));
        KernelGuard.Fits(src, srcRows * cols, n, nameof(src), $"({srcRows}, {cols})");
        KernelGuard.Fits(index, rows, n, nameof(index), $"({rows})");
        KernelGuard.Fits(dst, (long)rows * cols, n, nameof(dst), $"({rows}, {cols})");
        ulong ps = src.Address, pi = index.Address, pd = dst.Address;
        void** args = stackalloc void*[] { &ps, &pi, &cols, &pd };
        _k.Launch(stream, ((uint)rows, 1, 1), 256, 0, args, RowGrid.ProgrammaticFor(rows) && library.ProgrammaticLaunch);
    }
}
