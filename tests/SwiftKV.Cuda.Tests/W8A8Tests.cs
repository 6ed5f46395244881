// W8A8 over kept e4m3 weights (Fp8Weights.KeepW8A8, CudaBackend.UseW8A8): the per-token quantize kernel against the
// host's rule bit for bit (codes from the format's definition, rounded to nearest even), cuBLASLt's fp8 GEMM with
// outer-vector scales against double sums over the same codes, then whole models against the PyTorch W8A8 reference
// (tests/reference/make_w8a8_fixtures.py: FP8 checkpoints run with each Linear's input quantized per token) and the
// serving step against solo forwards.
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

public sealed class W8A8Tests : GpuFixtureTest
{
    /// <summary>The quantize kernels: sm_89+ (hardware conversion to e4m3).</summary>
    static void RequireFp8TensorCores()
    {
        Gpu.Require();
        Assert.SkipUnless(ActivationFp8Kernel.Supported(CudaRuntime.Device), $"e4m3 conversion needs sm_89+; this GPU is {CudaRuntime.Device.Arch}");
    }

    /// <summary>The W8A8 GEMMs and models: cuBLASLt's per-row fp8 scales, Hopper only (Cublas.E4m3RowScaledGpu).</summary>
    static void RequireW8A8Gpu()
    {
        RequireFp8TensorCores();
        Assert.SkipUnless(Cublas.E4m3RowScaledGpu(CudaRuntime.Device), $"cuBLASLt's per-row fp8 scales run on Hopper only; this GPU is {CudaRuntime.Device.Arch}");
    }

    /// <summary>e4m3 magnitudes 0..448 by code 0x00..0x7E, from the format's definition (exponent bias 7, 3-bit mantissa).</summary>
    static readonly double[] Magnitudes = Enumerable.Range(0, 0x7F)
        .Select(c => (c >> 3) == 0 ? (c & 7) / 8.0 * Math.Pow(2, -6) : (1 + (c & 7) / 8.0) * Math.Pow(2, (c >> 3) - 7)).ToArray();

    static double Value(byte code) => (code & 0x80) != 0 ? -Magnitudes[code & 0x7F] : Magnitudes[code & 0x7F];

    /// <summary>fp32 to e4m3 as cvt.rn.satfinite does it: nearest, ties to the even code, +-448 past the range, sign kept (also for 0).</summary>
    static byte Encode(float v)
    {
        if (float.IsNaN(v)) return 0x7F;
        byte sign = (byte)(BitConverter.SingleToInt32Bits(v) < 0 ? 0x80 : 0);
        double a = Math.Min(Math.Abs((double)v), 448);
        int lo = 0;
        while (lo + 1 < Magnitudes.Length && Magnitudes[lo + 1] <= a) lo++;
        int code = lo;
        if (lo + 1 < Magnitudes.Length)
        {
            double dl = a - Magnitudes[lo], dh = Magnitudes[lo + 1] - a;
            if (dh < dl || (dh == dl && (lo & 1) == 1)) code = lo + 1;
        }
        return (byte)(sign | code);
    }

    /// <summary>
    /// The host's rule: scale = amax / 448, code = e4m3(x · (448 / amax)), each fp32 op rounded once; scale 1 (so zero
    /// codes) for amax below 1e-30, where 448 / amax would overflow.
    /// </summary>
    static (byte[] Codes, float Scale) QuantizeRow(ReadOnlySpan<Bf16> x)
    {
        float amax = 0;
        foreach (var v in x) amax = Math.Max(amax, Math.Abs(v.ToSingle()));
        bool scaled = amax >= 1e-30f;
        float inv = scaled ? 448f / amax : 1f;
        var codes = new byte[x.Length];
        for (int i = 0; i < x.Length; i++) codes[i] = Encode(x[i].ToSingle() * inv);
        return (codes, scaled ? amax / 448f : 1f);
    }

    /// <summary>
    /// Rows of very different ranges (1e-6 to 1e30, one of zeros, one with a single non-zero, one that hits e4m3's
    /// subnormals, one of values near 1e-37, whose 448 / amax would overflow) at 4112 columns (257 chunks of 16): every
    /// code and scale as the host rule gives them, bit for bit, and no NaN from a finite row.
    /// </summary>
    [Fact]
    public void QuantizeRows_MatchesTheHostRule_BitForBit()
    {
        RequireFp8TensorCores();
        const int Rows = 10, Columns = 4112;
        var r = new Random(3);
        var x = new Bf16[Rows * Columns];
        double[] ranges = [1, 1e-6, 1e30, 0, 1, 448, 3e-3, 1, 65504, 1e-37];
        for (int row = 0; row < Rows; row++)
            for (int i = 0; i < Columns; i++)
            {
                double v = (2 * r.NextDouble() - 1) * ranges[row];
                if (row == 4) v = i == 777 ? -2.5 : 0;                              // one non-zero: amax from a negative
                if (row == 6) v *= Math.Pow(2, -r.Next(0, 20));                    // magnitudes down into e4m3's subnormals
                x[row * Columns + i] = Bf16.FromSingle((float)v);
            }
        using var dX = new DeviceBuffer<Bf16>(x);
        using var codes = new DeviceBuffer<byte>((long)Rows * Columns + 16);
        using var scales = Gpu.Poisoned(Rows + 1);
        new ActivationFp8Kernel(Library).QuantizeRows(Stream, dX.Span, Rows, Columns, new E4m3Rows(codes.Span, scales.Span));
        var gotCodes = codes.ToArray();
        var gotScales = scales.ToArray();
        int subnormal = 0;
        for (int row = 0; row < Rows; row++)
        {
            var (want, scale) = QuantizeRow(x.AsSpan(row * Columns, Columns));
            Assert.True(BitConverter.SingleToInt32Bits(scale) == BitConverter.SingleToInt32Bits(gotScales[row]), $"row {row}: scale {gotScales[row]:R}, expected {scale:R}");
            for (int i = 0; i < Columns; i++)
            {
                byte got = gotCodes[row * Columns + i];
                Assert.True(want[i] == got, $"row {row} column {i} (x = {x[row * Columns + i].ToSingle():R}): code 0x{got:X2}, expected 0x{want[i]:X2}");
                if ((got & 0x78) == 0 && (got & 7) != 0) subnormal++;
            }
        }
        Assert.True(float.IsNaN(gotScales[Rows]), "a scale was written past the rows");
        Assert.Equal(1f, gotScales[9]);
        Assert.DoesNotContain(gotCodes.Take(Rows * Columns), c => (c & 0x7F) == 0x7F);
        Assert.True(subnormal > 100, $"only {subnormal} subnormal codes: the test did not reach them");
    }

    /// <summary>
    /// The fused SwiGLU + quantize pass writes exactly the codes and scales of its two-pass form (silu_mul_bf16, then
    /// quantize_rows_e4m3 over its bf16 output), at Llama-3-8B's width order (4112) and past 48 KB of shared memory a row
    /// (28688: Llama-3-70B's 28672 plus 16, the opt-in path).
    /// </summary>
    [Theory]
    [InlineData(5, 4112)]
    [InlineData(3, 28688)]
    public void SiluMulQuantize_EqualsSiluThenQuantize_BitForBit(int rows, int inter)
    {
        RequireFp8TensorCores();
        var r = new Random(inter);
        var gateUp = Enumerable.Range(0, 2 * rows * inter).Select(_ => Bf16.FromSingle((float)((2 * r.NextDouble() - 1) * 6))).ToArray();
        using var dGateUp = new DeviceBuffer<Bf16>(gateUp);
        using var mlp = new DeviceBuffer<Bf16>((long)rows * inter);
        using var twoPassCodes = new DeviceBuffer<byte>((long)rows * inter);
        using var twoPassScales = new DeviceBuffer<float>(rows);
        using var fusedCodes = new DeviceBuffer<byte>((long)rows * inter);
        using var fusedScales = Gpu.Poisoned(rows);
        var k = new ActivationFp8Kernel(Library);
        new SiluMulKernel(Library).Launch(Stream, dGateUp.Span, rows, inter, mlp.Span);
        k.QuantizeRows(Stream, mlp.Span, rows, inter, new E4m3Rows(twoPassCodes.Span, twoPassScales.Span));
        k.SiluMulQuantize(Stream, dGateUp.Span, rows, inter, new E4m3Rows(fusedCodes.Span, fusedScales.Span));
        Assert.Equal(twoPassScales.ToArray(), fusedScales.ToArray());
        var want = twoPassCodes.ToArray();
        var got = fusedCodes.ToArray();
        for (int i = 0; i < want.Length; i++) Assert.True(want[i] == got[i], $"element {i}: 0x{got[i]:X2}, two passes 0x{want[i]:X2}");
        Assert.Contains(want, c => c != 0);
    }

    /// <summary>
    /// The fused RMSNorm + quantize pass writes exactly the codes and scales of its two-pass form (rms_norm_f32, then
    /// quantize_rows_e4m3 over its bf16 rows) and leaves x as the norm kernel does (bias added in place), at Llama-3-8B's
    /// width, an odd multiple of 16, and past 48 KB of shared memory a row (the opt-in path); one row of x is zeros (scale 1
    /// without a bias).
    /// </summary>
    [Theory]
    [InlineData(7, 4096, false)]
    [InlineData(5, 4112, true)]
    [InlineData(3, 24592, true)]
    public void RmsNormQuantize_EqualsNormThenQuantize_BitForBit(int rows, int dim, bool withBias)
    {
        RequireFp8TensorCores();
        const float Eps = 1e-5f;
        var r = new Random(dim + rows);
        var x = Enumerable.Range(0, rows * dim).Select(i => i / dim == 1 ? 0f : (float)((2 * r.NextDouble() - 1) * 3)).ToArray();
        var weight = Enumerable.Range(0, dim).Select(_ => (float)(0.5 + r.NextDouble())).ToArray();
        var bias = Enumerable.Range(0, dim).Select(_ => (float)((2 * r.NextDouble() - 1) * 0.3)).ToArray();
        using var xTwoPass = new DeviceBuffer<float>(x);
        using var xFused = new DeviceBuffer<float>(x);
        using var dWeight = new DeviceBuffer<float>(weight);
        using var dBias = new DeviceBuffer<float>(bias);
        using var normed = new DeviceBuffer<Bf16>((long)rows * dim);
        using var twoPassCodes = new DeviceBuffer<byte>((long)rows * dim);
        using var twoPassScales = new DeviceBuffer<float>(rows);
        using var fusedCodes = new DeviceBuffer<byte>(Enumerable.Repeat((byte)0x7F, rows * dim).ToArray());   // e4m3 NaN: never a valid output here
        using var fusedScales = Gpu.Poisoned(rows);
        DeviceSpan<float>? b = withBias ? dBias.Span : null;
        var k = new ActivationFp8Kernel(Library);
        new RmsNormKernel(Library).Launch(Stream, xTwoPass.Span, b, dWeight.Span, normed.Span, rows, dim, Eps);
        k.QuantizeRows(Stream, normed.Span, rows, dim, new E4m3Rows(twoPassCodes.Span, twoPassScales.Span));
        k.RmsNormQuantize(Stream, xFused.Span, b, dWeight.Span, rows, dim, Eps, new E4m3Rows(fusedCodes.Span, fusedScales.Span));
        Assert.Equal(twoPassScales.ToArray(), fusedScales.ToArray());
        if (!withBias) Assert.Equal(1f, fusedScales.ToArray()[1]);   // the zero row (a bias makes it nonzero)
        var want = twoPassCodes.ToArray();
        var got = fusedCodes.ToArray();
        for (int i = 0; i < want.Length; i++) Assert.True(want[i] == got[i], $"row {i / dim} column {i % dim}: 0x{got[i]:X2}, two passes 0x{want[i]:X2}");
        Assert.Contains(want, c => c != 0);
        var xAfter = xFused.ToArray();
        Assert.Equal(xTwoPass.ToArray(), xAfter);
        Assert.Equal(withBias, !xAfter.AsSpan(0, dim).SequenceEqual(x.AsSpan(0, dim)));
    }

    [Fact]
    public void RmsNormQuantize_RefusesShapesItCannotTake()
    {
        RequireFp8TensorCores();
        var k = new ActivationFp8Kernel(Library);
        using var x = new DeviceBuffer<float>(128);
        using var weight = new DeviceBuffer<float>(64);
        using var codes = new DeviceBuffer<byte>(128);
        using var scales = new DeviceBuffer<float>(4);
        var q = new E4m3Rows(codes.Span, scales.Span);
        Assert.Contains("dim % 16", Assert.Throws<ArgumentException>(() => k.RmsNormQuantize(Stream, x.Span, null, weight.Span, 2, 24, 1e-5f, q)).Message);
        Assert.Contains("weight", Assert.Throws<ArgumentException>(() => k.RmsNormQuantize(Stream, x.Span, null, weight.Span, 1, 128, 1e-5f, q)).Message);
        Assert.Contains("scales", Assert.Throws<ArgumentException>(() => k.RmsNormQuantize(Stream, x.Span, null, weight.Span, 8, 16, 1e-5f, q)).Message);
        Assert.Contains("bias", Assert.Throws<ArgumentException>(() => k.RmsNormQuantize(Stream, x.Span, x.Span.Slice(0, 8), weight.Span, 2, 16, 1e-5f, q)).Message);
        // What TakesRmsNorm adds to the quantize pass's checks: the norm's weight and bias aligned too.
        Assert.Contains("aligned", Assert.Throws<ArgumentException>(() => k.RmsNormQuantize(Stream, x.Span, null, weight.Span.Slice(1, 16), 2, 16, 1e-5f, q)).Message);
        Assert.Contains("aligned", Assert.Throws<ArgumentException>(() => k.RmsNormQuantize(Stream, x.Span, weight.Span.Slice(2, 16), weight.Span, 2, 16, 1e-5f, q)).Message);
    }

    [Fact]
    public void QuantizeRows_RefusesShapesItCannotTake()
    {
        RequireFp8TensorCores();
        var k = new ActivationFp8Kernel(Library);
        using var x = new DeviceBuffer<Bf16>(128);
        using var codes = new DeviceBuffer<byte>(128);
        using var scales = new DeviceBuffer<float>(4);
        var q = new E4m3Rows(codes.Span, scales.Span);
        Assert.Contains("columns % 16", Assert.Throws<ArgumentException>(() => k.QuantizeRows(Stream, x.Span, 2, 24, q)).Message);
        Assert.Contains("scales", Assert.Throws<ArgumentException>(() => k.QuantizeRows(Stream, x.Span, 5, 16, q)).Message);
        Assert.Contains(" x ", Assert.Throws<ArgumentException>(() => k.QuantizeRows(Stream, x.Span, 3, 48, q)).Message);
    }

    /// <summary>
    /// cuBLASLt's fp8 GEMM with a scale per weight row and per token: y = Σ code·code in fp32 times both scales, against
    /// double sums over the same codes (those the quantize kernel wrote), with the residual add (fp32 y) and a bf16 y,
    /// at a Llama-like width and an odd one.
    /// </summary>
    [Theory]
    [InlineData(37, 4112, 1040)]
    [InlineData(300, 256, 200)]
    public void LinearE4m3_MatchesDoubleSumsOverTheCodes(int rows, int inDim, int outDim)
    {
        RequireW8A8Gpu();
        var r = new Random(rows + inDim);
        var wCodes = new byte[(long)outDim * inDim];
        for (int i = 0; i < wCodes.Length; i++)
        {
            byte c;
            do c = (byte)r.Next(256); while ((c & 0x7F) == 0x7F);
            wCodes[i] = c;
        }
        var wScales = Enumerable.Range(0, outDim).Select(_ => (float)(1e-3 + 1e-2 * r.NextDouble())).ToArray();
        var x = Enumerable.Range(0, rows * inDim).Select(_ => Bf16.FromSingle((float)(2 * r.NextDouble() - 1))).ToArray();
        var y0 = Enumerable.Range(0, rows * outDim).Select(_ => (float)(2 * r.NextDouble() - 1)).ToArray();
        using var blas = new Cublas(Stream);
        using var dW = new DeviceBuffer<byte>(wCodes);
        using var dWs = new DeviceBuffer<float>(wScales);
        using var dX = new DeviceBuffer<Bf16>(x);
        using var xCodes = new DeviceBuffer<byte>((long)rows * inDim);
        using var xScales = new DeviceBuffer<float>(rows);
        var xq = new E4m3Rows(xCodes.Span, xScales.Span);
        var w = new E4m3Rows(dW.Span, dWs.Span);
        new ActivationFp8Kernel(Library).QuantizeRows(Stream, dX.Span, rows, inDim, xq);
        using var y = new DeviceBuffer<float>(y0);
        using var yb = Gpu.PoisonedBf16((long)rows * outDim);
        Assert.True(blas.TryLinearE4m3(xq, rows, inDim, w, outDim, y.Span, accumulate: true), "cuBLASLt refused the fp32 W8A8 GEMM");
        Assert.True(blas.TryLinearE4m3(xq, rows, inDim, w, outDim, yb.Span), "cuBLASLt refused the bf16 W8A8 GEMM");
        Assert.Equal(2, blas.E4m3Gemms);
        var xc = xCodes.ToArray();
        var xs = xScales.ToArray();
        var got = y.ToArray();
        var gotBf16 = yb.ToArray();
        double worst = 0, worstBf16 = 0;
        for (int t = 0; t < rows; t++)
            for (int o = 0; o < outDim; o++)
            {
                double sum = 0, mag = 0;
                for (int i = 0; i < inDim; i++)
                {
                    double p = Value(xc[(long)t * inDim + i]) * Value(wCodes[(long)o * inDim + i]);
                    sum += p;
                    mag += Math.Abs(p);
                }
                double s = (double)xs[t] * wScales[o], want = sum * s;
                int k = t * outDim + o;
                worst = Math.Max(worst, Math.Abs(got[k] - (y0[k] + want)) / (mag * s + Math.Abs(y0[k])));
                // One bf16 rounding of the sum (2^-9, 2^-8 with room) on top of the fp32 path's error.
                worstBf16 = Math.Max(worstBf16, Math.Abs(gotBf16[k].ToSingle() - want) / (Math.Pow(2, -8) * Math.Abs(want) + SumTolerance * mag * s));
            }
        Gpu.Log($"W8A8 GEMM {rows}x{inDim} -> {outDim}: worst |error| / Σ|terms| {worst:E2} (fp32 y + residual); bf16 y at {worstBf16:F2} of its bound");
        Assert.True(worst <= SumTolerance, $"fp32: {worst:E2}");
        Assert.True(worstBf16 <= 1, $"bf16: {worstBf16:F2} of the bound");
    }

    // Hopper's fp8 MMAs sum in less than fp32's precision (about 14 mantissa bits) between cuBLAS's promotions to fp32:
    // 3.5-4.8e-5 of Σ|terms| at k = 4096-4112 (bench/gemm/fp8_rowwise_probe.cu, this test), 3.8e-4 at k = 256, where
    // cuBLAS picks a kernel that does not promote within the sum. bf16's GEMMs stay near 1e-6.
    const double SumTolerance = 1e-3;

    public static TheoryData<string> Fixtures => ["w8a8_channel_swiftkv_50_g2", "w8a8_tensor_base"];

    /// <summary>
    /// The W8A8 fixtures (per channel with SwiftKV 50% and AcrossKV 2; per tensor, plain Llama) loaded with KeepW8A8: a
    /// prefill of every position (24 rows, past the GEMV's 8, so every kept matrix takes the W8A8 route) against the
    /// PyTorch W8A8 reference; decode one token at a time keeps the e4m3 GEMV (bf16 activations) and matches the
    /// weight-only reference.
    /// Why not a tight bound against the W8A8 reference: a bf16 activation one ulp away from the reference's moves its
    /// e4m3 code across a rounding boundary with a chance of about 2^-4 (bf16's step over e4m3's), and such flips, as large as e4m3's
    /// own rounding error, happen between any two W8A8 computations that round their bf16 activations differently (the
    /// engine's bf16 [gate | up], attention output and norms; the reference's fp32). Measured: the engine sits 0.74-0.85
    /// of the W8A8 / weight-only gap from the W8A8 reference. What tells W8A8 apart is the direction: the engine's
    /// departure from the weight-only logits points the way the reference's does (Agreement), where a route that did
    /// not quantize activations would leave only bf16 noise, unrelated to it.
    /// Not the scale's rounding: the fixtures were regenerated to form 448 / amax with one division, as the engine does
    /// (the CPU backend then matches every row to 4.4e-7), and the engine stayed 4.81e-2 / 2.36e-2 from them (it was
    /// 4.44e-2 / 2.53e-2 against the two-rounding reference).
    /// </summary>
    [Theory]
    [MemberData(nameof(Fixtures))]
    public void KeepW8A8_Fp8Fixture_MatchesTheW8A8Reference(string name)
    {
        RequireW8A8Gpu();
        string dir = Fp8Checkpoints.FixturePath(name);
        var fixture = Fp8Checkpoints.ReadFixture(name);
        var w8a8 = Fp8Checkpoints.ReadW8A8Logits(name);
        bool swiftKv = LlamaConfig.Load(dir).SwiftKv;
        using var gpu = CudaBackend.Load(dir, swiftKv, Fp8Weights.KeepW8A8);
        Assert.True(gpu.UseW8A8 && gpu.E4m3WeightMatrices > 0);
        int n = fixture.Ids.Length, vocab = fixture.Logits.Length / n;
        using var c1 = gpu.CreateCache(n);
        var prefill = gpu.Forward(c1, fixture.Ids, LogitsSelection.AllTokens);
        Assert.True(gpu.W8A8Gemms > 0, "no GEMM took the W8A8 route");
        long gemms = gpu.W8A8Gemms;
        using var c2 = gpu.CreateCache(n);
        var decode = new float[prefill.Length];
        for (int p = 0; p < n; p++) gpu.Forward(c2, fixture.Ids.AsSpan(p, 1), LogitsSelection.LastToken).CopyTo(decode, p * vocab);
        Assert.Equal(gemms, gpu.W8A8Gemms);   // one-token steps stay on the GEMV
        double toW8A8 = 0, toW16 = 0, refGap = 0, decodeToW16 = 0, agreement = Agreement(prefill, w8a8, fixture.Logits);
        for (int p = 0; p < n; p++)
        {
            var row = prefill.AsSpan(p * vocab, vocab);
            toW8A8 = Math.Max(toW8A8, Gpu.RowError(w8a8.AsSpan(p * vocab, vocab), row));
            toW16 = Math.Max(toW16, Gpu.RowError(fixture.Logits.AsSpan(p * vocab, vocab), row));
            refGap = Math.Max(refGap, Gpu.RowError(fixture.Logits.AsSpan(p * vocab, vocab), w8a8.AsSpan(p * vocab, vocab)));
            decodeToW16 = Math.Max(decodeToW16, Gpu.RowError(fixture.Logits.AsSpan(p * vocab, vocab), decode.AsSpan(p * vocab, vocab)));
        }
        Gpu.Log($"{name} KeepW8A8 ({gpu.W8A8Gemms} W8A8 GEMMs): prefill of {n} worst row against the W8A8 reference {toW8A8:E2}, " +
                $"against the W8A16 reference {toW16:E2} (the references differ by {refGap:E2}), agreement with the reference's departure " +
                $"from W8A16 {agreement:F2}; decode against W8A16 {decodeToW16:E2}");
        // Within W8A8's own effect plus the weight-only rule for these fixtures (bf16 activations, 2.3e-2).
        Assert.True(toW8A8 <= refGap + 2.3e-2, $"prefill against the W8A8 reference: {toW8A8:E2} (gap {refGap:E2})");
        Assert.True(agreement >= 0.3, $"prefill's departure from the weight-only logits does not follow the W8A8 reference's: cosine {agreement:F2}");
        Assert.True(decodeToW16 <= 3e-2, $"decode: {decodeToW16:E2}");
    }

    /// <summary>
    /// The cosine between (a - baseline) and (b - baseline) over every logit: near 1 when a and b depart from the
    /// baseline the same way, near 0 when their departures are unrelated.
    /// </summary>
    static double Agreement(float[] a, float[] b, float[] baseline)
    {
        double ab = 0, aa = 0, bb = 0;
        for (int i = 0; i < baseline.Length; i++)
        {
            double da = a[i] - baseline[i], db = b[i] - baseline[i];
            ab += da * db;
            aa += da * da;
            bb += db * db;
        }
        return ab / Math.Sqrt(aa * bb);
    }

    /// <summary>
    /// A serving step under W8A8 on a SwiftKV model (AcrossKV 2, head_dim 64, per-channel e4m3): three prompts in one
    /// batched step (119 rows, past the GEMV). Each sequence's last-row logits follow a solo KeepW8A8 prefill of it
    /// (per-token scales: a row's numerics do not depend on its neighbours; both run SwiftKV's later layers on the kept
    /// last rows only, few enough for the GEMV): their departures from the CPU engine on the exact dequantized weights
    /// point the same way, and differ by no more than e4m3 code flips allow (the paged and contiguous attention round
    /// their bf16 outputs differently: KeepW8A8_Fp8Fixture_MatchesTheW8A8Reference says why that moves W8A8 logits).
    /// </summary>
    [Fact]
    public void KeepW8A8_ServingStep_MatchesSoloForwards()
    {
        RequireW8A8Gpu();
        var spec = new ModelSpec(Hidden: 512, Intermediate: 1024, Layers: 4, Heads: 8, KvHeads: 2, HeadDim: 64, Vocab: 300,
            SwiftKvLayers: 2, GroupSize: 2, Seed: 91, MaxPositions: 512);
        using var checkpoint = new E4m3WeightTests.PerChannelFp8Checkpoint(spec);
        using var gpu = CudaBackend.Load(checkpoint.Dir, true, Fp8Weights.KeepW8A8);
        using var cpu = new CpuBackend(LlamaCheckpointLoader.Load(checkpoint.Dir, true));
        var seqs = new[] { TestModels.RandomTokens(40, spec.Vocab, 11), TestModels.RandomTokens(70, spec.Vocab, 12), TestModels.RandomTokens(9, spec.Vocab, 13) };
        using var pool = gpu.CreatePagedKvCache(24, 16);
        var step = seqs.Select((t, i) => new BatchSequence(t.AsMemory(), 0, Enumerable.Range(i * 8, 8).ToArray(), true)).ToArray();
        var batched = gpu.ForwardBatch(pool, step);
        Assert.True(gpu.W8A8Gemms > 0, "no GEMM took the W8A8 route");
        double toSolo = 0, toCpu = 0;
        var solo = new float[batched.Length];
        var cpuRows = new float[batched.Length];
        for (int r = 0; r < seqs.Length; r++)
        {
            using var c = gpu.CreateCache(seqs[r].Length);
            var row = batched.AsSpan(r * spec.Vocab, spec.Vocab);
            gpu.Forward(c, seqs[r], LogitsSelection.LastToken).CopyTo(solo, r * spec.Vocab);
            using var cc = cpu.CreateCache(seqs[r].Length);
            cpu.Forward(cc, seqs[r], LogitsSelection.LastToken).CopyTo(cpuRows, r * spec.Vocab);
            toSolo = Math.Max(toSolo, Gpu.RowError(solo.AsSpan(r * spec.Vocab, spec.Vocab), row));
            toCpu = Math.Max(toCpu, Gpu.RowError(cpuRows.AsSpan(r * spec.Vocab, spec.Vocab), row));
        }
        double agreement = Agreement(batched, solo, cpuRows);
        Gpu.Log($"serving step under W8A8 ({gpu.W8A8Gemms} W8A8 GEMMs): last rows against solo forwards {toSolo:E2}, against the CPU (weight-only, fp32) " +
                $"{toCpu:E2}; agreement of their departures from the CPU {agreement:F2}");
        Assert.True(toSolo <= 5e-2, $"against solo forwards: {toSolo:E2}");   // measured 2.8e-2
        Assert.True(toCpu <= 8e-2, $"against the CPU: {toCpu:E2}");           // measured 4.7e-2
        Assert.True(agreement >= 0.3, $"batched and solo W8A8 depart from the CPU in unrelated ways: cosine {agreement:F2}");
    }

    /// <summary>
    /// A 300-token W8A8 prefill with the MLP in row chunks (at most 128 rows: three of 100) and SingleInputKV's [k; v] in 128-row chunks
    /// computes what the whole-step passes compute (the same codes per row; only cuBLAS's summation order may differ with
    /// the row count), in a [gate | up] workspace sized for a chunk; decode steps after it run, and toggling UseW8A8
    /// off gives the dequantize route's logits.
    /// </summary>
    [Fact]
    public void KeepW8A8_ChunkedMlpAndSwiftKv_MatchTheWholeStep()
    {
        RequireW8A8Gpu();
        var spec = new ModelSpec(Hidden: 512, Intermediate: 1024, Layers: 4, Heads: 8, KvHeads: 2, HeadDim: 64, Vocab: 300,
            SwiftKvLayers: 2, GroupSize: 2, Seed: 93, MaxPositions: 512);
        using var checkpoint = new E4m3WeightTests.PerChannelFp8Checkpoint(spec);
        using var whole = CudaBackend.Load(checkpoint.Dir, true, Fp8Weights.KeepW8A8);
        using var chunked = CudaBackend.Load(checkpoint.Dir, true, Fp8Weights.KeepW8A8);
        chunked.W8A8MlpChunkRows = 128;
        chunked.SwiftKvChunkBytes = 128L * 2 * spec.KvHeads * spec.HeadDim * sizeof(float);   // one leader's fp32 [k | v] for 128 rows
        var prompt = TestModels.RandomTokens(300, spec.Vocab, 21);
        using var c1 = whole.CreateCache(310);
        using var c2 = chunked.CreateCache(310);
        double worst = Gpu.RowError(whole.Forward(c1, prompt, LogitsSelection.AllTokens), chunked.Forward(c2, prompt, LogitsSelection.AllTokens));
        Assert.True(chunked.GateUpWorkspaceBytes < whole.GateUpWorkspaceBytes,
            $"chunked [gate | up] {chunked.GateUpWorkspaceBytes} B, whole {whole.GateUpWorkspaceBytes} B");
        foreach (int t in TestModels.RandomTokens(3, spec.Vocab, 22))
            worst = Math.Max(worst, Gpu.RowError(whole.Forward(c1, [t], LogitsSelection.LastToken), chunked.Forward(c2, [t], LogitsSelection.LastToken)));
        Gpu.Log($"W8A8 MLP in 128-row chunks against the whole step: worst row {worst:E2}; [gate | up] {chunked.GateUpWorkspaceBytes} B against {whole.GateUpWorkspaceBytes} B");
        Assert.True(worst <= 1e-2, $"{worst:E2}");

        // Off again: the dequantize route, as a Keep load computes it.
        using var kept = CudaBackend.Load(checkpoint.Dir, true, Fp8Weights.Keep);
        whole.UseW8A8 = false;
        using var c3 = whole.CreateCache(310);
        using var c4 = kept.CreateCache(310);
        Assert.Equal(kept.Forward(c4, prompt, LogitsSelection.LastToken), whole.Forward(c3, prompt, LogitsSelection.LastToken));
    }

    /// <summary>
    /// The fused RMSNorm + quantize pass (UseFusedNormQuantize, default) gives the very logits of the norm kernel followed
    /// by the quantize pass: a 300-token W8A8 prefill (its MLP in chunks of 100 rows), with and without attention biases
    /// (o_proj's bias is added into x by the MLP's fused norm); the same with every W8A8 GEMM refused (the fallbacks);
    /// then a serving step of two sequences.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void KeepW8A8_FusedNormQuantize_GivesTheUnfusedLogits(bool bias)
    {
        RequireW8A8Gpu();
        var spec = new ModelSpec(Hidden: 512, Intermediate: 1024, Layers: 4, Heads: 8, KvHeads: 2, HeadDim: 64, Vocab: 300,
            Bias: bias, SwiftKvLayers: 2, GroupSize: 2, Seed: 97, MaxPositions: 512);
        using var checkpoint = new E4m3WeightTests.PerChannelFp8Checkpoint(spec);
        using var gpu = CudaBackend.Load(checkpoint.Dir, true, Fp8Weights.KeepW8A8);
        gpu.W8A8MlpChunkRows = 128;
        var prompt = TestModels.RandomTokens(300, spec.Vocab, 31);

        float[] Prefill(bool fused, bool expectW8A8 = true)
        {
            gpu.UseFusedNormQuantize = fused;
            long before = gpu.FusedNormQuantizeLaunches, gemms = gpu.W8A8Gemms;
            using var c = gpu.CreateCache(310);
            var logits = gpu.Forward(c, prompt, LogitsSelection.AllTokens);
            Assert.True(!expectW8A8 || gpu.W8A8Gemms > gemms, "no W8A8 GEMM ran");
            // At least [q; k; v] (or q) and the MLP's three chunks per layer; none when off.
            long launches = gpu.FusedNormQuantizeLaunches - before;
            Gpu.Log($"W8A8 prefill of 300 rows, fused norm + quantize {(fused ? "on" : "off")}: {launches} fused passes, {gpu.W8A8Gemms - gemms} W8A8 GEMMs");
            Assert.True(fused ? launches >= spec.Layers * 4 : launches == 0, $"{launches} fused passes");
            return logits;
        }
        var fusedLogits = Prefill(true);
        var unfusedLogits = Prefill(false);
        Assert.Equal(unfusedLogits, fusedLogits);
        Assert.DoesNotContain(fusedLogits, float.IsNaN);

        // Every W8A8 GEMM refused, as cuBLASLt refuses a problem it has no algorithm for: after the fused pass (o_proj's
        // bias already added into x) the fallback norms must not add the bias again, so both settings give the same
        // dequantize-route logits, close to a Keep load's (which also takes the fused bf16 epilogue GEMMs).
        gpu.RefuseW8A8GemmsForTests = true;
        long gemmsBefore = gpu.W8A8Gemms;
        var refusedFused = Prefill(fused: true, expectW8A8: false);
        var refusedUnfused = Prefill(fused: false, expectW8A8: false);
        Assert.Equal(gemmsBefore, gpu.W8A8Gemms);
        Assert.Equal(refusedUnfused, refusedFused);
        using (var kept = CudaBackend.Load(checkpoint.Dir, true, Fp8Weights.Keep))
        using (var ck = kept.CreateCache(310))
        {
            double toKeep = Gpu.RowError(kept.Forward(ck, prompt, LogitsSelection.AllTokens), refusedFused);
            Gpu.Log($"every W8A8 GEMM refused: the fallbacks' logits against a Keep load's {toKeep:E2}");
            Assert.True(toKeep <= 1e-2, $"{toKeep:E2}");
        }
        gpu.RefuseW8A8GemmsForTests = false;

        if (!gpu.SupportsBatchedStep) return;
        float[] Step(bool fused)
        {
            gpu.UseFusedNormQuantize = fused;
            long before = gpu.FusedNormQuantizeLaunches;
            using var pool = gpu.CreatePagedKvCache(16, 16);
            var logits = gpu.ForwardBatch(pool, [new BatchSequence(prompt.AsMemory(0, 40), 0, Enumerable.Range(0, 8).ToArray(), true),
                new BatchSequence(prompt.AsMemory(100, 30), 0, Enumerable.Range(8, 8).ToArray(), true)]);
            Assert.True(fused == gpu.FusedNormQuantizeLaunches > before, $"serving step, fused {fused}: {gpu.FusedNormQuantizeLaunches - before} fused passes");
            return logits;
        }
        Assert.Equal(Step(false), Step(true));
    }

    /// <summary>UseW8A8 is refused with the reason where it cannot run; a bf16 model holds no e4m3 matrices.</summary>
    [Fact]
    public void UseW8A8_OnBf16Weights_IsRefusedWithTheReason()
    {
        Gpu.Require();
        using var gpu = CudaBackend.Load(Fp8Checkpoints.FixturePath("fp8_tensor_base"), false, Fp8Weights.Dequantize);
        Assert.False(gpu.W8A8Available);
        Assert.Contains("held as e4m3", Assert.Throws<InvalidOperationException>(() => gpu.UseW8A8 = true).Message);
    }
}
