// Launcher for native-kernels/gemm_e4m3_rows.cu: steps of a few to MaxRows rows (batched decode; the engine's
// CudaBackend.E4m3RowsGemmFromRows picks where it takes over from the e4m3 GEMV) over matrices held as e4m3 codes with
// row scales, each code read once and multiplied on bf16 tensor cores, instead of a dequantize pass into a bf16 scratch
// and a cuBLAS GEMM over it (the route above the e4m3 GEMV's rows before it).
namespace SwiftKV.Cuda.Kernels;

/// <summary>
/// y (rows, out) fp32 [+]= x (rows, in) bf16 · (codes · scale)ᵀ, and the SwiGLU form out (rows, inter) bf16 =
/// silu(x · Wgᵀ) · (x · Wuᵀ) over an e4m3 [gate; up], for rows ≤ <see cref="MaxRows"/>; mma.sync, so sm_80+.
/// </summary>
public sealed unsafe class E4m3RowsGemmKernel(KernelLibrary library)
{
    /// <summary>Most rows one launch handles (four 16-row MMA fragments).</summary>
    public const int MaxRows = 64;

    const uint Block = 256;
    const int Chunk = 64;
    readonly CudaKernel?[] _kernels = new CudaKernel?[2 * 2 * 5];

    /// <summary>
    /// Chunks in each warp's shared-memory ring, by 16-row fragment count (index 1..4), before the GPU's shared memory
    /// caps them (bench/e4m3_rows_probe.py, one H200: at up to 16 rows 3 beat 2, 4 and 6; at 17-32 rows 3 and 4 were
    /// even). On an H200 (227 KB a block) the wide entries at 17-32 rows get 3, and 49-64 rows get 2.
    /// </summary>
    static readonly int[] PreferredStages = [0, 3, 4, 3, 3];

    /// <summary>
    /// Shared memory of one ring stage (the kernel's e4r_stage_bytes): 16 bytes of codes per thread for each of the
    /// warp's tiles (4, or 8 for the wide entries), and each of the 8 warps' x tile of 16 · fragments rows of 144 bytes
    /// (64 columns, padded against bank conflicts).
    /// </summary>
    public static int StageBytes(int fragments, bool wide = false) => (wide ? 8 : 4) * 16 * (int)Block + 8 * 16 * fragments * 144;

    static int StagesWithin(int fragments, bool wide, int sharedLimit) =>
        Math.Min(PreferredStages[fragments], sharedLimit / StageBytes(fragments, wide));

    /// <summary>
    /// Shared memory a block may use: the GPU's opt-in limit, or less where a test sets it to run as on a smaller GPU
    /// (A100 163 KB, sm_86 / sm_89 99 KB).
    /// </summary>
    internal int SharedLimit
    {
        get => _sharedLimit ?? CudaRuntime.Device.MaxSharedBytesPerBlockOptin;
        init => _sharedLimit = value;
    }
    readonly int? _sharedLimit;

    /// <summary>
    /// Ring depth for a launch of <paramref name="rows"/>: <see cref="PreferredStages"/>, fewer where shared memory is
    /// smaller; below 2 the entry cannot run.
    /// </summary>
    public int Stages(int rows, bool wide = false) => StagesWithin((rows + 15) / 16, wide, SharedLimit);

    /// <summary>
    /// Most rows one launch takes: 16-row fragments while a ring of two stages fits (64 on Hopper, 48 on an A100, 16
    /// with 99 KB). A longer step is launched in blocks of these rows; each block reads the codes again, which still
    /// moves fewer bytes than a dequantize pass and cuBLAS up to 4 blocks.
    /// </summary>
    public int RowsPerLaunch
    {
        get
        {
            for (int f = MaxRows / 16; f >= 1; f--)
                if (StagesWithin(f, false, SharedLimit) >= 2) return 16 * f;
            return 0;
        }
    }

    /// <summary>
    /// Whether a launch of <paramref name="rows"/> over <paramref name="weightRows"/> rows of codes takes the wide
    /// entries (eight 8-column tiles a warp, 64 columns a CTA): every CTA reads all of x, so at 16-32 rows x's reads
    /// rival the codes', and the wide CTA halves them per code, while the halved grid still fills the card
    /// (bench/e4m3_rows_probe.py, one H200: 70B at 32 rows 504 -> 402 us a layer; 8B's o and down, 64 wide CTAs on
    /// 132 SMs, and every projection at 9 rows were slower wide). Not where two stages of them do not fit.
    /// </summary>
    public bool Wide(int rows, int weightRows) =>
        rows is >= 16 and <= 32 && 2 * ((weightRows + 63) / 64) >= CudaRuntime.Device.MultiprocessorCount && Stages(rows, wide: true) >= 2;

    /// <summary>
    /// Whether these operands are taken: in % 64 == 0, 16-byte aligned x and codes, mma.sync's sm_80+, and shared
    /// memory for a ring of two stages of one fragment (70 KB: every sm_80+ GPU has it).
    /// </summary>
    public static bool Takes(int rows, ulong xAddress, E4m3Rows w, int inDim) =>
        rows is >= 1 and <= MaxRows && inDim % Chunk == 0 && xAddress % 16 == 0 && w.Codes.Address % 16 == 0
        && CudaRuntime.Device.ComputeMajor >= 8 && StagesWithin(1, false, CudaRuntime.Device.MaxSharedBytesPerBlockOptin) >= 2;

    /// <summary>The entry for a launch of <paramref name="rows"/> (at most <see cref="RowsPerLaunch"/>), its ring depth, shared memory and output columns per CTA.</summary>
    (CudaKernel Kernel, int Stages, uint SharedBytes, int Columns) Entry(bool silu, int rows, int weightRows)
    {
        bool wide = Wide(rows, weightRows);
        int fragments = (rows + 15) / 16, stages = Stages(rows, wide), shared = stages * StageBytes(fragments, wide);
        ref var k = ref _kernels[(silu ? 10 : 0) + (wide ? 5 : 0) + fragments];
        if (k is null)
        {
            var entry = library.Get("gemm_e4m3_rows.cu", $"{(silu ? "gemm_silu_e4m3_rows" : "gemm_e4m3_rows")}_{(wide ? "wide_" : "")}m{fragments}");
            // Once per entry: its depth, so its shared memory, depends only on the fragment count, the form and the limit.
            if (shared > 48 * 1024) entry.SetAttribute(CudaKernel.AttrMaxDynamicSharedBytes, shared);
            k = entry;
        }
        return (k, stages, (uint)shared, wide ? 64 : 32);
    }

    static void Check(string n, DeviceSpan<Bf16> x, int rows, int inDim, E4m3Rows w, int outDim)
    {
        if (rows < 1 || rows > MaxRows) throw new ArgumentOutOfRangeException(nameof(rows), rows, $"{n}: rows must be in 1..{MaxRows}.");
        KernelGuard.Positive(inDim, n, "in");
        KernelGuard.Positive(outDim, n, "out");
        KernelGuard.Fits(x, (long)rows * inDim, n, nameof(x), $"({rows}, {inDim})");
        KernelGuard.Fits(w.Codes, (long)outDim * inDim, n, "codes", $"({outDim}, {inDim})");
        KernelGuard.Fits(w.Scales, outDim, n, "scales", $"({outDim})");
        if (!Takes(rows, x.Address, w, inDim))
            throw new ArgumentException($"{n}: needs in % {Chunk} == 0 (in = {inDim}), 16-byte aligned x and codes, an sm_80+ GPU and " +
                $"{2 * StageBytes(1)} bytes of shared memory per block; dequantize the matrix otherwise.", nameof(w));
    }

    /// <summary>y (rows, outDim), row stride <paramref name="ldy"/> (0 = outDim), = x · (codes · scale)ᵀ, plus y when <paramref name="accumulate"/>.</summary>
    public void Launch(CudaStream stream, DeviceSpan<Bf16> x, int rows, int inDim, E4m3Rows w, int outDim, DeviceSpan<float> y,
        bool accumulate = false, int ldy = 0)
    {
        const string n = "gemm_e4m3_rows";
        if (ldy == 0) ldy = outDim;
        Check(n, x, rows, inDim, w, outDim);
        if (ldy < outDim) throw new ArgumentOutOfRangeException(nameof(ldy), ldy, $"{n}: row stride must be >= out ({outDim}).");
        KernelGuard.Fits(y, (long)(rows - 1) * ldy + outDim, n, nameof(y), $"({rows}, {outDim}) with row stride {ldy}");
        int per = RowsPerLaunch;
        for (int first = 0; first < rows; first += per)
            LaunchBlock(stream, x.Slice((long)first * inDim).Address, Math.Min(per, rows - first), inDim, w, outDim, y.Slice((long)first * ldy).Address, ldy, accumulate);
    }

    void LaunchBlock(CudaStream stream, ulong px, int rows, int inDim, E4m3Rows w, int outDim, ulong py, int ldy, bool accumulate)
    {
        ulong pw = w.Codes.Address, ps = w.Scales.Address;
        int acc = accumulate ? 1 : 0;
        var (k, stages, shared, columns) = Entry(false, rows, outDim);
        void** args = stackalloc void*[] { &px, &pw, &ps, &py, &rows, &inDim, &outDim, &ldy, &acc, &stages };
        k.Launch(stream, ((uint)((outDim + columns - 1) / columns), 1, 1), Block, shared, args);
    }

    /// <summary>output (rows, inter) bf16 = silu(x · Wgᵀ) · (x · Wuᵀ) over <paramref name="gateUp"/> = [gate; up] (2 · inter, in).</summary>
    public void LaunchSiluMul(CudaStream stream, DeviceSpan<Bf16> x, int rows, int inDim, E4m3Rows gateUp, int inter, DeviceSpan<Bf16> output)
    {
        const string n = "gemm_silu_e4m3_rows";
        KernelGuard.Positive(inter, n, nameof(inter));
        Check(n, x, rows, inDim, gateUp, 2 * inter);
        KernelGuard.Fits(output, (long)rows * inter, n, nameof(output), $"({rows}, {inter})");
        int per = RowsPerLaunch;
        for (int first = 0; first < rows; first += per)
            LaunchSiluBlock(stream, x.Slice((long)first * inDim).Address, Math.Min(per, rows - first), inDim, gateUp, inter, output.Slice((long)first * inter).Address);
    }

    void LaunchSiluBlock(CudaStream stream, ulong px, int rows, int inDim, E4m3Rows gateUp, int inter, ulong po)
    {
        ulong pw = gateUp.Codes.Address, ps = gateUp.Scales.Address;
        var (k, stages, shared, columns) = Entry(true, rows, 2 * inter);
        int units = columns / 2;   // a CTA's columns are its units' gate and up rows
        void** args = stackalloc void*[] { &px, &pw, &ps, &po, &rows, &inDim, &inter, &stages };
        k.Launch(stream, ((uint)((inter + units - 1) / units), 1, 1), Block, shared, args);
    }
}
