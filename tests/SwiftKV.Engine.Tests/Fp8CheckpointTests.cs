// FP8 checkpoints (compressed-tensors, fbgemm_fp8, transformers' block-wise fp8, AutoFP8) load dequantized and compute the
// model the reference computes: logits of three PyTorch-made fixtures (tests/reference/make_fp8_fixtures.py, with
// transformers / swiftkv_reference.py on torch's own dequantization), torch's decoding of every fp8 code, and the
// errors a broken FP8 file gets.
using System.Text.Json.Nodes;
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Cuda;
using SwiftKV.Engine.Serving;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Engine.Tests;

public sealed class Fp8CheckpointTests
{
    static readonly string FixtureDir = Fp8Checkpoints.FixtureDir;

    public static TheoryData<string> Cases()
    {
        var data = new TheoryData<string>();
        if (!Directory.Exists(FixtureDir)) return data;
        foreach (var f in Directory.GetFiles(FixtureDir, "*.json").Order()) data.Add(Path.GetFileNameWithoutExtension(f));
        return data;
    }

    [Fact]
    public void Fixtures_ArePresent()
    {
        var names = Cases().Select(c => c.Data).ToList();
        Assert.Equal(["fp8_block_base", "fp8_channel_swiftkv_50_g2", "fp8_tensor_base", "w8a8_channel_swiftkv_50_g2", "w8a8_tensor_base"], names);
        Assert.True(File.Exists(Path.Combine(FixtureDir, "fp8_codes.f32")));
    }

    [Fact]
    public void Float8_DecodesEveryCode_AsTorchDoes()
    {
        float[] torch = FixtureFiles.ReadFloats(Path.Combine(FixtureDir, "fp8_codes.f32"));
        Assert.Equal(512, torch.Length);
        for (int code = 0; code < 256; code++)
        {
            foreach (var (dtype, at) in new[] { (TensorDtype.F8E4M3, 0), (TensorDtype.F8E5M2, 256) })
            {
                float expected = torch[at + code], actual = Float8.ToSingle((byte)code, dtype);
                if (float.IsNaN(expected)) Assert.True(float.IsNaN(actual), $"{dtype} code {code}: {actual}, torch NaN");
                else Assert.True(expected.Equals(actual), $"{dtype} code {code}: {actual}, torch {expected}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void CpuLogits_MatchReference(string name) => AssertMatchesFixture(Path.Combine(FixtureDir, name), name);

    /// <summary>
    /// On the CPU backend an FP8 checkpoint computes with its weights dequantized to fp32; KeepW8A8 also quantizes the
    /// activations there (UseW8A8). The backend's reason says what applies when Keep or KeepW8A8 was asked.
    /// </summary>
    [Theory]
    [InlineData(Fp8Weights.KeepW8A8, "Fp8Weights.KeepW8A8 on the CPU backend: the e4m3 weights dequantized to fp32, and the inputs of their Linears quantized to e4m3 per token at every step")]
    [InlineData(Fp8Weights.Keep, "Fp8Weights.Keep applies to the CUDA backend only: the CPU backend dequantizes the e4m3 weights to fp32")]
    [InlineData(Fp8Weights.Auto, null)]
    [InlineData(Fp8Weights.Dequantize, null)]
    public void CpuBackend_SaysWhenAnFp8WeightsChoiceDoesNotApply(Fp8Weights mode, string? expected)
    {
        string dir = Path.Combine(FixtureDir, "fp8_tensor_base");
        var config = LlamaConfig.Load(dir);
        Assert.NotNull(config.Quantization);
        foreach (var kind in new[] { BackendKind.Cpu, BackendKind.Auto })
        {
            var (backend, reason) = LocalModel.OpenBackend(dir, config, kind, swiftKv: false, mode);
            (backend as IDisposable)?.Dispose();
            if (kind == BackendKind.Cpu) Assert.StartsWith("CPU requested", reason);
            else if (!reason.StartsWith("Auto: CPU (", StringComparison.Ordinal)) continue;   // Auto found a GPU and ran there
            Assert.Equal(mode == Fp8Weights.KeepW8A8, ((CpuBackend)backend).UseW8A8);
            if (expected is null) Assert.DoesNotContain("Fp8Weights", reason);
            else Assert.EndsWith(expected, reason);
        }
    }

    /// <summary>
    /// fp32 to e4m3 (Float8.ToE4m3) against the decode table torch made (fp8_codes.f32): every code's value encodes to
    /// itself, a midpoint between neighbours goes to the even code and a hair either side to the nearer one, values
    /// past 448 saturate (infinity too), NaN stays NaN.
    /// </summary>
    [Fact]
    public void Float8_EncodesToTheNearestE4m3_TiesToEven_Saturating()
    {
        float[] torch = FixtureFiles.ReadFloats(Path.Combine(FixtureDir, "fp8_codes.f32"));
        for (int code = 0; code < 256; code++)
            if (!float.IsNaN(torch[code])) Assert.Equal((byte)code, Float8.ToE4m3(torch[code]));
        for (int code = 0; code < 0x7E; code++)
        {
            float lo = torch[code], hi = torch[code + 1], mid = lo + (hi - lo) / 2;
            byte even = (byte)((code & 1) == 0 ? code : code + 1);
            Assert.Equal(even, Float8.ToE4m3(mid));
            Assert.Equal((byte)(even | 0x80), Float8.ToE4m3(-mid));
            Assert.Equal((byte)code, Float8.ToE4m3(MathF.BitDecrement(mid)));
            Assert.Equal((byte)(code + 1), Float8.ToE4m3(MathF.BitIncrement(mid)));
        }
        foreach (float big in new[] { 448.5f, 464f, 1e30f, float.PositiveInfinity })
        {
            Assert.Equal(0x7E, Float8.ToE4m3(big));
            Assert.Equal(0xFE, Float8.ToE4m3(-big));
        }
        Assert.Equal(0x7F, Float8.ToE4m3(float.NaN) & 0x7F);
        Assert.Equal(0x80, Float8.ToE4m3(-0f));
    }

    /// <summary>
    /// W8A8's CPU quantize (CpuKernels.QuantizeRowsE4m3) against a brute-force rule in double: each bf16-rounded value
    /// times 448 / amax goes to the nearest e4m3 value (ties to the even code), times amax / 448; a row of zeros and a
    /// row too small for 448 / amax keep scale 1 (zeros).
    /// </summary>
    [Fact]
    public void CpuQuantizeRows_MatchesTheNearestE4m3TimesTheRowScale()
    {
        const int Rows = 6, Dim = 40;
        var r = new Random(17);
        var x = new float[Rows * Dim];
        for (int i = 0; i < x.Length; i++) x[i] = (float)((2 * r.NextDouble() - 1) * Math.Pow(10, i / Dim - 2));
        Array.Clear(x, 2 * Dim, Dim);                                       // zeros
        for (int i = 0; i < Dim; i++) x[3 * Dim + i] = 1e-36f * (i + 1);   // below 1e-30: scale 1, so zero codes
        float[] got = SwiftKV.Engine.Cpu.CpuKernels.QuantizeRowsE4m3(x, Rows, Dim);
        var values = Float8.Values(TensorDtype.F8E4M3).ToArray();
        for (int row = 0; row < Rows; row++)
        {
            var b = x.AsSpan(row * Dim, Dim).ToArray().Select(v => Fp32Conversion.BFloat16BitsToSingle(Fp32Conversion.SingleToBFloat16Bits(v))).ToArray();
            float amax = b.Max(MathF.Abs);
            bool scaled = amax >= 1e-30f;
            float inv = scaled ? (float)(448.0 / amax) : 1f, scale = scaled ? amax / 448f : 1f;
            for (int i = 0; i < Dim; i++)
            {
                double v = b[i] * inv;   // the fp32 product, then the search in double
                int best = 0;
                for (int c = 1; c < 256; c++)
                {
                    if (float.IsNaN(values[c])) continue;
                    double d = Math.Abs(values[c] - v), e = Math.Abs(values[best] - v);
                    if (d < e || (d == e && (c & 1) == 0 && (best & 1) == 1)) best = c;
                }
                float want = values[best] * scale;
                Assert.True(want.Equals(got[row * Dim + i]) || (want == 0 && got[row * Dim + i] == 0),
                    $"row {row} element {i} (x = {x[row * Dim + i]:R}): {got[row * Dim + i]:R}, expected {want:R}");
            }
        }
        Assert.All(got.AsSpan(2 * Dim, 2 * Dim).ToArray(), v => Assert.Equal(0f, v));

        // A NaN element stays NaN and does not enter its row's amax (as CUDA's fmaxf): the rest of the row is as without it.
        var withNaN = (float[])x.Clone();
        withNaN[5] = float.NaN;
        float[] nan = SwiftKV.Engine.Cpu.CpuKernels.QuantizeRowsE4m3(withNaN, Rows, Dim);
        Assert.True(float.IsNaN(nan[5]));
        var rest = x.AsSpan(0, Dim).ToArray();
        rest[5] = 0f;   // the row's amax without the NaN element
        float[] without = SwiftKV.Engine.Cpu.CpuKernels.QuantizeRowsE4m3(rest, 1, Dim);
        for (int i = 0; i < Dim; i++) if (i != 5) Assert.Equal(without[i], nan[i]);
    }

    /// <summary>
    /// The CPU backend's W8A8 (UseW8A8: each fp8 Linear's input rows quantized per token) against the PyTorch W8A8
    /// reference (tests/reference/make_w8a8_fixtures.py), every prefill row. Both compute in fp32 by the same rule, so
    /// every row matches to fp32 summation noise (4.4e-7 measured), where W8A8 moves rows from the weight-only logits by
    /// 3e-2 to 5e-2. The bound is tight enough to see one e4m3 code flip: when the fixtures formed 448 / amax as
    /// (1 / amax) · 448 (an ulp away from the engine's one division for about a quarter of amax values; fixtures before
    /// 2026-11-29), rows moved by 1e-2 to 3e-2; leaving any projection's input unquantized moves them as much.
    /// </summary>
    [Theory]
    [InlineData("w8a8_channel_swiftkv_50_g2")]
    [InlineData("w8a8_tensor_base")]
    public void CpuW8A8_MatchesThePyTorchW8A8Reference(string name)
    {
        var fixture = Fp8Checkpoints.ReadFixture(name);
        var w8a8 = Fp8Checkpoints.ReadW8A8Logits(name);
        var weights = LlamaCheckpointLoader.Load(Path.Combine(FixtureDir, name));
        Assert.NotEmpty(weights.Float8Weights);
        Assert.DoesNotContain(weights.LmHead, weights.Float8Weights);   // lm_head stays bf16 in these checkpoints
        using var backend = new CpuBackend(weights) { UseW8A8 = true };
        int vocab = weights.Config.VocabSize, n = fixture.Ids.Length;
        using var cache = backend.CreateCache(n);
        var logits = backend.Forward(cache, fixture.Ids, LogitsSelection.AllTokens);
        double worst = 0, moved = 0;
        for (int p = 0; p < n; p++)
        {
            worst = Math.Max(worst, Approx.RowError(w8a8.AsSpan(p * vocab, vocab), logits.AsSpan(p * vocab, vocab)));
            moved = Math.Max(moved, Approx.RowError(fixture.Logits.AsSpan(p * vocab, vocab), logits.AsSpan(p * vocab, vocab)));
        }
        TestContext.Current.SendDiagnosticMessage($"{name}: CPU W8A8 against the PyTorch W8A8 reference, worst row {worst:E2}; {moved:E2} from weight-only");
        Assert.True(worst <= 1e-4, $"{name}: CPU W8A8 against the PyTorch W8A8 reference: worst row {worst:E2}");
        Assert.True(moved >= 1e-2, $"{name}: W8A8 moved the logits by only {moved:E2} from weight-only");
    }

    /// <summary>
    /// Every fp8 matrix's input is quantized: taking any one of them out of Float8Weights changes the logits (checked
    /// without a reference, so a projection the W8A8 route skipped cannot hide in a tolerance).
    /// </summary>
    [Fact]
    public void CpuW8A8_EveryFp8MatrixTakesPart()
    {
        const string name = "w8a8_channel_swiftkv_50_g2";
        var weights = LlamaCheckpointLoader.Load(Path.Combine(FixtureDir, name));
        var ids = Fp8Checkpoints.ReadFixture(name).Ids;
        float[] Logits(IReadOnlySet<float[]> float8)
        {
            using var backend = new CpuBackend(new LlamaWeights
            {
                Config = weights.Config, SwiftKvEnabled = weights.SwiftKvEnabled, EmbedTokens = weights.EmbedTokens, Layers = weights.Layers,
                Norm = weights.Norm, NormSwiftKv = weights.NormSwiftKv, LmHead = weights.LmHead, Float8Weights = float8,
            }) { UseW8A8 = true };
            using var cache = backend.CreateCache(ids.Length);
            return backend.Forward(cache, ids, LogitsSelection.AllTokens);
        }
        var all = Logits(weights.Float8Weights);
        int n = 0;
        foreach (var w in weights.Float8Weights)
        {
            var fewer = new HashSet<float[]>(weights.Float8Weights, ReferenceEqualityComparer.Instance);
            fewer.Remove(w);
            if (fewer.Count == 0) continue;
            Assert.NotEqual(all, Logits(fewer));
            n++;
        }
        Assert.True(n >= 20, $"{n} fp8 matrices");   // 4 layers: q, k, v or their SwiftKV forms, o, gate, up, down
    }

    /// <summary>
    /// W8A8 on the CPU's serving step: each row is quantized on its own, so a batched step's last rows equal solo
    /// forwards of the same sequences bit for bit (as the CPU's weight-only rows do), and differ from weight-only ones.
    /// </summary>
    [Fact]
    public void CpuW8A8_BatchedStep_EqualsSoloForwards()
    {
        const string name = "w8a8_channel_swiftkv_50_g2";
        var weights = LlamaCheckpointLoader.Load(Path.Combine(FixtureDir, name));
        using var backend = new CpuBackend(weights) { UseW8A8 = true };
        int vocab = weights.Config.VocabSize;
        var ids = Fp8Checkpoints.ReadFixture(name).Ids;
        int[] a = ids[..10], b = ids[4..20];
        using var pool = backend.CreatePagedKvCache(16, 4);
        var batched = backend.ForwardBatch(pool, [new BatchSequence(a, 0, new[] { 0, 1, 2 }, true), new BatchSequence(b, 0, new[] { 3, 4, 5, 6 }, true)]);
        float[] Solo(int[] tokens, bool w8a8)
        {
            backend.UseW8A8 = w8a8;
            using var c = backend.CreateCache(tokens.Length);
            return backend.Forward(c, tokens, LogitsSelection.LastToken);
        }
        Assert.Equal(Solo(a, true), batched.AsSpan(0, vocab).ToArray());
        Assert.Equal(Solo(b, true), batched.AsSpan(vocab, vocab).ToArray());
        Assert.NotEqual(Solo(b, false), batched.AsSpan(vocab, vocab).ToArray());
    }

    [Fact]
    public void CpuW8A8_OnABf16Model_IsRefused()
    {
        var weights = TestModels.Build(new ModelSpec(Seed: 3), swiftKvEnabled: false);
        Assert.Empty(weights.Float8Weights);
        using var backend = new CpuBackend(weights);
        Assert.Contains("holds none", Assert.Throws<InvalidOperationException>(() => backend.UseW8A8 = true).Message);
    }

    /// <summary>A bf16 checkpoint has no e4m3 weights to keep: no note, whatever Fp8Weights asks.</summary>
    [Theory]
    [InlineData(Fp8Weights.Keep)]
    [InlineData(Fp8Weights.KeepW8A8)]
    public void CpuBackend_Bf16Checkpoint_NoFp8Note(Fp8Weights mode)
    {
        var spec = new ModelSpec(Seed: 5);
        string dir = Path.Combine(Path.GetTempPath(), "swiftkv-bf16-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            LlamaCheckpointWriter.Save(dir, TestModels.View(TestModels.Checkpoint(spec), true));
            var config = LlamaConfig.Load(dir);
            Assert.Null(config.Quantization);
            var (backend, reason) = LocalModel.OpenBackend(dir, config, BackendKind.Cpu, swiftKv: false, mode);
            (backend as IDisposable)?.Dispose();
            Assert.Equal("CPU requested", reason);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void FbgemmFp8_PerChannelScales_ReadAsCompressedTensors()
    {
        // Meta's FP8 uploads: the same '<m>.weight_scale' [out, 1] beside each F8_E4M3 weight, another quant_method.
        string dir = CopyFixture("fp8_channel_swiftkv_50_g2");
        try
        {
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
            config["quantization_config"] = new JsonObject { ["quant_method"] = "fbgemm_fp8", ["modules_to_not_convert"] = new JsonArray("lm_head") };
            File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
            AssertMatchesFixture(dir, "fp8_channel_swiftkv_50_g2");
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData("compressed-tensors", 3, 5)]
    [InlineData("fp8", 7, 4)]
    public void PartialBlocks_DequantizeAsCodeTimesTheirBlocksScale(string method, int b0, int b1)
    {
        // Matrices of 48 and 80 rows and columns in 3 x 5 or 7 x 4 blocks: 48 = 9 x 5 + 3 and 48 = 6 x 7 + 6, so blocks at the
        // right or bottom edge are partial.
        var spec = new ModelSpec(Seed: 71);
        string dir = NewDir();
        try
        {
            LlamaCheckpointWriter.Save(dir, TestModels.View(TestModels.Checkpoint(spec), false));
            var exact = Fp8Checkpoints.Quantize(dir, "block", (b0, b1), method);
            var config = LlamaConfig.Load(dir);
            Assert.Equal((b0, b1), config.Quantization!.BlockSize);
            using var checkpoint = SafetensorsCheckpoint.Open(dir);
            foreach (var (name, values) in exact)
            {
                // Whole matrix, and odd runs that start and end inside rows and blocks.
                Assert.Equal(values, LlamaCheckpointLoader.ReadFloat32(config, checkpoint, name));
                checkpoint.TryGet(name, out var info, out var file);
                var t = ScaledFp8Tensor.Open(config.Quantization, checkpoint, info, file);
                var pieces = new float[values.Length];
                for (int at = 0, n = 1; at < values.Length; at += n, n = n * 3 % 997 + 1)
                    t.Dequantize(at, pieces.AsSpan(at, Math.Min(n, values.Length - at)));
                Assert.Equal(values, pieces);
            }
            // And the model runs: the loaded weights are the exact dequantized values.
            using var backend = new CpuBackend(LlamaCheckpointLoader.Load(dir));
            using var cache = backend.CreateCache(8);
            Assert.All(backend.Forward(cache, TestModels.RandomTokens(5, spec.Vocab, 3), LogitsSelection.LastToken), v => Assert.True(float.IsFinite(v)));
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>
    /// What the GPU keeps of an fp8 matrix: one scale per row when a scale spans each whole row (per matrix or per
    /// channel), so code · row scale is the loader's value for every element; none for block-wise scales.
    /// </summary>
    [Theory]
    [InlineData("fp8_tensor_base", true)]
    [InlineData("fp8_channel_swiftkv_50_g2", true)]
    [InlineData("fp8_block_base", false)]
    public void RowScales_GiveEveryElementItsValue_OrAreNullForBlocks(string name, bool perRow)
    {
        string dir = Path.Combine(FixtureDir, name);
        var config = LlamaConfig.Load(dir);
        using var checkpoint = SafetensorsCheckpoint.Open(dir);
        int matrices = 0;
        foreach (var tensorName in checkpoint.TensorNames)
        {
            checkpoint.TryGet(tensorName, out var info, out var file);
            if (info.Dtype != TensorDtype.F8E4M3) continue;
            var t = ScaledFp8Tensor.Open(config.Quantization, checkpoint, info, file);
            var rows = t.RowScales();
            matrices++;
            if (!perRow)
            {
                Assert.Null(rows);
                continue;
            }
            Assert.NotNull(rows);
            Assert.Equal(t.Rows, rows!.Length);
            float[] values = t.ReadFloat32();
            var codes = file.GetBytes(info, 0, checked((int)info.ElementCount));
            for (int i = 0; i < values.Length; i++)
                Assert.Equal(values[i], Float8.ToSingle(codes[i], TensorDtype.F8E4M3) * rows[i / t.Columns]);
        }
        Assert.True(matrices > 0);
    }

    [Theory]
    [InlineData(Fp8Weights.Keep, 16, 8, 80, true)]
    [InlineData(Fp8Weights.Dequantize, 160, 80, 80, false)]
    [InlineData(Fp8Weights.Auto, 16, 8, 80, false)]   // fits beside the reserve: prefill keeps its bf16 speed
    [InlineData(Fp8Weights.Auto, 79, 40, 80, true)]   // 70B's 141 GB on an 80 GB card: only e4m3 fits
    [InlineData(Fp8Weights.Auto, 79, 0, 80, false)]   // nothing is e4m3
    [InlineData(Fp8Weights.Keep, 16, 0, 80, false)]
    [InlineData(Fp8Weights.KeepW8A8, 16, 8, 80, true)]   // W8A8 computes from the codes: kept wherever bf16 fits too
    [InlineData(Fp8Weights.KeepW8A8, 16, 0, 80, false)]
    public void Fp8WeightChoice_KeepsWhenAskedOrWhenOnlyE4m3Fits(Fp8Weights mode, long bf16Gb, long savedGb, long freeGb, bool keep) =>
        Assert.Equal(keep, Fp8WeightChoice.Keep(mode, bf16Gb << 30, savedGb << 30, freeGb << 30));

    [Fact]
    public void Converter_TurnsAnFp8LlamaIntoAnUnquantizedSwiftKvCheckpoint()
    {
        string output = NewDir();
        try
        {
            var target = SwiftKvConverter.Convert(Path.Combine(FixtureDir, "fp8_tensor_base"), output, numKeyValueLayers: 2, cancellationToken: TestContext.Current.CancellationToken);
            Assert.Null(target.Quantization);
            Assert.DoesNotContain("quantization_config", File.ReadAllText(Path.Combine(output, "config.json")));
            // SwiftKV off, the converted model is the original: the reference's logits, up to the bf16 storage of the
            // dequantized weights (fp8 x bf16 scale has up to 11 significant bits).
            var fixture = Fp8Checkpoints.ReadFixture("fp8_tensor_base");
            using var backend = new CpuBackend(LlamaCheckpointLoader.Load(output, swiftKv: false));
            using var cache = backend.CreateCache(fixture.Ids.Length);
            float[] actual = backend.Forward(cache, fixture.Ids, LogitsSelection.AllTokens);
            Approx.RowRelative(fixture.Logits, actual, 2e-2, "converted fp8_tensor_base");
        }
        finally { Directory.Delete(output, true); }
    }

    public static TheoryData<string, string> BrokenFiles => new()
    {
        { "no-quantization-config", "no quantization_config" },
        { "scale-missing", "is missing (compressed-tensors)" },
        { "scale-shape", "fits no compressed-tensors layout" },
        { "scale-int", "only F32, F16 and BF16 are supported" },
        { "norm-fp8", "only 2-D weight matrices can be fp8" },
    };

    [Theory]
    [MemberData(nameof(BrokenFiles))]
    public void BrokenFp8Files_AreRefusedBeforeLoading_NamingTheTensor(string fault, string expected)
    {
        string dir = CopyFixture("fp8_channel_swiftkv_50_g2");
        try
        {
            const string Scale = "model.layers.1.mlp.down_proj.weight_scale";
            const string Norm = "model.layers.1.input_layernorm.weight";
            var raw = Fp8Checkpoints.ReadRaw(dir);
            switch (fault)
            {
                case "no-quantization-config":
                    var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
                    config.Remove("quantization_config");
                    File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
                    break;
                case "scale-missing":
                    raw.RemoveAll(t => t.Name == Scale);
                    break;
                case "scale-shape":
                    raw = raw.Select(t => t.Name == Scale ? t with { Shape = [1, 64] } : t).ToList();
                    break;
                case "scale-int":
                    raw = raw.Select(t => t.Name == Scale ? t with { Dtype = "I16" } : t).ToList();
                    break;
                case "norm-fp8":
                    raw = raw.Select(t => t.Name == Norm ? t with { Dtype = "F8_E4M3", Data = t.Data[..64] } : t).ToList();
                    break;
            }
            Fp8Checkpoints.WriteSafetensors(Path.Combine(dir, "model.safetensors"), raw);
            var e = Assert.Throws<InvalidModelException>(() => LlamaCheckpointLoader.Verify(dir));
            Assert.Contains(expected, e.Message);
            Assert.Contains(fault == "norm-fp8" ? Norm : fault == "no-quantization-config" ? "model.layers.0." : "down_proj", e.Message);
            Assert.Throws<InvalidModelException>(() => LlamaCheckpointLoader.Load(dir));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void NonFiniteScale_IsRefusedOnRead()
    {
        string dir = CopyFixture("fp8_tensor_base");
        try
        {
            const string Scale = "model.layers.2.self_attn.o_proj.weight_scale";
            var raw = Fp8Checkpoints.ReadRaw(dir).Select(t => t.Name == Scale ? t with { Data = [0x80, 0x7F] } : t).ToList();  // bf16 +inf
            Fp8Checkpoints.WriteSafetensors(Path.Combine(dir, "model.safetensors"), raw);
            var e = Assert.Throws<InvalidModelException>(() => LlamaCheckpointLoader.Load(dir));
            Assert.Contains($"'{Scale}' holds", e.Message);
            Assert.Contains("finite", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData("""{"quant_method": "awq", "bits": 4}""", "quant_method 'awq' is not supported")]
    [InlineData("""{"quant_method": "compressed-tensors", "format": "pack-quantized"}""", "format 'pack-quantized' is not supported")]
    [InlineData("""{"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g": {"weights": {"num_bits": 4, "type": "int", "strategy": "group"}}}}""", "4-bit int weights are not supported")]
    [InlineData("""{"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float", "strategy": "group"}}}}""", "strategy 'group' is not supported")]
    [InlineData("""{"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float", "strategy": "block"}}}}""", "needs block_structure")]
    [InlineData("""{"quant_method": "fp8", "weight_block_size": [128, 0]}""", "weight_block_size must be [rows, columns] of positive integers")]
    [InlineData("""{"bits": 8}""", "missing string 'quant_method'")]
    [InlineData("""[1]""", "quantization_config must be an object or null")]
    public void UnsupportedQuantizationConfigs_AreRefusedByName(string quantization, string expected)
    {
        string json = $$"""{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256, "quantization_config": {{quantization}}}""";
        var e = Assert.Throws<InvalidModelException>(() => LlamaConfig.Parse(json));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Fp8WithoutBlockSize_ReadsAutoFp8PerMatrixScales()
    {
        // AutoFP8 / vLLM "fp8" files (neuralmagic's early *-FP8 uploads): no weight_block_size, '<m>.weight_scale' per matrix.
        string dir = CopyFixture("fp8_tensor_base");
        try
        {
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
            config["quantization_config"] = new JsonObject { ["quant_method"] = "fp8", ["activation_scheme"] = "static", ["ignored_layers"] = new JsonArray("lm_head") };
            File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
            Assert.Null(LlamaConfig.Load(dir).Quantization!.BlockSize);
            AssertMatchesFixture(dir, "fp8_tensor_base");
        }
        finally { Directory.Delete(dir, true); }
    }

    static void AssertMatchesFixture(string dir, string name)
    {
        var fixture = Fp8Checkpoints.ReadFixture(name);
        var config = LlamaConfig.Load(dir);
        Assert.NotNull(config.Quantization);
        using var backend = new CpuBackend(LlamaCheckpointLoader.Load(dir));
        ParityTests.AssertMatches(backend, fixture.Ids, fixture.Logits, fixture.Greedy, config.VocabSize, name);
    }

    static string CopyFixture(string name)
    {
        string dir = NewDir();
        foreach (var f in Directory.GetFiles(Path.Combine(FixtureDir, name))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        return dir;
    }

    static string NewDir()
    {
        string dir = Path.Combine(Path.GetTempPath(), "swiftkv-fp8-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        return dir;
    }
}
