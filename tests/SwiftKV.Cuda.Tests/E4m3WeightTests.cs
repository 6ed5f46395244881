// FP8 checkpoints kept as e4m3 on the GPU (Fp8Weights.Keep): the e4m3 GEMV forms and the dequantize-into-scratch
// kernel against double / host references, then whole models against independent references: the PyTorch fixtures'
// logits (prefill, and decode one token at a time through the decode graph), and the CPU engine on the checkpoint's
// exact dequantized weights for the solo and batched (serving) paths of a SwiftKV model.
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine;
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Cuda;
using SwiftKV.Engine.Serving;
using SwiftKV.Engine.Tests;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class E4m3WeightTests : GpuFixtureTest
{
    /// <summary>Random finite e4m3 codes (NaN codes 0x7F / 0xFF left out) and positive row scales.</summary>
    static (byte[] Codes, float[] Scales) RandomE4m3(int rows, int columns, int seed)
    {
        var r = new Random(seed);
        var codes = new byte[(long)rows * columns];
        for (int i = 0; i < codes.Length; i++)
        {
            byte c;
            do c = (byte)r.Next(256); while ((c & 0x7F) == 0x7F);
            codes[i] = c;
        }
        var scales = Enumerable.Range(0, rows).Select(_ => (float)(0.002 + 0.01 * r.NextDouble())).ToArray();
        return (codes, scales);
    }

    static float[] RandomFloats(int n, int seed, double scale = 1)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)((2 * r.NextDouble() - 1) * scale)).ToArray();
    }

    /// <summary>
    /// The e4m3 kernels' operands on the GPU, random (seeds <paramref name="seed"/>, + 10, + 20): x (rows, in) bf16, a
    /// plain matrix (out, in) and a [gate; up] (2 · inter, in) as codes with row scales, and the host copies the
    /// references read.
    /// </summary>
    sealed class Operands : IDisposable
    {
        public readonly (byte[] Codes, float[] Scales) Plain, GateUp;
        readonly Bf16[] _x;
        readonly int _inDim;
        readonly DeviceBuffer<Bf16> _dX;
        readonly DeviceBuffer<byte> _dCodes, _dGu;
        readonly DeviceBuffer<float> _dScales, _dGuScales;

        public Operands(int rows, int inDim, int outDim, int inter, int seed)
        {
            _inDim = inDim;
            Plain = RandomE4m3(outDim, inDim, seed);
            GateUp = RandomE4m3(2 * inter, inDim, seed + 10);
            _x = RandomFloats(rows * inDim, seed + 20).Select(Bf16.FromSingle).ToArray();
            _dX = new DeviceBuffer<Bf16>(_x);
            _dCodes = new DeviceBuffer<byte>(Plain.Codes);
            _dScales = new DeviceBuffer<float>(Plain.Scales);
            _dGu = new DeviceBuffer<byte>(GateUp.Codes);
            _dGuScales = new DeviceBuffer<float>(GateUp.Scales);
        }

        public DeviceSpan<Bf16> X => _dX.Span;
        public E4m3Rows W => new(_dCodes.Span, _dScales.Span);
        public E4m3Rows Gu => new(_dGu.Span, _dGuScales.Span);
        /// <summary>x[r, i] as the kernels read it (bf16).</summary>
        public double Xb(int r, int i) => _x[r * _inDim + i].ToSingle();

        public void Dispose()
        {
            _dX.Dispose(); _dCodes.Dispose(); _dScales.Dispose(); _dGu.Dispose(); _dGuScales.Dispose();
        }
    }

    static float Value(byte code) => Float8.ToSingle(code, TensorDtype.F8E4M3);

    /// <summary>Row o · x_r in double with the codes' exact values, times the row's scale.</summary>
    static double Dot(byte[] codes, float[] scales, int o, int inDim, Func<int, double> x)
    {
        double sum = 0;
        for (int i = 0; i < inDim; i++) sum += Value(codes[(long)o * inDim + i]) * x(i);
        return sum * scales[o];
    }

    /// <summary>
    /// The plain and SwiGLU forms at every row count against double references.
    /// in = 4112 (257 chunks of 16: past a lane's first batch of loads, the walk wraps for the staggered SwiGLU warps and
    /// ends part-way through the last batch), out = 37 / inter = 19 (odd: the pair split leaves a lone row), plus the
    /// residual add; the outputs start poisoned, or at known values for the add.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(6)]
    [InlineData(7)]
    [InlineData(8)]
    public void GemvE4m3_EveryForm_MatchesDoubleReference(int rows)
    {
        Gpu.Require();
        const int In = 4112, Out = 37, Inter = 19;
        var gemv = new GemvKernel(Library);
        using var ops = new Operands(rows, In, Out, Inter, 10 + rows);
        var ((codes, scales), (guCodes, guScales)) = (ops.Plain, ops.GateUp);
        var (x, w, gu) = (ops.X, ops.W, ops.Gu);
        Func<int, int, double> Xb = ops.Xb;

        // Plain, written then added to.
        using var y = Gpu.Poisoned((long)rows * Out);
        gemv.Launch(Stream, x, rows, In, w, Out, y.Span);
        var first = y.ToArray();
        var expected = new double[rows * Out];
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < Out; o++) expected[r * Out + o] = Dot(codes, scales, o, In, i => Xb(r, i));
        Gpu.Close(first, expected, 1e-4, 1e-5, $"gemv_e4m3 r{rows}");
        gemv.Launch(Stream, x, rows, In, w, Out, y.Span, accumulate: true);
        Gpu.Close(y.ToArray(), expected.Select(e => 2 * e).ToArray(), 1e-4, 1e-5, $"gemv_e4m3 r{rows} accumulate");

        // SwiGLU: gate rows 0..inter-1, up rows inter..2 inter-1; the output is bf16.
        using var mlp = Gpu.PoisonedBf16((long)rows * Inter);
        gemv.LaunchSiluMul(Stream, x, rows, In, gu, Inter, mlp.Span);
        var silu = new double[rows * Inter];
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < Inter; o++)
            {
                double g = Dot(guCodes, guScales, o, In, i => Xb(r, i)), u = Dot(guCodes, guScales, Inter + o, In, i => Xb(r, i));
                silu[r * Inter + o] = g / (1 + Math.Exp(-g)) * u;
            }
        Gpu.Close(mlp.ToArray().Select(v => v.ToSingle()).ToArray(), silu, 8e-3, 1e-6, $"gemv_silu_e4m3 r{rows}");
    }

    /// <summary>Row o · x_r as <see cref="Dot"/>, and the sum of its terms' magnitudes (what a sum's rounding scales with).</summary>
    static (double Sum, double Magnitude) DotWithMagnitude(byte[] codes, float[] scales, int o, int inDim, Func<int, double> x)
    {
        double sum = 0, magnitude = 0;
        for (int i = 0; i < inDim; i++)
        {
            double term = Value(codes[(long)o * inDim + i]) * x(i);
            sum += term;
            magnitude += Math.Abs(term);
        }
        return (sum * scales[o], magnitude * scales[o]);
    }

    /// <summary>
    /// Each of <paramref name="actual"/> within <paramref name="relative"/> of its terms' magnitude of <paramref name="expected"/>:
    /// tensor cores add fp32 products with their own alignment and rounding, so a sum that cancels to a small value keeps an
    /// error of the size of its terms, not of itself.
    /// </summary>
    static void CloseToSums(float[] actual, double[] expected, double[] magnitude, double relative, string what)
    {
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= relative * magnitude[i] + 1e-6,
                $"{what}: index {i}: got {actual[i]}, expected {expected[i]} (terms' magnitude {magnitude[i]:E3})");
    }

    /// <summary>
    /// The rows GEMM (up to 64 rows on tensor cores, narrow entries) in both forms against double references: row counts
    /// at and across its 16-row fragments; in = 4160 (65 chunks of 64: the eight K-split warps get unequal shares, each
    /// CTA starts at its own chunk, and the ring ends part-way); out = 37 (a second 32-column block holding 5) and
    /// inter = 19; the plain form also into a wider y (row stride 45) and added to. Outputs start poisoned, or at known
    /// values for the add.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(9)]
    [InlineData(16)]
    [InlineData(17)]
    [InlineData(40)]
    [InlineData(64)]
    public void E4m3RowsGemm_BothForms_MatchDoubleReference(int rows)
    {
        Gpu.Require();
        var gemm = new E4m3RowsGemmKernel(Library);
        Assert.False(gemm.Wide(rows, 37) || gemm.Wide(rows, 2 * 19));
        CheckRowsGemmBothForms(gemm, rows, 4160, 37, 19, 45);
    }

    /// <summary>
    /// As on GPUs with less shared memory a block than Hopper's 227 KB (an A100's 163 KB, sm_86 / sm_89's 99 KB): a step
    /// of more rows than a ring of two stages holds goes out in blocks of 48 or 16 rows, narrow entries only, and gives
    /// the same sums.
    /// </summary>
    [Theory]
    [InlineData(163 * 1024, 48, 64)]
    [InlineData(99 * 1024, 16, 17)]
    [InlineData(99 * 1024, 16, 40)]
    [InlineData(99 * 1024, 16, 64)]
    public void E4m3RowsGemm_WithLessSharedMemory_LaunchesRowBlocks_MatchDoubleReference(int sharedLimit, int perLaunch, int rows)
    {
        Gpu.Require();
        var gemm = new E4m3RowsGemmKernel(Library) { SharedLimit = sharedLimit };
        Assert.Equal(perLaunch, gemm.RowsPerLaunch);
        if (sharedLimit < 100 * 1024) Assert.False(gemm.Wide(16, 1 << 20), "two stages of a wide entry do not fit 99 KB");
        CheckRowsGemmBothForms(gemm, rows, 4160, 37, 19, 45);
    }

    /// <summary>
    /// The wide entries (64 columns a CTA), at shapes that take them on the GPU found: enough output columns for the
    /// halved grid to fill it, a ragged last CTA, and 17 K chunks over the 8 warps (some take one more than others).
    /// </summary>
    [Theory]
    [InlineData(16)]
    [InlineData(17)]
    [InlineData(32)]
    public void E4m3RowsGemm_WideEntries_MatchDoubleReference(int rows)
    {
        Gpu.Require();
        var gemm = new E4m3RowsGemmKernel(Library);
        int half = (CudaRuntime.Device.MultiprocessorCount + 1) / 2;
        int outDim = 64 * half + 37, inter = 32 * half + 19;
        Assert.SkipUnless(gemm.Stages(rows, wide: true) >= 2, $"two ring stages of the wide entries need {2 * E4m3RowsGemmKernel.StageBytes((rows + 15) / 16, wide: true)} B of shared memory a block; this GPU has {gemm.SharedLimit}");
        Assert.True(gemm.Wide(rows, outDim) && gemm.Wide(rows, 2 * inter), "the shapes must take the wide entries");
        CheckRowsGemmBothForms(gemm, rows, 17 * 64, outDim, inter, outDim + 8);
    }

    /// <summary>
    /// Both forms of the e4m3 rows GEMM against a double reference: the plain one into a poisoned y and into a row
    /// stride past out with the residual add, the SwiGLU one into a poisoned output.
    /// </summary>
    void CheckRowsGemmBothForms(E4m3RowsGemmKernel gemm, int rows, int inDim, int outDim, int inter, int ldy)
    {
        using var ops = new Operands(rows, inDim, outDim, inter, 40 + rows);
        var ((codes, scales), (guCodes, guScales)) = (ops.Plain, ops.GateUp);
        var (x, w, gu) = (ops.X, ops.W, ops.Gu);
        Func<int, int, double> Xb = ops.Xb;

        var expected = new double[rows * outDim];
        var magnitude = new double[rows * outDim];
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < outDim; o++) (expected[r * outDim + o], magnitude[r * outDim + o]) = DotWithMagnitude(codes, scales, o, inDim, i => Xb(r, i));
        using var y = Gpu.Poisoned((long)rows * outDim);
        gemm.Launch(Stream, x, rows, inDim, w, outDim, y.Span);
        CloseToSums(y.ToArray(), expected, magnitude, 1e-6, $"gemm_e4m3_rows r{rows}");

        // A row stride past out: the columns past out of each row are not the GEMM's and keep their values; then the residual add.
        var start = RandomFloats(rows * ldy, 70 + rows);
        using var strided = new DeviceBuffer<float>(start);
        gemm.Launch(Stream, x, rows, inDim, w, outDim, strided.Span, accumulate: true, ldy: ldy);
        var got = strided.ToArray();
        var want = new double[rows * ldy];
        var wantMagnitude = new double[rows * ldy];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < ldy; c++)
            {
                want[r * ldy + c] = start[r * ldy + c] + (c < outDim ? expected[r * outDim + c] : 0);
                wantMagnitude[r * ldy + c] = Math.Abs(start[r * ldy + c]) + (c < outDim ? magnitude[r * outDim + c] : 0);
            }
        CloseToSums(got, want, wantMagnitude, 1e-6, $"gemm_e4m3_rows r{rows} ldy {ldy} accumulate");
        for (int r = 0; r < rows; r++)
            for (int c = outDim; c < ldy; c++) Assert.Equal(start[r * ldy + c], got[r * ldy + c]);

        // SwiGLU: bf16's rounding of the value (8e-3 of it), plus the sums' error (1e-6 of their magnitude) carried through
        // silu(g) · u (d/dg at most 1.1 |u|, d/du is |silu(g)| <= |g|): a value that cancels to near zero keeps the latter.
        using var mlp = Gpu.PoisonedBf16((long)rows * inter);
        gemm.LaunchSiluMul(Stream, x, rows, inDim, gu, inter, mlp.Span);
        var gotSilu = mlp.ToArray();
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < inter; o++)
            {
                var (g, gMagnitude) = DotWithMagnitude(guCodes, guScales, o, inDim, i => Xb(r, i));
                var (u, uMagnitude) = DotWithMagnitude(guCodes, guScales, inter + o, inDim, i => Xb(r, i));
                double value = g / (1 + Math.Exp(-g)) * u, result = gotSilu[r * inter + o].ToSingle();
                double bound = 8e-3 * Math.Abs(value) + 1e-6 * (1.1 * gMagnitude * Math.Abs(u) + Math.Abs(g) * uMagnitude) + 1e-6;
                Assert.True(Math.Abs(result - value) <= bound, $"gemm_silu_e4m3_rows r{rows}: row {r}, unit {o}: got {result}, expected {value} (bound {bound:E3})");
            }
    }

    [Fact]
    public void E4m3RowsGemm_RefusesShapesItCannotTake()
    {
        Gpu.Require();
        var gemm = new E4m3RowsGemmKernel(Library);
        using var x = new DeviceBuffer<Bf16>(65 * 128);
        using var codes = new DeviceBuffer<byte>(128 * 8);
        using var scales = new DeviceBuffer<float>(8);
        using var y = new DeviceBuffer<float>(65 * 8);
        var w = new E4m3Rows(codes.Span, scales.Span);
        // in = 96 is no multiple of 64; 65 rows are past the kernel; 8 scales cannot cover 9 columns.
        Assert.Contains("in % 64", Assert.Throws<ArgumentException>(() => gemm.Launch(Stream, x.Span, 9, 96, w, 8, y.Span)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => gemm.Launch(Stream, x.Span, 65, 64, w, 8, y.Span));
        Assert.Contains("scales", Assert.Throws<ArgumentException>(() => gemm.Launch(Stream, x.Span, 9, 64, w, 9, y.Span)).Message);
    }

    [Fact]
    public void GemvE4m3_RefusesShapesItCannotTake()
    {
        Gpu.Require();
        var gemv = new GemvKernel(Library);
        using var x = new DeviceBuffer<Bf16>(64);
        using var codes = new DeviceBuffer<byte>(64 * 8);
        using var scales = new DeviceBuffer<float>(8);
        using var y = new DeviceBuffer<float>(64);
        var w = new E4m3Rows(codes.Span, scales.Span);
        // in = 24 is no multiple of 16; a 9-row step is past the GEMV; 8 scales cannot cover 9 rows.
        Assert.Contains("in % 16", Assert.Throws<ArgumentException>(() => gemv.Launch(Stream, x.Span, 1, 24, w, 8, y.Span)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => gemv.Launch(Stream, x.Span, 9, 32, w, 8, y.Span));
        Assert.Contains("scales", Assert.Throws<ArgumentException>(() => gemv.Launch(Stream, x.Span, 1, 32, w, 9, y.Span)).Message);
    }

    /// <summary>
    /// The scratch a kept matrix is dequantized into holds exactly what the loader writes for a dequantized matrix:
    /// bf16(value(code) · scale), for every finite code and odd row scales, bit for bit.
    /// </summary>
    [Fact]
    public void DequantizeRows_WritesTheLoadersValues_BitForBit()
    {
        Gpu.Require();
        const int Rows = 33, Columns = 272;
        var (codes, scales) = RandomE4m3(Rows, Columns, 5);
        for (int c = 0; c < 256; c++) if ((c & 0x7F) != 0x7F) codes[c] = (byte)c;   // every finite code appears
        using var dCodes = new DeviceBuffer<byte>(codes);
        using var dScales = new DeviceBuffer<float>(scales);
        using var output = Gpu.PoisonedBf16((long)Rows * Columns + 16);
        new Fp8WeightKernel(Library).DequantizeRows(Stream, new E4m3Rows(dCodes.Span, dScales.Span), Rows, Columns, output.Span);
        var got = output.ToArray();
        for (int i = 0; i < Rows * Columns; i++)
        {
            ushort want = Bf16.FromSingle(Value(codes[i]) * scales[i / Columns]).Bits;
            Assert.True(want == got[i].Bits, $"element {i} (code 0x{codes[i]:X2}, scale {scales[i / Columns]}): 0x{got[i].Bits:X4}, expected 0x{want:X4}");
        }
        Assert.True(float.IsNaN(got[Rows * Columns].ToSingle()), "the kernel wrote past the matrix");
    }

    public static TheoryData<string> KeepableFixtures => ["fp8_channel_swiftkv_50_g2", "fp8_tensor_base"];

    /// <summary>
    /// The PyTorch fixtures with per-channel and per-matrix scales, kept as e4m3: a prefill of every position (its
    /// rows above the GEMV's take the dequantized scratch) and then the same positions fed one token at a time (the
    /// e4m3 GEMVs, then decode-graph replays) both match the reference logits, as the dequantized load does.
    /// </summary>
    [Theory]
    [MemberData(nameof(KeepableFixtures))]
    public void Keep_Fp8Fixture_MatchesTheReference_InPrefillAndDecode(string name)
    {
        Gpu.Require();
        string dir = Fp8Checkpoints.FixturePath(name);
        var fixture = Fp8Checkpoints.ReadFixture(name);
        bool swiftKv = LlamaConfig.Load(dir).SwiftKv;
        using var kept = CudaBackend.Load(dir, swiftKv, Fp8Weights.Keep);
        using var dequantized = CudaBackend.Load(dir, swiftKv, Fp8Weights.Dequantize);
        Assert.True(kept.E4m3WeightMatrices > 0, "nothing was kept as e4m3");
        Assert.Equal(0, dequantized.E4m3WeightMatrices);
        Assert.True(kept.WeightBytes < dequantized.WeightBytes, $"kept {kept.WeightBytes} B, dequantized {dequantized.WeightBytes} B");
        int n = fixture.Ids.Length, vocab = fixture.Logits.Length / n;

        using var c1 = kept.CreateCache(n);
        var prefill = kept.Forward(c1, fixture.Ids, LogitsSelection.AllTokens);
        using var c2 = kept.CreateCache(n);
        var decode = new float[prefill.Length];
        for (int p = 0; p < n; p++) kept.Forward(c2, fixture.Ids.AsSpan(p, 1), LogitsSelection.LastToken).CopyTo(decode, p * vocab);
        double worstPrefill = 0, worstDecode = 0;
        for (int p = 0; p < n; p++)
        {
            worstPrefill = Math.Max(worstPrefill, Gpu.RowError(fixture.Logits.AsSpan(p * vocab, vocab), prefill.AsSpan(p * vocab, vocab)));
            worstDecode = Math.Max(worstDecode, Gpu.RowError(fixture.Logits.AsSpan(p * vocab, vocab), decode.AsSpan(p * vocab, vocab)));
        }
        Gpu.Log($"{name} kept as e4m3 ({kept.E4m3WeightMatrices} matrices, {kept.WeightBytes} B against {dequantized.WeightBytes} B dequantized): " +
                $"worst row against the PyTorch reference, prefill of {n} {worstPrefill:E2}, one token at a time {worstDecode:E2}");
        // DecodePathTests' rule for these fixtures (their bf16 activations set ~2e-2).
        Assert.True(worstPrefill <= 3e-2, $"prefill: {worstPrefill:E2}");
        Assert.True(worstDecode <= 3e-2, $"decode: {worstDecode:E2}");
    }

    /// <summary>
    /// Auto keeps e4m3 only when the bf16 weights would not fit beside the 2 GiB reserve: with the GPU's memory all free
    /// it dequantizes; with all but the bf16 weights and 1 GiB taken (a buffer held meanwhile) it keeps the codes.
    /// </summary>
    [Fact]
    public void Auto_KeepsE4m3_OnlyWhenBf16WouldNotFit()
    {
        Gpu.Require();
        string dir = Fp8Checkpoints.FixturePath("fp8_channel_swiftkv_50_g2");
        var fixture = Fp8Checkpoints.ReadFixture("fp8_channel_swiftkv_50_g2");
        long bf16Bytes;
        using (var roomy = CudaBackend.Load(dir, true, Fp8Weights.Auto))
        {
            Assert.Equal(0, roomy.E4m3WeightMatrices);
            bf16Bytes = roomy.WeightBytes;
        }
        long free = CudaRuntime.MemoryInfo().Free;
        using var taken = new DeviceBuffer<byte>(free - bf16Bytes - (1L << 30));
        using var tight = CudaBackend.Load(dir, true, Fp8Weights.Auto);
        Assert.True(tight.E4m3WeightMatrices > 0, "Auto dequantized although bf16 weights would leave less than the reserve");
        using var c = tight.CreateCache(fixture.Ids.Length);
        var logits = tight.Forward(c, fixture.Ids, LogitsSelection.LastToken);
        int vocab = fixture.Logits.Length / fixture.Ids.Length;
        double error = Gpu.RowError(fixture.Logits.AsSpan((fixture.Ids.Length - 1) * vocab, vocab), logits);
        Gpu.Log($"Auto with {(CudaRuntime.MemoryInfo().Free) / 1e9:F1} GB left free: {tight.E4m3WeightMatrices} matrices kept as e4m3, last row {error:E2} from the reference");
        Assert.True(error <= 3e-2, $"{error:E2}");
    }

    /// <summary>Block-wise scales change along a row: Keep holds those matrices in bf16, the same values as Dequantize.</summary>
    [Fact]
    public void Keep_BlockScaledFixture_IsDequantized()
    {
        Gpu.Require();
        string dir = Fp8Checkpoints.FixturePath("fp8_block_base");
        var fixture = Fp8Checkpoints.ReadFixture("fp8_block_base");
        using var kept = CudaBackend.Load(dir, false, Fp8Weights.Keep);
        using var dequantized = CudaBackend.Load(dir, false, Fp8Weights.Dequantize);
        Assert.Equal(0, kept.E4m3WeightMatrices);
        using var c1 = kept.CreateCache(fixture.Ids.Length);
        using var c2 = dequantized.CreateCache(fixture.Ids.Length);
        Assert.Equal(dequantized.Forward(c2, fixture.Ids, LogitsSelection.AllTokens), kept.Forward(c1, fixture.Ids, LogitsSelection.AllTokens));
    }

    /// <summary>
    /// A SwiftKV model (AcrossKV 2) quantized per channel, kept as e4m3, at widths where every route runs: a 300-token
    /// prefill (the dequantized scratch into cuBLAS, and into the gated MLP GEMM on Hopper; SingleInputKV's K/V in two row
    /// chunks),
    /// decode steps (e4m3 GEMVs, graphs), and serving steps of several sequences (prefill chunks, 3-row and 1-row
    /// decode steps), each against the CPU engine on the checkpoint's exact dequantized weights.
    /// </summary>
    [Fact]
    public void Keep_SwiftKvModel_SoloAndBatched_MatchCpuOnTheDequantizedWeights()
    {
        Gpu.Require();
        var spec = new ModelSpec(Hidden: 512, Intermediate: 1024, Layers: 4, Heads: 8, KvHeads: 2, HeadDim: 64, Vocab: 300,
            SwiftKvLayers: 2, GroupSize: 2, Seed: 91, MaxPositions: 512);
        using var checkpoint = new PerChannelFp8Checkpoint(spec);
        using var gpu = CudaBackend.Load(checkpoint.Dir, true, Fp8Weights.Keep);
        using var cpu = new CpuBackend(LlamaCheckpointLoader.Load(checkpoint.Dir, true));
        Assert.True(gpu.E4m3WeightMatrices > 0);
        gpu.SwiftKvChunkBytes = 256L * 2 * spec.KvHeads * spec.HeadDim * sizeof(float);   // one leader's fp32 [k | v] for 256 rows: 256-row chunks

        // Solo: a long prefill, then decode steps.
        var prompt = TestModels.RandomTokens(300, spec.Vocab, 7);
        using var gc = gpu.CreateCache(320);
        using var cc = cpu.CreateCache(320);
        double worst = Gpu.RowError(cpu.Forward(cc, prompt, LogitsSelection.LastToken), gpu.Forward(gc, prompt, LogitsSelection.LastToken));
        var next = TestModels.RandomTokens(6, spec.Vocab, 8);
        foreach (int t in next)
            worst = Math.Max(worst, Gpu.RowError(cpu.Forward(cc, [t], LogitsSelection.LastToken), gpu.Forward(gc, [t], LogitsSelection.LastToken)));

        // Batched: three sequences, prefill chunks then decode steps of 3 and 1 rows.
        const int BlockSize = 16, Blocks = 48;
        using var pool = gpu.CreatePagedKvCache(Blocks, BlockSize);
        using var cpuPool = cpu.CreatePagedKvCache(Blocks, BlockSize);
        var seqs = new[] { TestModels.RandomTokens(40, spec.Vocab, 11), TestModels.RandomTokens(70, spec.Vocab, 12), TestModels.RandomTokens(9, spec.Vocab, 13) };
        var tables = seqs.Select((_, i) => Enumerable.Range(i * 16, 16).ToArray()).ToArray();
        (int Seq, int Start, int Count)[][] steps =
        [
            [(0, 0, 33), (1, 0, 70), (2, 0, 8)],
            [(0, 33, 7), (2, 8, 1)],
            [(0, 39, 1), (1, 69, 1), (2, 8, 1)],
            [(1, 69, 1)],
        ];
        double worstBatched = 0;
        foreach (var step in steps)
        {
            var batch = step.Select(c => new BatchSequence(seqs[c.Seq].AsMemory(c.Start, c.Count), c.Start, tables[c.Seq], true)).ToArray();
            var g = gpu.ForwardBatch(pool, batch);
            var c = cpu.ForwardBatch(cpuPool, batch);
            for (int r = 0; r < batch.Length; r++)
                worstBatched = Math.Max(worstBatched, Gpu.RowError(c.AsSpan(r * spec.Vocab, spec.Vocab), g.AsSpan(r * spec.Vocab, spec.Vocab)));
        }
        Gpu.Log($"SwiftKV model kept as e4m3 ({gpu.E4m3WeightMatrices} matrices, scratch {gpu.DequantizeScratchBytes} B): worst row against the CPU, " +
                $"solo prefill + decode {worst:E2}, serving steps {worstBatched:E2}");
        // bf16 activations against fp32 (CudaBatchedTests' 1e-2 rule at these widths, with room for the GEMV's
        // unrounded weights against the CPU's fp32 ones).
        Assert.True(worst <= 2e-2, $"solo: {worst:E2}");
        Assert.True(worstBatched <= 2e-2, $"batched: {worstBatched:E2}");
    }

    /// <summary>
    /// Serving steps of 12, 40 and 64 rows (batched decode, past where the e4m3 GEMV hands over) over kept e4m3 weights
    /// take the rows GEMM for every projection (q/k/v, o, [gate; up], down) and match the CPU engine on the exact
    /// dequantized weights;
    /// with the route off (dequantize, cuBLAS), the same steps give logits within the rounding of code x scale to bf16.
    /// </summary>
    [Fact]
    public void Keep_DecodeBatchesPastTheGemv_TakeTheRowsGemm_MatchCpu()
    {
        Gpu.Require();
        var spec = new ModelSpec(Hidden: 512, Intermediate: 1024, Layers: 4, Heads: 8, KvHeads: 2, HeadDim: 64, Vocab: 300,
            SwiftKvLayers: 2, GroupSize: 2, Seed: 93, MaxPositions: 512);
        using var checkpoint = new PerChannelFp8Checkpoint(spec);
        using var gpu = CudaBackend.Load(checkpoint.Dir, true, Fp8Weights.Keep);
        using var cpu = new CpuBackend(LlamaCheckpointLoader.Load(checkpoint.Dir, true));
        const int BlockSize = 16, Sequences = 64;
        // Each sequence: a 20-token prompt (blocks 2i, 2i + 1), then decode steps of 12, 40 and 64 rows.
        var seqs = Enumerable.Range(0, Sequences).Select(i => TestModels.RandomTokens(24, spec.Vocab, 200 + (ulong)i)).ToArray();
        var tables = seqs.Select((_, i) => new[] { 2 * i, 2 * i + 1 }).ToArray();
        double RunSteps(CudaBackend g, out float[][] rows)
        {
            using var pool = g.CreatePagedKvCache(2 * Sequences, BlockSize);
            using var cpuPool = cpu.CreatePagedKvCache(2 * Sequences, BlockSize);
            var logits = new List<float[]>();
            double worst = 0;
            void Step(BatchSequence[] batch, bool compare)
            {
                var gl = g.ForwardBatch(pool, batch);
                var cl = cpu.ForwardBatch(cpuPool, batch);
                for (int r = 0; r < batch.Length; r++)
                {
                    logits.Add(gl.AsSpan(r * spec.Vocab, spec.Vocab).ToArray());
                    if (compare) worst = Math.Max(worst, Gpu.RowError(cl.AsSpan(r * spec.Vocab, spec.Vocab), gl.AsSpan(r * spec.Vocab, spec.Vocab)));
                }
            }
            for (int i = 0; i < Sequences; i += 8)   // prompts in steps of 8 x 20 rows (the dequantize route)
                Step(Enumerable.Range(i, 8).Select(s => new BatchSequence(seqs[s].AsMemory(0, 20), 0, tables[s], true)).ToArray(), false);
            int position = 20;
            foreach (int n in new[] { 12, 40, 64 })
            {
                Step(Enumerable.Range(0, n).Select(s => new BatchSequence(seqs[s].AsMemory(position, 1), position, tables[s], true)).ToArray(), true);
                position++;
            }
            rows = logits.ToArray();
            return worst;
        }
        long before = gpu.E4m3RowsGemmLaunches;
        double worstOn = RunSteps(gpu, out var on);
        long launches = gpu.E4m3RowsGemmLaunches - before;
        gpu.UseE4m3RowsGemm = false;
        double worstOff = RunSteps(gpu, out var off);
        Assert.Equal(launches, gpu.E4m3RowsGemmLaunches - before);   // none with the route off
        double apart = 0;
        for (int i = 0; i < on.Length; i++) apart = Math.Max(apart, Gpu.RowError(off[i], on[i]));
        Gpu.Log($"kept e4m3, decode steps of 12/40/64 rows: {launches} rows-GEMM launches; worst row against the CPU {worstOn:E2} " +
                $"(route off, dequantize + cuBLAS: {worstOff:E2}); the two routes' logits apart by {apart:E2}");
        // Each decode step: every layer's q/k/v (q alone in the SwiftKV layers), o, [gate; up] and down, and SwiftKV's
        // [k; v] of the step's rows; each runs once, then again as it is captured (102 in the run of 67a2148). Each prompt
        // step's 8 last rows go on through the SwiftKV layers' q, o, [gate; up] and down, on the route when it starts at
        // 8 rows or fewer. A projection that left the route would still match the CPU (the fallback is right too), so
        // count them exactly.
        const int PerStep = 4 * 4 + 1;
        int promptSteps = gpu.E4m3RowsGemmFromRows <= 8 ? Sequences / 8 * (spec.Layers - spec.SwiftKvLayers) * 4 : 0;
        Assert.Equal(3 * PerStep * 2 + promptSteps, launches);
        Assert.True(worstOn <= 2e-2, $"on: {worstOn:E2}");
        Assert.True(apart <= 2e-2, $"routes apart: {apart:E2}");
    }

    /// <summary>
    /// Llama-3-8B's head layout (32 q / 8 KV heads, head_dim 128), SwiftKV with AcrossKV 2, quantized per channel and kept:
    /// a 600-token prefill takes the fused [q; k; v] GEMM, the leaders' [k; v] GEMMs and the gated MLP GEMM on Hopper, all
    /// reading the dequantize scratch, then decode steps take the e4m3 GEMVs; against the CPU engine on the exact
    /// dequantized weights.
    /// </summary>
    [Fact]
    public void Keep_LlamaHeads_FusedGemmsReadTheScratch_MatchCpu()
    {
        Gpu.Require();
        var spec = new ModelSpec(Hidden: 256, Layers: 4, Heads: 32, KvHeads: 8, HeadDim: 128, Vocab: 97, Intermediate: 320,
            RopeScaling: true, SwiftKvLayers: 2, GroupSize: 2, Seed: 31, MaxPositions: 2048);
        using var checkpoint = new PerChannelFp8Checkpoint(spec);
        using var gpu = CudaBackend.Load(checkpoint.Dir, true, Fp8Weights.Keep);
        using var cpu = new CpuBackend(LlamaCheckpointLoader.Load(checkpoint.Dir, true));
        var prompt = TestModels.RandomTokens(600, spec.Vocab, 131);
        using var gc = gpu.CreateCache(608);
        using var cc = cpu.CreateCache(608);
        double worst = Gpu.RowError(cpu.Forward(cc, prompt, LogitsSelection.LastToken), gpu.Forward(gc, prompt, LogitsSelection.LastToken));
        if (CudaRuntime.Device.Arch == "sm_90a")
        {
            // 2 full layers' [q; k; v] + 1 leader's [k; v]; the gated GEMM in the 2 full layers.
            Assert.Equal(3, gpu.FusedQkvLaunches);
            Assert.Equal(2, gpu.GatedMlpLaunches);
        }
        foreach (int t in TestModels.RandomTokens(4, spec.Vocab, 132))
            worst = Math.Max(worst, Gpu.RowError(cpu.Forward(cc, [t], LogitsSelection.LastToken), gpu.Forward(gc, [t], LogitsSelection.LastToken)));
        Gpu.Log($"32/8 heads, d128, kept as e4m3 ({gpu.E4m3WeightMatrices} matrices): worst row against the CPU over a 600-token prefill and 4 decode steps {worst:E2}");
        Assert.True(worst <= 2e-2, $"{worst:E2}");
    }

    /// <summary>A SwiftKV checkpoint of <c>spec</c>'s shape with its decoder Linear weights quantized to e4m3 per output channel, in a temporary directory.</summary>
    internal sealed class PerChannelFp8Checkpoint : IDisposable
    {
        public string Dir { get; } = Path.Combine(Path.GetTempPath(), "swiftkv-e4m3-" + Guid.NewGuid().ToString("N")[..8]);

        public PerChannelFp8Checkpoint(ModelSpec spec)
        {
            LlamaCheckpointWriter.Save(Dir, TestModels.View(TestModels.Checkpoint(spec), true));
            Fp8Checkpoints.Quantize(Dir, "channel");
        }

        public void Dispose()
        {
            if (Directory.Exists(Dir)) Directory.Delete(Dir, true);
        }
    }

    /// <summary>
    /// The benchmarks' random e4m3 weights: what the memory check counted before loading is what the load saved (the
    /// bf16 model's bytes less the e4m3 one's), the model runs, and disposing it returns every byte it allocated.
    /// </summary>
    [Fact]
    public void CreateRandom_E4m3_SavesWhatTheCheckCounted_AndReturnsItsMemory()
    {
        Gpu.Require();
        var cfg = ModelPresets.Get("tiny") with { SwiftKv = true, ModelType = "llama_swiftkv", NumKeyValueLayers = 2, KeyValueGroupSize = 2 };
        long bf16Bytes;
        using (var bf16 = CudaBackend.CreateRandom(cfg, true, seed: 3)) bf16Bytes = bf16.WeightBytes;
        using (var warm = CudaBackend.CreateRandom(cfg, true, seed: 3, e4m3: true))
        using (var c = warm.CreateCache(8))
            warm.NextToken(c, [warm.NextToken(c, [1, 2, 300], new GpuSampling())], new GpuSampling());
        CudaRuntime.Synchronize();
        long counted0 = DeviceMemory.AllocatedBytes;

        var e4m3 = CudaBackend.CreateRandom(cfg, true, seed: 3, e4m3: true);
        Assert.True(e4m3.E4m3WeightMatrices > 0);
        Assert.True(e4m3.PlannedE4m3SavedBytes > 0);
        Assert.Equal(e4m3.PlannedE4m3SavedBytes, e4m3.E4m3SavedBytes);
        Assert.Equal(bf16Bytes - e4m3.E4m3SavedBytes, e4m3.WeightBytes);
        using (var c = e4m3.CreateCache(16))
        {
            int t = e4m3.NextToken(c, [1, 2, 3], new GpuSampling());
            for (int i = 0; i < 3; i++) t = e4m3.NextToken(c, [t], new GpuSampling());
            Assert.All(e4m3.Forward(c, [t], LogitsSelection.LastToken), v => Assert.True(float.IsFinite(v)));
        }
        Gpu.Log($"random e4m3 tiny model: {e4m3.E4m3WeightMatrices} matrices, {bf16Bytes} B in bf16 against {e4m3.WeightBytes} B, scratch {e4m3.DequantizeScratchBytes} B");
        e4m3.Dispose();
        CudaRuntime.Synchronize();
        Assert.Equal(counted0, DeviceMemory.AllocatedBytes);
    }
}
