namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// Grid shape of the row kernels (RoPE, K/V cache writes): one grid row per activation row, and along y enough
/// 128-thread blocks to give every (head, pair) unit of the row its own thread. A one-row decode step so runs
/// on ~20 blocks in one round of loads instead of one block looping over the row.
/// </summary>
internal static class RowGrid
{
    public const int Threads = 128;

    /// <summary>
    /// Whether a launch of <paramref name="rows"/> rows goes programmatically: the RoPE-only pass, the K/V writes, the
    /// serving step's row kernels and its paged attention. Decode-sized steps, where it measured faster (SwiftKV's
    /// later layers at batch 1, and the serving step at batches 1-8: docs/BENCHMARKS.md). Longer steps follow a cuBLAS
    /// GEMM, after which a programmatic launch was never measured alone; they keep the plain launch.
    /// </summary>
    public static bool ProgrammaticFor(int rows) => rows <= 8;

    /// <summary>(rows, blocks per row, 1) for <paramref name="units"/> (head, pair) units per row.</summary>
    public static (uint X, uint Y, uint Z) For(int rows, int units) =>
        ((uint)rows, (uint)Math.Clamp((units + Threads - 1) / Threads, 1, 1024), 1);
}
