// The fast paths of the CUDA backend against its plain paths: the direct checkpoint loader (safetensors -> pinned
// staging -> GPU) against the LlamaWeights upload, graph-replayed decode against kernel-by-kernel decode, GPU
// token choice (argmax, top-k/top-p sampling) against host references, GPU random weights, and device memory
// after disposal. Toy shapes; skipped without a GPU.
using SwiftKV.Cuda;
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine;
using SwiftKV.Engine.Cuda;
using SwiftKV.Engine.Sampling;
using SwiftKV.Engine.Tests;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class DecodePathTests : GpuFixtureTest
{
    public static TheoryData<string, ModelSpec, bool, string> LoadCases => new()
    {
        { "base-bf16-sharded", new ModelSpec(Seed: 51), false, "BF16" },
        { "bias-tied-fp32", new ModelSpec(Heads: 4, KvHeads: 4, Bias: true, Tied: true, Seed: 52), false, "F32" },
        { "acrosskv-g2-fp16", new ModelSpec(Layers: 6, SwiftKvLayers: 2, GroupSize: 2, Bias: true, Seed: 53), true, "F16" },
    };

    [Theory]
    [MemberData(nameof(LoadCases))]
    public void Load_GivesTheSameLogitsAsLlamaWeightsPath(string name, ModelSpec spec, bool swiftKv, string dtype)
    {
        Gpu.Require();
        string dir = Path.Combine(Path.GetTempPath(), "swiftkv-load-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            var weights = TestModels.View(TestModels.Checkpoint(spec), swiftKv);
            LlamaCheckpointWriter.Save(dir, weights, Enum.Parse<TensorDtype>(dtype), maxShardBytes: 40_000);
            using var direct = CudaBackend.Load(dir, swiftKv);
            using var viaHost = new CudaBackend(LlamaCheckpointLoader.Load(dir, swiftKv));
            Assert.Equal(viaHost.WeightBytes, direct.WeightBytes);
            Assert.True(direct.LoadedBytes > 0);
            var prompt = TestModels.RandomTokens(9, spec.Vocab, spec.Seed);
            using var c1 = direct.CreateCache(16);
            using var c2 = viaHost.CreateCache(16);
            var a = direct.Forward(c1, prompt, LogitsSelection.AllTokens);
            var b = viaHost.Forward(c2, prompt, LogitsSelection.AllTokens);
            // Both round the same stored values to bf16 the same way: bit-identical weights, identical logits.
            Assert.Equal(b, a);
            Gpu.Log($"{name}: direct load of {direct.LoadedBytes} bytes equals the LlamaWeights path");
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    public static TheoryData<string> Fp8Fixtures => ["fp8_channel_swiftkv_50_g2", "fp8_tensor_base", "fp8_block_base"];

    [Theory]
    [MemberData(nameof(Fp8Fixtures))]
    public void Load_Fp8Checkpoint_MatchesTheReferenceAndTheHostUpload(string name)
    {
        Gpu.Require();
        string dir = Fp8Checkpoints.FixturePath(name);
        var fixture = Fp8Checkpoints.ReadFixture(name);
        bool swiftKv = LlamaConfig.Load(dir).SwiftKv;
        using var direct = CudaBackend.Load(dir, swiftKv);
        using var viaHost = new CudaBackend(LlamaCheckpointLoader.Load(dir, swiftKv));
        using var c1 = direct.CreateCache(fixture.Ids.Length);
        using var c2 = viaHost.CreateCache(fixture.Ids.Length);
        var a = direct.Forward(c1, fixture.Ids, LogitsSelection.AllTokens);
        var b = viaHost.Forward(c2, fixture.Ids, LogitsSelection.AllTokens);
        // The staging pieces dequantize to the same fp32 values the CPU loader makes, then round them to bf16 alike.
        Assert.Equal(b, a);
        // End to end in bf16 against the fp32 reference: CudaBackendTests' 3e-2 rule for fp32 weights. These fixtures'
        // weights (std 0.15, as the parity fixtures') make their logits sensitive: 1.8-2.3e-2 on an H200, and 1.7-2.1e-2
        // even against the CPU on the same weights rounded to bf16, so the bf16 rounding of activations, not the fp8
        // path, sets the figure. The fp8 path itself is checked above, bit for bit.
        int vocab = fixture.Logits.Length / fixture.Ids.Length;
        double worstReference = 0;
        for (int p = 0; p < fixture.Ids.Length; p++)
            worstReference = Math.Max(worstReference, Gpu.RowError(fixture.Logits.AsSpan(p * vocab, vocab), a.AsSpan(p * vocab, vocab)));
        Gpu.Log($"{name}: fp8 checkpoint on the GPU, worst row's relative error against the PyTorch reference {worstReference:E2}");
        Assert.True(worstReference <= 3e-2, $"{name}: relative error against the PyTorch reference {worstReference:E2} > 3e-2");
    }

    [Theory]
    [InlineData("compressed-tensors", "channel", 0, 0)]
    [InlineData("fp8", "block", 128, 96)]
    [InlineData("none", "bf16", 0, 0)]
    public void Load_ThroughSmallStagingSlots_EqualsTheHostUpload(string method, string scheme, int b0, int b1)
    {
        Gpu.Require();
        // Slots of 40000 bytes in pieces of 7000: every matrix spans several slots, whose runs start inside rows (512
        // columns) and inside blocks (96 columns), and the device buffers of codes and scales are reused in stream order.
        var spec = new ModelSpec(Hidden: 512, Intermediate: 2304, Layers: 2, Heads: 8, KvHeads: 2, HeadDim: 64, Vocab: 300, Seed: 81);
        string dir = Path.Combine(Path.GetTempPath(), "swiftkv-fp8-gpu-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            LlamaCheckpointWriter.Save(dir, TestModels.View(TestModels.Checkpoint(spec), false));
            if (method != "none") Fp8Checkpoints.Quantize(dir, scheme, (b0, b1), method);
            using var direct = CudaBackend.Load(dir, false, stagingSlotBytes: 40_000, stagingPieceBytes: 7_000);
            using var viaHost = new CudaBackend(LlamaCheckpointLoader.Load(dir, false));
            var prompt = TestModels.RandomTokens(7, spec.Vocab, spec.Seed);
            using var c1 = direct.CreateCache(8);
            using var c2 = viaHost.CreateCache(8);
            Assert.Equal(viaHost.Forward(c2, prompt, LogitsSelection.AllTokens), direct.Forward(c1, prompt, LogitsSelection.AllTokens));
            Gpu.Log($"{method} {scheme}: {direct.LoadedBytes} checkpoint bytes loaded through 40000-byte slots equal the host upload");
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void Load_RejectsSwiftKvOnAPlainCheckpoint()
    {
        Gpu.Require();
        string dir = Path.Combine(Path.GetTempPath(), "swiftkv-load-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            var spec = new ModelSpec(Seed: 54);
            var weights = TestModels.View(TestModels.Checkpoint(spec), false);
            LlamaCheckpointWriter.Save(dir, weights);
            // A SwiftKV run of a plain Llama checkpoint: config has no SwiftKV fields.
            var e = Assert.Throws<InvalidModelException>(() => CudaBackend.Load(dir, swiftKvEnabled: true));
            Assert.Contains("SwiftKV", e.Message);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    public static TheoryData<string, ModelSpec, bool> GraphCases => new()
    {
        { "base", new ModelSpec(Seed: 61), false },
        { "swiftkv-50%", new ModelSpec(SwiftKvLayers: 2, RopeScaling: true, Seed: 62), true },
        { "acrosskv-g4-bias", new ModelSpec(Layers: 6, SwiftKvLayers: 2, GroupSize: 4, Bias: true, Seed: 63), true },
    };

    [Theory]
    [MemberData(nameof(GraphCases))]
    public void Decode_GraphReplayEqualsDirectLaunches(string name, ModelSpec spec, bool swiftKv)
    {
        Gpu.Require();
        using var gpu = new CudaBackend(TestModels.Build(spec, swiftKv));
        var prompt = TestModels.RandomTokens(7, spec.Vocab, spec.Seed);
        var decode = TestModels.RandomTokens(6, spec.Vocab, spec.Seed + 1);
        using var graphed = gpu.CreateCache(32);
        using var direct = gpu.CreateCache(32);
        gpu.Forward(graphed, prompt, LogitsSelection.LastToken);
        gpu.Forward(direct, prompt, LogitsSelection.LastToken);
        foreach (var t in decode)
        {
            gpu.UseGraphs = true;
            var a = gpu.Forward(graphed, [t], LogitsSelection.LastToken);
            gpu.UseGraphs = false;
            var b = gpu.Forward(direct, [t], LogitsSelection.LastToken);
            Assert.DoesNotContain(a, float.IsNaN);
            Assert.Equal(b, a);
        }
        // A prefill between decode steps moves the workspace: the graph must be recaptured, not replayed stale.
        gpu.UseGraphs = true;
        using var big = gpu.CreateCache(200);
        gpu.Forward(big, TestModels.RandomTokens(150, spec.Vocab, 3), LogitsSelection.AllTokens);
        var a2 = gpu.Forward(graphed, [5], LogitsSelection.LastToken);
        gpu.UseGraphs = false;
        var b2 = gpu.Forward(direct, [5], LogitsSelection.LastToken);
        Assert.Equal(b2, a2);
        Assert.Equal(prompt.Length + decode.Length + 1, graphed.Length);
        Gpu.Log($"{name}: {decode.Length + 1} graph-replayed decode steps equal direct launches");
    }

    /// <summary>
    /// A single-token capture that fails (another thread's cuBLAS set-up, a driver that cannot capture a launch) does not
    /// fail the request: the step already ran, so its token stands; the next steps launch kernel by kernel, and after
    /// DecodeGraphRetryAfter of them the capture is tried again (and here succeeds).
    /// </summary>
    [Fact]
    public void Decode_CaptureFails_TheRequestGetsItsTokens_LaterStepsRunDirect()
    {
        Gpu.Require();
        var spec = new ModelSpec(SwiftKvLayers: 2, RopeScaling: true, Seed: 62);
        using var gpu = new CudaBackend(TestModels.Build(spec, true));
        using var direct = new CudaBackend(TestModels.Build(spec, true)) { UseGraphs = false };
        var prompt = TestModels.RandomTokens(7, spec.Vocab, spec.Seed);
        using var a = gpu.CreateCache(32);
        using var b = direct.CreateCache(32);
        gpu.Forward(a, prompt, LogitsSelection.LastToken);
        direct.Forward(b, prompt, LogitsSelection.LastToken);
        gpu.FailNextDecodeCaptureForTests = true;
        gpu.DecodeGraphRetryAfter = 3;
        int ta = prompt[^1], tb = prompt[^1];
        string? failure = null;
        for (int i = 0; i < 8; i++)
        {
            ta = gpu.NextToken(a, [ta], new GpuSampling());
            tb = direct.NextToken(b, [tb], new GpuSampling());
            Assert.Equal(tb, ta);
            if (i == 0) failure = gpu.DecodeGraphFailure;
        }
        Assert.Contains("injected by a test", failure);
        Assert.Null(gpu.DecodeGraphFailure);   // tried again after 3 direct steps, and captured
        Assert.NotNull(((SwiftKV.Engine.Cuda.CudaSequenceCache)a).DecodeGraph);
        Assert.Equal(prompt.Length + 8, a.Length);
        Gpu.Log($"after a failed capture ({failure}): 8 tokens equal the direct backend's, the capture retried and replayed");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Decode_FusedSingleGraph_EqualsDirect_AndMatchesPreviousPath(bool swiftKv)
    {
        Gpu.Require();
        // head_dim 64 takes the flash kernel; 300 cached tokens in a 400-slot cache give 7 splits, 5 of them with keys,
        // so the fused combine runs in every layer; hidden 128 / intermediate 200 take the vector GEMVs.
        var spec = new ModelSpec(Hidden: 128, Heads: 4, KvHeads: 2, HeadDim: 64, Intermediate: 200, Layers: 4, SwiftKvLayers: 2,
            MaxPositions: 512, Seed: 91);
        using var gpu = new CudaBackend(TestModels.View(TestModels.Checkpoint(spec), swiftKv));
        var prompt = TestModels.RandomTokens(300, spec.Vocab, 92);
        var steps = TestModels.RandomTokens(5, spec.Vocab, 93);
        float[] Run(bool fused, bool graphs)
        {
            gpu.UseFusedDecode = fused;
            gpu.UseGraphs = graphs;
            using var cache = gpu.CreateCache(400);
            gpu.Forward(cache, prompt, LogitsSelection.LastToken);
            var all = new List<float>();
            foreach (int t in steps) all.AddRange(gpu.Forward(cache, [t], LogitsSelection.LastToken));
            return all.ToArray();
        }
        var fusedGraph = Run(true, true);
        Assert.DoesNotContain(fusedGraph, float.IsNaN);
        Assert.Equal(Run(true, false), fusedGraph);
        var previousGraph = Run(false, true);
        Assert.Equal(Run(false, false), previousGraph);
        gpu.UseFusedDecode = true;
        gpu.UseGraphs = true;
        // The fused path keeps the normed activations in fp32 (the previous one rounds them to bf16): close, not equal.
        int vocab = spec.Vocab;
        for (int s = 0; s < steps.Length; s++)
        {
            double maxB = 0, maxD = 0;
            for (int i = 0; i < vocab; i++)
            {
                maxB = Math.Max(maxB, Math.Abs(previousGraph[s * vocab + i]));
                maxD = Math.Max(maxD, Math.Abs(fusedGraph[s * vocab + i] - previousGraph[s * vocab + i]));
            }
            Assert.True(maxD <= 1e-2 * maxB, $"step {s}: fused vs previous path max|diff| {maxD:E3} vs max|logit| {maxB:E3}");
        }
        Gpu.Log($"swiftkv {swiftKv}: fused single-graph decode equals its direct launches and matches the previous path");
    }

    [Fact]
    public void NextToken_GreedyEqualsHostArgmax_AndSeededSamplingRepeats()
    {
        Gpu.Require();
        var spec = new ModelSpec(Layers: 6, SwiftKvLayers: 2, GroupSize: 2, Seed: 71);
        using var gpu = new CudaBackend(TestModels.Build(spec));
        var prompt = TestModels.RandomTokens(8, spec.Vocab, 9);
        foreach (bool graphs in new[] { true, false })
        {
            gpu.UseGraphs = graphs;
            using var logitsCache = gpu.CreateCache(32);
            using var tokenCache = gpu.CreateCache(32);
            var logits = gpu.Forward(logitsCache, prompt, LogitsSelection.LastToken);
            int token = gpu.NextToken(tokenCache, prompt, new GpuSampling());
            for (int step = 0; step < 5; step++)
            {
                Assert.Equal(HostArgmax(logits), token);
                logits = gpu.Forward(logitsCache, [token], LogitsSelection.LastToken);
                token = gpu.NextToken(tokenCache, [token], new GpuSampling());
            }
        }
        var sampling = new GpuSampling(Temperature: 0.9f, TopK: 20, TopP: 0.9f, Seed: 1234);
        int[] Run(GpuSampling s)
        {
            using var c = gpu.CreateCache(32);
            var got = new List<int> { gpu.NextToken(c, prompt, s, 0) };
            for (int step = 1; step < 8; step++) got.Add(gpu.NextToken(c, [got[^1]], s, step));
            return got.ToArray();
        }
        var first = Run(sampling);
        Assert.Equal(first, Run(sampling));
        Assert.All(first, t => Assert.InRange(t, 0, spec.Vocab - 1));
        Gpu.Log($"seeded sampling: {string.Join(",", first)} twice");
    }

    /// <summary>Both entries (one CTA per row, and the row over a cluster on sm_90+) draw the reference's distribution.</summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void SamplingKernel_MatchesTopKTopPDistribution(bool clusters)
    {
        Gpu.Require();
        const int n = 3001;
        var rng = new Random(5);
        var logits = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 6 - 3)).ToArray();
        var kernel = new SamplingKernel(Library) { UseClusters = clusters };
        if (clusters && !kernel.UseClusters) Assert.Skip("no cluster entries below sm_90");
        using var dLogits = new DeviceBuffer<float>(logits);
        using var dOut = new DeviceBuffer<int>(1);
        foreach (var (temp, k, p) in new[] { (1f, 0, 1f), (0.7f, 50, 1f), (1.3f, 0, 0.8f), (1f, 40, 0.6f), (1f, 1, 1f) })
        {
            var expected = Reference(logits, temp, k, p);
            const int draws = 4000;
            var counts = new int[n];
            for (int i = 0; i < draws; i++)
            {
                kernel.Launch(Stream, dLogits, 1, n, temp, k, p, (i + 0.5f) / draws, dOut);
                Stream.Synchronize();
                int t = dOut.ToArray()[0];
                Assert.True(expected[t] > 0, $"T={temp} k={k} p={p}: token {t} is outside the kept set");
                counts[t]++;
            }
            for (int i = 0; i < n; i++)
                Assert.True(Math.Abs(counts[i] / (double)draws - expected[i]) <= 2.0 / draws + 1e-3,
                    $"T={temp} k={k} p={p}: token {i} drawn {counts[i]}/{draws}, expected probability {expected[i]:F5}");
        }
    }

    /// <summary>
    /// The per-row entry (the serving step's sampled picks): each row with its own temperature, top-k, top-p and u gives
    /// the token the one-row launch gives with those parameters (u_0 = u), and a greedy row (1 / temperature 0) keeps
    /// the id already in the output. Rows of 128K logits, as Llama 3's.
    /// </summary>
    [Fact]
    public void SamplingKernel_LaunchRows_EachRowAsItsOwnLaunch()
    {
        Gpu.Require();
        const int n = 128256, rows = 6;
        var rng = new Random(12);
        var logits = Enumerable.Range(0, rows * n).Select(_ => (float)(rng.NextDouble() * 16 - 8)).ToArray();
        (float T, int K, float P, float U)[] picks = [(0.7f, 0, 0.9f, 0.13f), (0f, 0, 1f, 0f), (1.2f, 50, 1f, 0.77f), (1f, 1, 1f, 0.5f), (0.9f, 40, 0.6f, 0.999f), (0f, 7, 0.5f, 0.4f)];
        var kernel = new SamplingKernel(Library);
        using var dLogits = new DeviceBuffer<float>(logits);
        using var dParams = new DeviceBuffer<float>(picks.SelectMany(p => new[] { p.T > 0 ? 1f / p.T : 0f, p.P, p.U }).ToArray());
        using var dTopK = new DeviceBuffer<int>(picks.Select(p => p.K).ToArray());
        using var dOut = new DeviceBuffer<int>(Enumerable.Range(0, rows).Select(r => -100 - r).ToArray());
        kernel.LaunchRows(Stream, dLogits, rows, n, dParams, dTopK, dOut);
        Stream.Synchronize();
        var got = dOut.ToArray();
        using var one = new DeviceBuffer<int>(1);
        for (int r = 0; r < rows; r++)
        {
            var (t, k, p, u) = picks[r];
            if (t == 0)
            {
                Assert.Equal(-100 - r, got[r]);
                continue;
            }
            kernel.Launch(Stream, dLogits.Span.Slice((long)r * n, n), 1, n, t, k, p, u, one);
            Stream.Synchronize();
            Assert.Equal(one.ToArray()[0], got[r]);
        }
        Assert.Throws<ArgumentException>(() => kernel.LaunchRows(Stream, dLogits, rows, n, dParams.Span.Slice(0, 3), dTopK, dOut));
    }

    /// <summary>
    /// Non-finite logits: with some -inf (and NaN, which counts as -inf) the top-k and top-p filters still keep exactly
    /// the reference's set (the bisection once started at -inf and kept everything); logits near -3e38 likewise; +inf
    /// takes its first token; a row with nothing above -inf gives -1; a temperature whose inverse overflows is refused.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void SamplingKernel_NonFiniteLogits(bool clusters)
    {
        Gpu.Require();
        var kernel = new SamplingKernel(Library) { UseClusters = clusters };
        if (clusters && !kernel.UseClusters) Assert.Skip("no cluster entries below sm_90");
        using var dOut = new DeviceBuffer<int>(1);
        int Draw(float[] logits, float temp, int k, float p, float u)
        {
            using var d = new DeviceBuffer<float>(logits);
            kernel.Launch(Stream, d, 1, logits.Length, temp, k, p, u, dOut);
            Stream.Synchronize();
            return dOut.ToArray()[0];
        }
        float ninf = float.NegativeInfinity, nan = float.NaN;
        float[] masked = [5, 4, 3, 2, 1, 0, -1, ninf, nan, ninf];
        float[] huge = [5, 4, 3, 2, 1, 0, -1, -3e38f, -3e38f, -1e38f];
        foreach (var row in new[] { masked, huge })
            foreach (var (k, p) in new[] { (2, 1f), (0, 0.7f), (3, 0.9f) })
            {
                var finite = row.Select(v => float.IsNaN(v) || v < -1e30f ? -1000f : v).ToArray();
                var expected = Reference(finite, 1f, k, p);
                for (int i = 0; i < 400; i++)
                {
                    int t = Draw(row, 1f, k, p, (i + 0.5f) / 400);
                    Assert.True(t >= 0 && expected[t] > 0, $"k={k} p={p}: token {t} is outside the kept set {{{string.Join(",", expected.Select((e, j) => e > 0 ? j : -1).Where(j => j >= 0))}}}");
                }
            }
        float inf = float.PositiveInfinity;
        Assert.Equal(3, Draw([0, 5, 1, inf, 2, inf], 1f, 0, 1f, 0.9f));
        Assert.Equal(3, Draw([0, 5, 1, inf, 2, inf], 0.5f, 2, 0.5f, 0.1f));
        Assert.Equal(-1, Draw([nan, ninf, nan], 1f, 0, 1f, 0.5f));
        Assert.Throws<ArgumentOutOfRangeException>(() => Draw([1, 2], 1e-39f, 0, 1f, 0.5f));
        Assert.Equal(1, Draw([1, 2, 0, -1], 1e-30f, 0, 1f, 0.5f));   // a tiny (but invertible) temperature is greedy
    }

    /// <summary>
    /// The cluster entries on rows of Llama 3's 128256 logits (spread like a language model's, peaked, and with a third of
    /// the vocabulary masked to -inf as a constraint leaves it), each row its own temperature, top-k, top-p and u: every
    /// token is one the reference keeps, and lies between the host rule's picks (RowSampling.Pick, in double) at u - 1e-3
    /// and u + 1e-3 (picks run in vocabulary order, so they rise with u: a different token is a draw within float
    /// rounding of a boundary). The one-CTA entry is held to the same, and the two agree on nearly every row.
    /// </summary>
    [Fact]
    public void SamplingKernel_ClusterEntries_FollowTheRowSamplingRule()
    {
        Gpu.Require();
        var kernel = new SamplingKernel(Library);
        if (!kernel.UseClusters) Assert.Skip("no cluster entries below sm_90");
        const int n = 128256, rows = 24;
        var rng = new Random(21);
        var logits = new float[rows * n];
        var picks = new (float T, int K, float P, float U)[rows];
        for (int r = 0; r < rows; r++)
        {
            var row = logits.AsSpan(r * n, n);
            for (int i = 0; i < n; i++) row[i] = (float)(rng.NextDouble() * 10 - 12 + (rng.Next(2000) == 0 ? 14 : 0));
            if (r % 6 == 1) row[rng.Next(n)] = 30f;                                    // peaked: the top token reaches top_p alone
            if (r % 6 == 2) for (int i = r % 3; i < n; i += 3) row[i] = float.NegativeInfinity;   // masked
            picks[r] = (r % 4) switch
            {
                0 => (0.7f, 0, 0.9f, (float)rng.NextDouble()),
                1 => (1f, 50, 0.95f, (float)rng.NextDouble()),
                2 => (1.3f, 0, 1f, (float)rng.NextDouble()),
                _ => (0.5f, 4000, 0.6f, (float)rng.NextDouble()),
            };
        }
        using var dLogits = new DeviceBuffer<float>(logits);
        using var dParams = new DeviceBuffer<float>(picks.SelectMany(p => new[] { 1f / p.T, p.P, p.U }).ToArray());
        using var dTopK = new DeviceBuffer<int>(picks.Select(p => p.K).ToArray());
        using var dOut = new DeviceBuffer<int>(Enumerable.Repeat(-7, rows).ToArray());
        int[] Run(bool clusters)
        {
            kernel.UseClusters = clusters;
            dOut.CopyFrom(Enumerable.Repeat(-7, rows).ToArray());
            kernel.LaunchRows(Stream, dLogits, rows, n, dParams, dTopK, dOut);
            Stream.Synchronize();
            return dOut.ToArray();
        }
        var cluster = Run(true);
        var single = Run(false);
        for (int r = 0; r < rows; r++)
        {
            var row = logits.AsMemory(r * n, n);
            var (t, k, p, u) = picks[r];
            var expected = Reference(row.ToArray(), t, k, p);
            int Host(float at) => RowSampling.Pick(row.Span, new RowSampling(t, k, p, Math.Clamp(at, 0f, 0.99999994f)));
            int low = Host(u - 1e-3f), high = Host(u + 1e-3f);
            foreach (var (label, token) in new[] { ("cluster", cluster[r]), ("one-CTA", single[r]) })
            {
                Assert.True(token >= 0 && token < n && expected[token] > 0, $"row {r} ({t}, {k}, {p}, {u}): the {label} entry picked {token}, outside the kept set");
                Assert.True(token >= low && token <= high, $"row {r} ({t}, {k}, {p}, {u}): the {label} entry picked {token}; the rule picks {low}..{high} for u +- 1e-3");
            }
        }
        int same = cluster.Zip(single).Count(z => z.First == z.Second);
        Assert.True(same >= rows - 2, $"the cluster and one-CTA entries agree on only {same} of {rows} rows");
        Gpu.Log($"cluster sampling: {same}/{rows} rows equal to the one-CTA entry, every token within the rule's picks at u +- 1e-3");
    }

    /// <summary>
    /// The one-launch entries over several rows: row r draws with u_r = frac(u + 0.618·r), on every entry alike. Row
    /// lengths cover the vectorised slice path (128256), a row not a multiple of 4 (128257, the scalar path) and a row
    /// shorter than the cluster, whose trailing CTAs hold nothing (37). Each row's token is one the reference keeps and
    /// lies between the host rule's picks at u_r -+ 1e-3.
    /// </summary>
    [Theory]
    [InlineData(128256, true)]
    [InlineData(128257, true)]
    [InlineData(37, true)]
    [InlineData(128257, false)]
    [InlineData(37, false)]
    public void SamplingKernel_Launch_EachRowDrawsItsOwnUniform(int n, bool clusters)
    {
        Gpu.Require();
        var kernel = new SamplingKernel(Library) { UseClusters = clusters };
        if (clusters && !kernel.UseClusters) Assert.Skip("no cluster entries below sm_90");
        if (clusters) Assert.True(kernel.ClusterTakes(n, 7), $"rows of {n} logits should go to the cluster entry");
        const int rows = 7;
        const float u = 0.37f;
        var rng = new Random(n);
        var logits = new float[rows * n];
        for (int i = 0; i < logits.Length; i++) logits[i] = (float)(rng.NextDouble() * 10 - 12 + (rng.Next(500) == 0 ? 9 : 0));
        using var dLogits = new DeviceBuffer<float>(logits);
        using var dOut = new DeviceBuffer<int>(Enumerable.Repeat(-7, rows).ToArray());
        foreach (var (t, k, p) in new[] { (0.8f, 0, 0.9f), (1.1f, 40, 0.95f), (1f, 0, 1f) })
        {
            kernel.Launch(Stream, dLogits, rows, n, t, k, p, u, dOut);
            Stream.Synchronize();
            var got = dOut.ToArray();
            for (int r = 0; r < rows; r++)
            {
                float ur = u + 0.6180339887f * r;
                ur -= MathF.Floor(ur);
                var row = logits.AsMemory(r * n, n);
                var expected = Reference(row.ToArray(), t, k, p);
                int Host(float at) => RowSampling.Pick(row.Span, new RowSampling(t, k, p, Math.Clamp(at, 0f, 0.99999994f)));
                int low = Host(ur - 1e-3f), high = Host(ur + 1e-3f);
                Assert.True(got[r] >= 0 && got[r] < n && expected[got[r]] > 0, $"n={n} row {r} ({t}, {k}, {p}, u_r {ur}): token {got[r]} is outside the kept set");
                Assert.True(got[r] >= low && got[r] <= high, $"n={n} row {r} ({t}, {k}, {p}, u_r {ur}): token {got[r]}; the rule picks {low}..{high} for u_r -+ 1e-3");
            }
        }
    }

    /// <summary>
    /// Where the cluster entries cannot take a row (its slice does not fit a CTA's shared memory, or more rows than a
    /// grid's y), the launcher falls back to the one-CTA entry: same tokens as with clusters switched off.
    /// </summary>
    [Fact]
    public void SamplingKernel_RowTooLargeForTheCluster_FallsBackToOneCtaPerRow()
    {
        Gpu.Require();
        var kernel = new SamplingKernel(Library);
        if (!kernel.UseClusters) Assert.Skip("no cluster entries below sm_90");
        Assert.True(kernel.ClusterTakes(128256, 2));
        Assert.False(kernel.ClusterTakes(128256, 65536), "a grid's y holds at most 65535 rows");
        int n = 1 << 20;   // 4 MB a row: 512 KB a CTA's slice, over any GPU's shared memory per block
        Assert.False(kernel.ClusterTakes(n, 2), $"a slice of {n / kernel.ClusterCtas} floats cannot fit a CTA");
        Assert.True(kernel.ClusterTakes(128256, 2), "the check for one length does not stick to another");
        const int rows = 2;
        var rng = new Random(77);
        var logits = new float[rows * n];
        for (int i = 0; i < logits.Length; i++) logits[i] = (float)(rng.NextDouble() * 10 - 12 + (rng.Next(3000) == 0 ? 12 : 0));
        using var dLogits = new DeviceBuffer<float>(logits);
        using var dParams = new DeviceBuffer<float>([1f / 0.9f, 0.9f, 0.21f, 1f, 0.8f, 0.64f]);
        using var dTopK = new DeviceBuffer<int>([0, 100]);
        using var dOut = new DeviceBuffer<int>(rows);
        int[] Run(bool clusters)
        {
            kernel.UseClusters = clusters;
            dOut.CopyFrom([-7, -7]);
            kernel.LaunchRows(Stream, dLogits, rows, n, dParams, dTopK, dOut);
            Stream.Synchronize();
            return dOut.ToArray();
        }
        var fallback = Run(true);
        Assert.Equal(Run(false), fallback);
        for (int r = 0; r < rows; r++)
        {
            var (t, k, p) = r == 0 ? (0.9f, 0, 0.9f) : (1f, 100, 0.8f);
            var expected = Reference(logits.AsSpan(r * n, n).ToArray(), t, k, p);
            Assert.True(fallback[r] >= 0 && expected[fallback[r]] > 0, $"row {r}: token {fallback[r]} is outside the kept set");
        }
    }

    /// <summary>
    /// PackMask (host only, runs without a GPU): token i lands in bit i % 32 of word i / 32, for lengths around the
    /// 32-token vector step and the word edge; bits past the row stay clear; a short destination is refused.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(31)]
    [InlineData(32)]
    [InlineData(33)]
    [InlineData(95)]
    [InlineData(128256)]
    public void PackMask_PutsTokenIInBitIOfTheRow(int n)
    {
        var rng = new Random(n);
        var allowed = Enumerable.Range(0, n).Select(_ => rng.Next(3) == 0).ToArray();
        var bits = Enumerable.Repeat(0xdeadbeefu, SamplingKernel.MaskWords(n) + 1).ToArray();
        SamplingKernel.PackMask(allowed, bits);
        for (int i = 0; i < 32 * SamplingKernel.MaskWords(n); i++)
        {
            bool bit = ((bits[i / 32] >> (i % 32)) & 1) != 0;
            Assert.True(bit == (i < n && allowed[i]), $"n={n}: bit {i} is {bit}");
        }
        Assert.Equal(0xdeadbeefu, bits[^1]);   // nothing written past the row's words
        Assert.Throws<ArgumentException>(() => SamplingKernel.PackMask(allowed, new uint[SamplingKernel.MaskWords(n) - 1]));
    }

    /// <summary>
    /// mask_logits_f32: the masked rows (not in order, one left out) get -inf exactly where their mask is clear and keep
    /// every other logit bit for bit; unmasked rows are untouched. Vocabularies of 1001 (a partial last word) and 128256.
    /// </summary>
    [Theory]
    [InlineData(1001)]
    [InlineData(128256)]
    public void SamplingKernel_LaunchMask_SetsTheClearedTokensToMinusInfinity(int n)
    {
        Gpu.Require();
        var kernel = new SamplingKernel(Library);
        const int rowCount = 5;
        int[] masked = [3, 0, 4];
        var rng = new Random(n + 3);
        var logits = Enumerable.Range(0, rowCount * n).Select(_ => (float)(rng.NextDouble() * 20 - 10)).ToArray();
        var allowed = masked.Select(_ => Enumerable.Range(0, n).Select(_ => rng.Next(4) != 0).ToArray()).ToArray();
        int words = SamplingKernel.MaskWords(n);
        var bits = new uint[masked.Length * words];
        for (int j = 0; j < masked.Length; j++) SamplingKernel.PackMask(allowed[j], bits.AsSpan(j * words, words));
        using var dLogits = new DeviceBuffer<float>(logits);
        using var dRows = new DeviceBuffer<int>(masked);
        using var dBits = new DeviceBuffer<uint>(bits);
        kernel.LaunchMask(Stream, dLogits, rowCount, n, dRows, dBits, masked.Length);
        Stream.Synchronize();
        var got = dLogits.ToArray();
        for (int r = 0; r < rowCount; r++)
        {
            int j = Array.IndexOf(masked, r);
            for (int i = 0; i < n; i++)
            {
                float expected = j >= 0 && !allowed[j][i] ? float.NegativeInfinity : logits[r * n + i];
                Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(got[r * n + i]),
                    $"n={n} row {r} token {i}: {got[r * n + i]}, expected {expected}");
            }
        }
        Assert.Throws<ArgumentException>(() => kernel.LaunchMask(Stream, dLogits, rowCount, n, dRows, dBits.Span.Slice(0, masked.Length * words - 1), masked.Length));
    }

    /// <summary>Host reference: softmax(z / T), keep the k most likely, then the smallest most-likely prefix reaching p.</summary>
    static double[] Reference(float[] logits, float temp, int k, float p)
    {
        int n = logits.Length;
        double m = logits.Max() / (double)temp;
        var e = logits.Select(l => Math.Exp(l / (double)temp - m)).ToArray();
        var order = Enumerable.Range(0, n).OrderByDescending(i => e[i]).ToArray();
        int keepK = k > 0 ? Math.Min(k, n) : n;
        double massK = order.Take(keepK).Sum(i => e[i]), run = 0;
        var kept = new double[n];
        foreach (int i in order.Take(keepK))
        {
            kept[i] = e[i];
            run += e[i];
            if (run >= p * massK) break;
        }
        double total = kept.Sum();
        return kept.Select(x => x / total).ToArray();
    }

    static int HostArgmax(float[] row)
    {
        int best = 0;
        for (int i = 1; i < row.Length; i++) if (row[i] > row[best]) best = i;
        return best;
    }

    [Fact]
    public void CreateRandom_RunsAndDisposeReturnsAllDeviceMemory()
    {
        Gpu.Require();
        var cfg = ModelPresets.Get("tiny") with { SwiftKv = true, ModelType = "llama_swiftkv", NumKeyValueLayers = 2, KeyValueGroupSize = 2 };
        // Warm-up through every path measured below: the driver keeps one-time allocations (graph instantiation,
        // module loads) for the process, which are not the backend's to return.
        using (var warm = CudaBackend.CreateRandom(cfg, true))
        using (var c = warm.CreateCache(8))
        {
            int t = warm.NextToken(c, [1, 2], new GpuSampling());
            t = warm.NextToken(c, [t], new GpuSampling());
            warm.NextToken(c, [t], new GpuSampling(0.8f, 10, 0.9f, 7));
        }
        CudaRuntime.Synchronize();
        long counted0 = DeviceMemory.AllocatedBytes;
        long free0 = CudaRuntime.MemoryInfo().Free;

        var backend = CudaBackend.CreateRandom(cfg, true, seed: 3);
        var caches = Enumerable.Range(0, 3).Select(_ => backend.CreateCache(64)).ToList();
        foreach (var c in caches)
        {
            int t = backend.NextToken(c, [1, 2, 3], new GpuSampling());
            for (int i = 0; i < 3; i++) t = backend.NextToken(c, [t], new GpuSampling(0.8f, 10, 0.9f, 7), i);
            Assert.InRange(t, 0, cfg.VocabSize - 1);
        }
        var logits = backend.Forward(caches[0], [4], LogitsSelection.LastToken);
        Assert.All(logits, v => Assert.True(float.IsFinite(v)));
        // Same seed, same weights: a second backend gives the same logits.
        using (var twin = CudaBackend.CreateRandom(cfg, true, seed: 3))
        using (var c = twin.CreateCache(8))
        using (var c2 = backend.CreateCache(8))
            Assert.Equal(backend.Forward(c2, [9, 8], LogitsSelection.LastToken), twin.Forward(c, [9, 8], LogitsSelection.LastToken));
        foreach (var c in caches) c.Dispose();
        backend.Dispose();
        CudaRuntime.Synchronize();
        Assert.Equal(counted0, DeviceMemory.AllocatedBytes);
        long free1 = CudaRuntime.MemoryInfo().Free;
        Gpu.Log($"random-weight backend: free before {free0 >> 20} MiB, after dispose {free1 >> 20} MiB");
        Assert.True(Math.Abs(free0 - free1) <= 8 << 20, $"device free memory {free1} did not return to {free0} after disposing backend, caches and graphs");
    }
}
