// CudaBackend's batched, paged step (IBatchedBackend) and the serving engine on it, on small random models whose
// head_dim (64/128) takes the paged flash kernels. References: (1) the same sequences run one by one through
// CudaBackend.Forward with the same chunks (the GPU solo path: contiguous caches, other kernels); (2) CpuBackend's
// ForwardBatch on the same weights rounded to bf16 with the same block tables. Tolerance per logits row,
// max|gpu - ref| / max|ref| <= 1e-2 (the bf16 rule of the CUDA issue).
// Engine: batch invariance of greedy outputs is asserted as "equal to the solo GPU run, or first different at a
// step where the solo logits of the two tokens are within 2e-2 of max|logit|" (cuBLAS may pick a different GEMM
// algorithm for another row count, so bit-equality is not promised on the GPU); the counts of exact matches are logged.
using SwiftKV.Cuda;
using SwiftKV.Engine;
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Cuda;
using SwiftKV.Engine.Sampling;
using SwiftKV.Engine.Serving;
using SwiftKV.Engine.Tests;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class CudaBatchedTests
{
    public static TheoryData<string, ModelSpec, bool> Models => new()
    {
        { "base-hd64-gqa2", new ModelSpec(Hidden: 128, Heads: 4, KvHeads: 2, HeadDim: 64, Seed: 41), false },
        { "swiftkv-off-hd64", new ModelSpec(Hidden: 128, Heads: 4, KvHeads: 2, HeadDim: 64, SwiftKvLayers: 2, Seed: 42), false },
        { "swiftkv-50%-hd64-gqa4-bias-rope3", new ModelSpec(Hidden: 128, Heads: 8, KvHeads: 2, HeadDim: 64, SwiftKvLayers: 2, Bias: true, RopeScaling: true, Seed: 43), true },
        { "acrosskv-g2-hd128-mqa-tied", new ModelSpec(Hidden: 128, Heads: 2, KvHeads: 1, HeadDim: 128, Layers: 6, SwiftKvLayers: 2, GroupSize: 2, Tied: true, Seed: 44), true },
        { "swiftkv-50%-70b-heads", new ModelSpec(Hidden: 256, Heads: 64, KvHeads: 8, HeadDim: 128, Intermediate: 320, SwiftKvLayers: 2, RopeScaling: true, Seed: 50), true },
    };

    /// <summary>One sequence's chunk in one step of the scripted workload.</summary>
    sealed record Chunk(int Seq, int Start, int Count, bool Logits);

    [Theory]
    [MemberData(nameof(Models))]
    public void ForwardBatch_MatchesSoloForwardAndCpu(string name, ModelSpec spec, bool swiftKv)
    {
        Gpu.Require();
        var weights = TestModels.View(TestModels.Checkpoint(spec), swiftKv);
        using var gpu = new CudaBackend(weights);
        using var cpu = new CpuBackend(CudaBackendTests.RoundToBf16(weights));
        const int blockSize = 4, numBlocks = 64;
        using var pool = gpu.CreatePagedKvCache(numBlocks, blockSize);
        using var cpuPool = cpu.CreatePagedKvCache(numBlocks, blockSize);

        // Five sequences with known tokens, block tables scattered over the pool (a seeded permutation).
        int[] lengths = [14, 10, 6, 2, 7];
        var tokens = lengths.Select((n, i) => TestModels.RandomTokens(n, spec.Vocab, spec.Seed + 10 + (ulong)i)).ToArray();
        var rng = new TestRng(spec.Seed);
        var free = Enumerable.Range(0, numBlocks).OrderBy(_ => rng.NextDouble()).ToArray();
        int next = 0;
        var tables = lengths.Select(n => Enumerable.Range(0, (n + blockSize - 1) / blockSize).Select(_ => free[next++]).ToArray()).ToArray();

        // Prefill chunks that stop short (no logits), whole prompts, chunks ending prompts, decode tokens, all mixed.
        Chunk[][] steps =
        [
            [new(0, 0, 7, false), new(1, 0, 9, true), new(2, 0, 5, true)],
            [new(0, 7, 6, true), new(1, 9, 1, true), new(2, 5, 1, true), new(3, 0, 1, true), new(4, 0, 3, false)],
            [new(4, 3, 4, true), new(0, 13, 1, true), new(3, 1, 1, true)],
        ];
        var solo = lengths.Select(_ => gpu.CreateCache(32)).ToArray();
        double worstSolo = 0, worstCpu = 0;
        int vocab = spec.Vocab;
        float[] last = [];
        BatchSequence[] lastBatch = [];
        foreach (var step in steps)
        {
            var batch = step.Select(c => new BatchSequence(tokens[c.Seq].AsMemory(c.Start, c.Count), c.Start, tables[c.Seq], c.Logits)).ToArray();
            var g = gpu.ForwardBatch(pool, batch);
            var cRef = cpu.ForwardBatch(cpuPool, batch);
            Assert.Equal(step.Count(c => c.Logits) * vocab, g.Length);
            Assert.Equal(cRef.Length, g.Length);
            int row = 0;
            foreach (var c in step)
            {
                var s = gpu.Forward(solo[c.Seq], tokens[c.Seq].AsSpan(c.Start, c.Count), LogitsSelection.LastToken);
                if (!c.Logits) continue;
                var gr = g.AsSpan(row * vocab, vocab);
                worstSolo = Math.Max(worstSolo, RowError(gr, s, $"{name} seq {c.Seq} chunk @{c.Start}+{c.Count} vs solo Forward"));
                worstCpu = Math.Max(worstCpu, RowError(gr, cRef.AsSpan(row * vocab, vocab), $"{name} seq {c.Seq} chunk @{c.Start}+{c.Count} vs CPU ForwardBatch"));
                row++;
            }
            last = g;
            lastBatch = batch;
        }

        // The device-side pick: rerunning the last step (idempotent: same K/V to the same slots) gives argmax of its rows.
        var ids = gpu.ForwardBatchGreedy(pool, lastBatch);
        Assert.Equal(last.Length / vocab, ids.Length);
        for (int r = 0; r < ids.Length; r++)
            Assert.Equal(Sampler.Greedy(last.AsSpan(r * vocab, vocab)), ids[r]);
        foreach (var c in solo) c.Dispose();
        Gpu.Log($"{name} ({spec}): batched vs solo Forward worst row {worstSolo:E2}, vs CPU ForwardBatch (bf16 weights) {worstCpu:E2}");
    }

    /// <summary>
    /// Decode-only steps of 1..5 sequences, the serving engine's small-batch steps: with 1-2 rows every RMSNorm is
    /// folded into the GEMV after it (the [gate; up] one up to 4 rows), the row kernels and the paged attention
    /// launch programmatically, and the attention's splits merge in its last CTA. Contexts of 20-200 positions in
    /// blocks of 16 give 1-4 key tiles, so some launches split and some do not. Each step's logits against the solo
    /// GPU path and the CPU ForwardBatch.
    /// </summary>
    [Theory]
    [MemberData(nameof(Models))]
    public void ForwardBatch_SmallDecodeSteps_MatchSoloAndCpu(string name, ModelSpec spec, bool swiftKv)
    {
        Gpu.Require();
        var weights = TestModels.View(TestModels.Checkpoint(spec), swiftKv);
        using var gpu = new CudaBackend(weights);
        using var cpu = new CpuBackend(CudaBackendTests.RoundToBf16(weights));
        const int blockSize = 16, steps = 5;
        int[] lengths = [70, 150, 20, 200, 33];
        int next = 0;
        var tables = lengths.Select(n => Enumerable.Range(0, (n + steps + blockSize - 1) / blockSize).Select(_ => next++).ToArray()).ToArray();
        using var pool = gpu.CreatePagedKvCache(next, blockSize);
        using var cpuPool = cpu.CreatePagedKvCache(next, blockSize);
        var tokens = lengths.Select((n, i) => TestModels.RandomTokens(n + steps, spec.Vocab, spec.Seed + 20 + (ulong)i)).ToArray();
        var solo = lengths.Select(n => gpu.CreateCache(n + steps)).ToArray();
        var prompts = lengths.Select((n, i) => new BatchSequence(tokens[i].AsMemory(0, n), 0, tables[i], false)).ToArray();
        gpu.ForwardBatch(pool, prompts);
        cpu.ForwardBatch(cpuPool, prompts);
        for (int i = 0; i < lengths.Length; i++) gpu.Forward(solo[i], tokens[i].AsSpan(0, lengths[i]), LogitsSelection.LastToken);
        var pos = (int[])lengths.Clone();
        int vocab = spec.Vocab;
        double worstSolo = 0, worstCpu = 0;
        for (int b = 1; b <= steps; b++)   // step b: sequences 0..b-1 bring one token each
        {
            var batch = Enumerable.Range(0, b).Select(i => new BatchSequence(tokens[i].AsMemory(pos[i], 1), pos[i], tables[i], true)).ToArray();
            var g = gpu.ForwardBatch(pool, batch);
            var c = cpu.ForwardBatch(cpuPool, batch);
            Assert.Equal(b * vocab, g.Length);
            for (int i = 0; i < b; i++)
            {
                var s = gpu.Forward(solo[i], tokens[i].AsSpan(pos[i], 1), LogitsSelection.LastToken);
                var row = g.AsSpan(i * vocab, vocab);
                worstSolo = Math.Max(worstSolo, RowError(row, s, $"{name} batch of {b}, sequence {i} at {pos[i]} vs solo Forward"));
                worstCpu = Math.Max(worstCpu, RowError(row, c.AsSpan(i * vocab, vocab), $"{name} batch of {b}, sequence {i} at {pos[i]} vs CPU ForwardBatch"));
                pos[i]++;
            }
        }
        foreach (var c in solo) c.Dispose();
        Gpu.Log($"{name} ({spec}): small decode steps, worst row vs solo Forward {worstSolo:E2}, vs CPU ForwardBatch (bf16 weights) {worstCpu:E2}");
    }

    /// <summary>
    /// Decode-only steps run padded to a bucket of sequences (1-4 as they are, then 8, 16, 32, ...) and a power-of-two table stride, and
    /// replay a captured graph per (pool, shape). Two backends on the same weights, one with graphs and one launching
    /// every kernel, take the same steps: 1-6 sequences in changing order (steps of 5 and 6 run padded to 8), contexts
    /// crossing 128 positions (the table stride grows from 8 to 16 blocks: a new capture), greedy and logits steps.
    /// The graph replays must give the launches' bits; both must match the CPU ForwardBatch. Sequence 0 owns block 0,
    /// whose slot 0 a padding row would overwrite if its K/V write were not skipped.
    /// </summary>
    [Theory]
    [MemberData(nameof(Models))]
    public void ForwardBatch_DecodeGraphs_ReplayTheLaunchesBitsAndMatchCpu(string name, ModelSpec spec, bool swiftKv)
    {
        Gpu.Require();
        var weights = TestModels.View(TestModels.Checkpoint(spec), swiftKv);
        using var graphs = new CudaBackend(weights);
        using var launches = new CudaBackend(weights) { UseGraphs = false };
        using var cpu = new CpuBackend(CudaBackendTests.RoundToBf16(weights));
        const int blockSize = 16;
        int[] sizes = [1, 1, 3, 3, 6, 5, 4, 6, 1, 3, 6, 2, 5, 6];
        int[] lengths = [120, 60, 5, 126, 30, 90];
        int next = 0;
        var tables = lengths.Select(n => Enumerable.Range(0, (n + sizes.Length + blockSize - 1) / blockSize).Select(_ => next++).ToArray()).ToArray();
        using var poolG = graphs.CreatePagedKvCache(next, blockSize);
        using var poolL = launches.CreatePagedKvCache(next, blockSize);
        using var cpuPool = cpu.CreatePagedKvCache(next, blockSize);
        var tokens = lengths.Select((n, i) => TestModels.RandomTokens(n + sizes.Length, spec.Vocab, spec.Seed + 30 + (ulong)i)).ToArray();
        var prompts = lengths.Select((n, i) => new BatchSequence(tokens[i].AsMemory(0, n), 0, tables[i], false)).ToArray();
        graphs.ForwardBatch(poolG, prompts);
        launches.ForwardBatch(poolL, prompts);
        cpu.ForwardBatch(cpuPool, prompts);
        var pos = (int[])lengths.Clone();
        int vocab = spec.Vocab;
        double worst = 0;
        for (int k = 0; k < sizes.Length; k++)
        {
            var members = Enumerable.Range(0, sizes[k]).Select(i => (i + k) % lengths.Length).ToArray();
            var batch = members.Select(i => new BatchSequence(tokens[i].AsMemory(pos[i], 1), pos[i], tables[i], true)).ToArray();
            var c = cpu.ForwardBatch(cpuPool, batch);
            if (k % 3 == 2)
            {
                var idsG = graphs.ForwardBatchGreedy(poolG, batch);
                var idsL = launches.ForwardBatchGreedy(poolL, batch);
                Assert.Equal(idsL, idsG);
            }
            else
            {
                var g = graphs.ForwardBatch(poolG, batch);
                var l = launches.ForwardBatch(poolL, batch);
                Assert.Equal(sizes[k] * vocab, g.Length);
                Assert.True(l.AsSpan().SequenceEqual(g), $"{name} step {k} ({sizes[k]} sequences): the graph replay's logits differ from the launches'");
                for (int r = 0; r < sizes[k]; r++)
                    worst = Math.Max(worst, RowError(g.AsSpan(r * vocab, vocab), c.AsSpan(r * vocab, vocab),
                        $"{name} step {k}, sequence {members[r]} at {pos[members[r]]} vs CPU ForwardBatch"));
            }
            foreach (var i in members) pos[i]++;
        }
        Assert.Null(graphs.StepGraphFailure);
        Assert.True(graphs.StepGraphReplays > 0, "no decode step replayed a graph");
        Assert.Equal(0, launches.StepGraphCaptures);
        Gpu.Log($"{name} ({spec}): decode graphs, {graphs.StepGraphCaptures} captures, {graphs.StepGraphReplays} replays, bit-equal to the launches; worst row vs CPU {worst:E2}");
    }

    /// <summary>
    /// ForwardBatchSample on the GPU: two backends on the same weights take the same steps (a mixed step, then decode
    /// steps that replay graphs), one returning logits, one sampling on the device. Each sampled row's token must be the
    /// one RowSampling.Pick (the rule on the CPU, in double) gives on the other backend's logits, up to the float
    /// rounding of the kernel's thresholds (at least 95% equal, and every token inside the rule's kept set); greedy rows
    /// the argmax. Two rows carry biases (penalties) and, every other step, two rows a mask (a constraint's allowed
    /// tokens), both applied on the device before the argmax and the draw. Bad picks (a bias token outside the
    /// vocabulary, a mask of the wrong length among them) are refused.
    /// </summary>
    [Fact]
    public void ForwardBatchSample_PicksByTheRowSamplingRule_WithMasksAndBiases()
    {
        Gpu.Require();
        var spec = new ModelSpec(Hidden: 128, Heads: 8, KvHeads: 2, HeadDim: 64, SwiftKvLayers: 2, Vocab: 211, Seed: 61);
        var weights = TestModels.View(TestModels.Checkpoint(spec), true);
        using var sampler = new CudaBackend(weights);
        using var logitsSide = new CudaBackend(weights);
        const int blockSize = 16, seqs = 5, steps = 12;
        var tables = Enumerable.Range(0, seqs).Select(s => Enumerable.Range(0, 4).Select(j => s * 4 + j).ToArray()).ToArray();
        using var poolS = sampler.CreatePagedKvCache(seqs * 4, blockSize);
        using var poolL = logitsSide.CreatePagedKvCache(seqs * 4, blockSize);
        var tokens = Enumerable.Range(0, seqs).Select(s => TestModels.RandomTokens(20 + steps, spec.Vocab, 70 + (ulong)s)).ToArray();
        var rng = new Random(3);
        // Rows 2 (greedy) and 4 (sampled) carry biases (penalties): on row 2 one token gets +40 every other step, so the
        // argmax must move to it; on row 4, 30 tokens get deltas in [-2, 2].
        RowSampling Pick(int s, int k) => s == 2 ? RowSampling.Greedy with { Bias = k % 2 == 0 ? new LogitBias([(7 * k) % spec.Vocab], [40f]) : null }
            : new RowSampling(0.5f + 0.3f * s, s % 2 == 0 ? 0 : 15, s == 3 ? 0.7f : 1f, (float)rng.NextDouble())
            {
                Bias = s == 4 ? new LogitBias(Enumerable.Range(0, 30).Select(i => (i * 7 + k) % spec.Vocab).ToArray(), Enumerable.Range(0, 30).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray()) : null,
            };
        int vocab = spec.Vocab, equal = 0, total = 0, maskedRows = 0;
        for (int k = 0; k <= steps; k++)
        {
            // Step 0: every prompt whole (mixed lengths); then one token each.
            var batch = Enumerable.Range(0, seqs).Select(s => k == 0
                ? new BatchSequence(tokens[s].AsMemory(0, 16 + s), 0, tables[s], true)
                : new BatchSequence(tokens[s].AsMemory(15 + s + k, 1), 15 + s + k, tables[s], true)).ToArray();
            var picks = Enumerable.Range(0, seqs).Select(s => Pick(s, k)).ToArray();
            if (k == 1)
            {
                Assert.Throws<ArgumentException>(() => sampler.ForwardBatchSample(poolS, batch, [.. picks[..4], picks[4] with { Bias = new LogitBias([spec.Vocab], [1f]) }]));
                Assert.Throws<ArgumentException>(() => sampler.ForwardBatchSample(poolS, batch, picks[1..]));
                Assert.Throws<ArgumentException>(() => sampler.ForwardBatchSample(poolS, batch, [.. picks[..4], new RowSampling(1, 0, 1, 1f)]));
            }
            // Odd steps: two rows (sometimes neighbours) carry a constraint's mask, each allowing a third of the vocabulary
            // (a different third each step), computed while the step runs.
            for (int s = 0; s < seqs; s++)
            {
                if (k % 2 == 0 || (s != k % seqs && s != (k + 1 + k / 3) % seqs)) continue;
                int third = (k + s) % 3;
                picks[s] = picks[s] with { Mask = new LogitMask(Task.Run(() => (bool[]?)Enumerable.Range(0, spec.Vocab).Select(t => t % 3 == third).ToArray())) };
            }
            if (k == 1)
                Assert.Throws<ArgumentException>(() => sampler.ForwardBatchSample(poolS, batch, [.. picks[..4], picks[4] with { Mask = new LogitMask(Task.FromResult<bool[]?>(new bool[spec.Vocab - 1])) }]));
            var ids = sampler.ForwardBatchSample(poolS, batch, picks);
            var logits = logitsSide.ForwardBatch(poolL, batch);
            for (int s = 0; s < seqs; s++)
            {
                var row = logits.AsSpan(s * vocab, vocab);
                if (picks[s].Mask?.WaitBits() is { } allowed)
                {
                    Assert.True(allowed[ids[s]], $"step {k}, sequence {s}: the device picked masked token {ids[s]}");
                    maskedRows++;
                }
                int expected = RowSampling.Pick(row, picks[s]);
                if (picks[s].Temperature == 0)
                {
                    Assert.Equal(expected, ids[s]);
                    if (picks[s].Bias is { } b) Assert.Equal(b.Tokens[0], ids[s]);   // the +40 moved the argmax
                    continue;
                }
                total++;
                if (expected == ids[s]) { equal++; continue; }
                // A different token: it must still be one the rule keeps (a draw at the edge between two kept tokens).
                int kept = 0;
                // (A grid of 8192 uniforms reaches every kept token with at least 1/8192 of the kept mass.)
                for (int i = 0; i < 8192; i++) kept += RowSampling.Pick(row, picks[s] with { U = (i + 0.5f) / 8192 }) == ids[s] ? 1 : 0;
                Assert.True(kept > 0, $"step {k}, sequence {s}: the device picked token {ids[s]}, which the rule never picks ({picks[s]})");
            }
        }
        Assert.True(equal >= 0.95 * total, $"only {equal} of {total} sampled rows picked the rule's token");
        Assert.True(sampler.StepGraphReplays > 0, "the decode steps did not replay graphs");
        Assert.Equal(12, maskedRows);
        Gpu.Log($"ForwardBatchSample: {equal}/{total} sampled rows equal to RowSampling.Pick on the same step's logits; {maskedRows} masked rows, none picking a masked token");
    }

    /// <summary>
    /// ReserveStepWorkspace warms every cuBLASLt row bucket a step's projections can meet, so later steps of lengths
    /// never seen (a mixed prefill of 278 rows, then 3-row decodes, then a 29-row prefill, whose [gate; up] takes the
    /// cuBLAS route on every GPU; with and without SwiftKV's kept-row layers) ask cuBLASLt's heuristic nothing, and their
    /// logits still match the CPU.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ReserveStepWorkspace_WarmsEveryRowBucket(bool swiftKv)
    {
        Gpu.Require();
        var spec = new ModelSpec(Hidden: 128, Heads: 8, KvHeads: 2, HeadDim: 64, SwiftKvLayers: 2, Vocab: 211, Seed: 63);
        var weights = TestModels.View(TestModels.Checkpoint(spec), swiftKv);
        using var gpu = new CudaBackend(weights);
        using var cpu = new CpuBackend(weights);
        gpu.ReserveStepWorkspace(300, 6);
        int warmed = gpu.GemmHeuristicQueries;
        Assert.True(warmed > 0, "the warm-up asked cuBLASLt nothing");
        using var poolG = gpu.CreatePagedKvCache(48, 16);
        using var poolC = cpu.CreatePagedKvCache(48, 16);
        int[] lengths = [37, 91, 150];
        var tables = lengths.Select((_, s) => Enumerable.Range(0, 12).Select(j => s * 12 + j).ToArray()).ToArray();
        var tokens = lengths.Select((n, s) => TestModels.RandomTokens(n + 4, spec.Vocab, 80 + (ulong)s)).ToArray();
        for (int k = 0; k <= 3; k++)
        {
            var batch = lengths.Select((n, s) => k == 0 ? new BatchSequence(tokens[s].AsMemory(0, n), 0, tables[s], true)
                : new BatchSequence(tokens[s].AsMemory(n + k - 1, 1), n + k - 1, tables[s], true)).ToArray();
            var got = gpu.ForwardBatch(poolG, batch);
            var want = cpu.ForwardBatch(poolC, batch);
            for (int r = 0; r < lengths.Length; r++)
                RowError(got.AsSpan(r * spec.Vocab, spec.Vocab), want.AsSpan(r * spec.Vocab, spec.Vocab), $"step {k}, row {r}");
        }
        var fresh = new[] { new BatchSequence(TestModels.RandomTokens(29, spec.Vocab, 89), 0, Enumerable.Range(36, 12).ToArray(), true) };
        RowError(gpu.ForwardBatch(poolG, fresh), cpu.ForwardBatch(poolC, fresh), "29-row prefill");
        Assert.Equal(warmed, gpu.GemmHeuristicQueries);
        gpu.ReleaseStepWorkspace(300, 6);
        Gpu.Log($"warm-up (swiftkv {swiftKv}): {warmed} cuBLASLt plans in {gpu.LastGemmWarmUp.TotalMilliseconds:F0} ms; none asked by the steps after it");
    }

    /// <summary>
    /// A reservation for 200 sequences covers the decode step they run as (padded to its 208-row graph bucket): the
    /// step leaves the activation and logits workspaces as reserved, instead of doubling them after the KV pool was
    /// sized. (Before, the logits workspace grew to 400 rows here.)
    /// </summary>
    [Fact]
    public void ReserveStepWorkspace_CoversThePaddedDecodeBucket()
    {
        Gpu.Require();
        var spec = new ModelSpec(Hidden: 128, Heads: 8, KvHeads: 2, HeadDim: 64, Vocab: 211, Seed: 64);
        using var gpu = new CudaBackend(TestModels.Build(spec));
        const int seqs = 200;
        gpu.ReserveStepWorkspace(64, seqs);
        long logitsBytes = gpu.LogitsWorkspaceBytes;
        int rows = gpu.ActivationWorkspaceRows;
        Assert.True(logitsBytes >= 208L * spec.Vocab * 4, $"logits workspace {logitsBytes} B for 208 rows of {spec.Vocab}");
        using var pool = gpu.CreatePagedKvCache(seqs, 16);
        var prompts = Enumerable.Range(0, seqs).Select(s => TestModels.RandomTokens(3, spec.Vocab, 300 + (ulong)s)).ToArray();
        // Prefill in chunks of 16 sequences (48 rows, inside the reservation), then one decode step of all 200.
        for (int c = 0; c < seqs; c += 16)
            gpu.ForwardBatch(pool, Enumerable.Range(c, Math.Min(16, seqs - c)).Select(s => new BatchSequence(prompts[s].AsMemory(0, 2), 0, new[] { s }, true)).ToArray());
        var decode = Enumerable.Range(0, seqs).Select(s => new BatchSequence(prompts[s].AsMemory(2, 1), 2, new[] { s }, true)).ToArray();
        var logits = gpu.ForwardBatch(pool, decode);
        Assert.Equal(seqs * spec.Vocab, logits.Length);
        Assert.Equal(logitsBytes, gpu.LogitsWorkspaceBytes);
        Assert.Equal(rows, gpu.ActivationWorkspaceRows);
        gpu.ReleaseStepWorkspace(64, seqs);
    }

    /// <summary>
    /// Seeded sampled requests through the serving engine on the GPU: with 12 requests in flight every token is a
    /// vocabulary id, decode steps are captured, and the engine's graphs go with its pool. Each request run
    /// alone on two fresh engines gives the same tokens both times (alone, its steps have one composition; in a crowd
    /// the steps' row counts depend on arrival timing, and another GEMM shape may move a draw across a bucket edge).
    /// </summary>
    [Fact]
    public async Task ServingEngine_SampledRequests_PickOnTheDeviceAndRepeat()
    {
        Gpu.Require();
        using var gpu = new CudaBackend(TestModels.Build(EngineModel));
        var prompts = Enumerable.Range(0, 12).Select(i => TestModels.RandomTokens(5 + 3 * i, EngineModel.Vocab, 900 + (ulong)i)).ToArray();
        SamplingParams Params(int i) => i % 4 == 0 ? SamplingParams.Greedy
            : new SamplingParams { Temperature = 0.7f, TopK = i % 2 == 0 ? 0 : 30, TopP = 0.9f, Seed = 500 + (ulong)i };
        var trace = new List<ServingStepTrace>();
        using (var engine = new ServingEngine(gpu, EngineOptions with { StepObserver = t => { lock (trace) trace.Add(t); } }))
        {
            var requests = prompts.Select((p, i) => engine.Submit(p, Params(i), 10, ct: TestContext.Current.CancellationToken)).ToArray();
            var outputs = await Task.WhenAll(requests.Select(Collect));
            Assert.All(outputs, o => Assert.All(o, t => Assert.InRange(t, 0, EngineModel.Vocab - 1)));
        }
        Assert.True(gpu.StepGraphCaptures > 0, "no decode step was captured");
        Assert.Equal(0, gpu.StepGraphsHeld);   // the engine's pool went with it, and so did its graphs
        async Task<int[][]> Alone()
        {
            using var engine = new ServingEngine(gpu, EngineOptions);
            var outputs = new int[prompts.Length][];
            for (int i = 0; i < prompts.Length; i++)
                outputs[i] = await Collect(engine.Submit(prompts[i], Params(i), 10, ct: TestContext.Current.CancellationToken));
            return outputs;
        }
        var first = await Alone();
        var second = await Alone();
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(first[i], second[i]);
        Gpu.Log($"engine sampling: {trace.Count} steps; seeded requests alone repeat");
    }

    /// <summary>
    /// The serving step at Llama-3-8B's head layout (32 q / 8 KV heads, head_dim 128) or 70B's (64 q / 8 KV) with prompts long enough that the
    /// prefill launch runs on the paged wgmma kernel on sm_90a (bf16 pool; the fp8 pool on its fp8 entry): the
    /// batched step's last-token logits against the CPU ForwardBatch, then a decode step.
    /// </summary>
    [Theory]
    [InlineData(false, KvCacheDtype.Bf16, 16)]
    [InlineData(true, KvCacheDtype.Bf16, 16)]
    [InlineData(true, KvCacheDtype.Fp8E4M3, 16)]
    [InlineData(false, KvCacheDtype.Bf16, 64)]   // blocks of 64: the warp-specialised paged entry on sm_90a
    [InlineData(true, KvCacheDtype.Bf16, 64)]
    [InlineData(true, KvCacheDtype.Bf16, 64, 64)]     // 70B heads (GQA 8)
    [InlineData(false, KvCacheDtype.Fp8E4M3, 16, 64)]
    public void ForwardBatch_LongPrompts_LlamaHeads_MatchCpu(bool swiftKv, KvCacheDtype dtype, int blockSize, int heads = 32)
    {
        Gpu.Require();
        var spec = new ModelSpec(Hidden: 256, Layers: 4, Heads: heads, KvHeads: 8, HeadDim: 128, Vocab: 97, Intermediate: 320,
            SwiftKvLayers: 2, Seed: 51, MaxPositions: 1024);
        int[] lengths = [300, 257];
        Assert.True(SwiftKV.Cuda.Kernels.AttentionKernel.HopperPays(lengths.Length, lengths.Max(), spec.Heads, spec.KvHeads),
            "the prompts must be long enough for Auto's wgmma rule");
        var weights = TestModels.View(TestModels.Checkpoint(spec), swiftKv);
        using var gpu = new CudaBackend(weights);
        using var cpu = new CpuBackend(CudaBackendTests.RoundToBf16(weights));
        const int numBlocks = 48;
        using var pool = gpu.CreatePagedKvCache(numBlocks, blockSize, dtype);
        using var cpuPool = cpu.CreatePagedKvCache(numBlocks, blockSize);
        var tokens = lengths.Select((n, i) => TestModels.RandomTokens(n + 1, spec.Vocab, spec.Seed + 10 + (ulong)i)).ToArray();
        var rng = new TestRng(spec.Seed);
        var free = Enumerable.Range(0, numBlocks).OrderBy(_ => rng.NextDouble()).ToArray();
        int next = 0;
        var tables = lengths.Select(n => Enumerable.Range(0, n / blockSize + 1).Select(_ => free[next++]).ToArray()).ToArray();
        // fp8 K/V are within the fp8 rule of ForwardBatch_Fp8KvCloseToBf16Kv, not the bf16 one.
        double tol = dtype == KvCacheDtype.Bf16 ? 1e-2 : 1e-1;
        int vocab = spec.Vocab;
        double worst = 0;
        for (int phase = 0; phase < 2; phase++)   // the prompts, then one decode token each
        {
            var batch = lengths.Select((n, i) => phase == 0
                ? new BatchSequence(tokens[i].AsMemory(0, n), 0, tables[i], true)
                : new BatchSequence(tokens[i].AsMemory(n, 1), n, tables[i], true)).ToArray();
            long wsBefore = gpu.WarpSpecializedAttentionLaunches;
            var g = gpu.ForwardBatch(pool, batch);
            var c = cpu.ForwardBatch(cpuPool, batch);
            Assert.Equal(c.Length, g.Length);
            if (phase == 0)   // the prompts' layers that see them whole: warp-specialised for bf16 blocks of >= 64 on Hopper
                Assert.Equal(dtype == KvCacheDtype.Bf16 && blockSize >= 64 && CudaRuntime.Device.Arch == "sm_90a",
                    gpu.WarpSpecializedAttentionLaunches > wsBefore);
            for (int r = 0; r < lengths.Length; r++)
                worst = Math.Max(worst, RowError(g.AsSpan(r * vocab, vocab), c.AsSpan(r * vocab, vocab),
                    $"sequence {r} phase {phase} ({dtype}, blocks of {blockSize}, swiftkv {swiftKv}) vs CPU ForwardBatch", tol));
        }
        Gpu.Log($"long prompts, {heads} q heads ({spec}, swiftkv {swiftKv}, {dtype}): worst row vs CPU ForwardBatch (bf16 weights) {worst:E2}");
    }

    /// <summary>
    /// SingleInputKV's unfused route in row chunks: with SwiftKvChunkBytes lowered, a 600-token prompt's later caches are
    /// written in 128-row GEMMs (two steps of 300 on the one-at-a-time path, one of 600 in the serving step). Last-token
    /// logits and one decode step after each against the CPU backend; the workspace holds one chunk, not the prompt.
    /// </summary>
    [Fact]
    public void SingleInputKv_InRowChunks_MatchesCpu()
    {
        Gpu.Require();
        var spec = new ModelSpec(Hidden: 256, Layers: 6, Heads: 32, KvHeads: 8, HeadDim: 128, Vocab: 97, Intermediate: 320,
            RopeScaling: true, SwiftKvLayers: 2, GroupSize: 2, Seed: 54, MaxPositions: 1024);
        var weights = TestModels.View(TestModels.Checkpoint(spec), true);
        using var gpu = new CudaBackend(weights) { UseFusedQkv = false, SwiftKvChunkBytes = 1 };
        using var cpu = new CpuBackend(CudaBackendTests.RoundToBf16(weights));
        Assert.Equal(128, gpu.SwiftKvChunkRows);
        const int length = 600;
        var tokens = TestModels.RandomTokens(length + 1, spec.Vocab, 154);
        int vocab = spec.Vocab;
        long chunkBytes = 128L * 2 * 2 * spec.KvHeads * spec.HeadDim * sizeof(float);   // 2 AcrossKV leaders

        using (var gc = gpu.CreateCache(length + 1))
        using (var cc = cpu.CreateCache(length + 1))
        {
            // Two steps of 300: the second one's chunks start at cache position 300, not 0.
            for (int k = 0; k < 2; k++)
                RowError(gpu.Forward(gc, tokens.AsSpan(k * 300, 300), LogitsSelection.LastToken), cpu.Forward(cc, tokens.AsSpan(k * 300, 300), LogitsSelection.LastToken),
                    $"one-at-a-time prefill step {k}, SingleInputKV in 128-row chunks");
            Assert.Equal(chunkBytes, gpu.SwiftKvWorkspaceBytes);
            RowError(gpu.Forward(gc, tokens.AsSpan(length, 1), LogitsSelection.LastToken), cpu.Forward(cc, tokens.AsSpan(length, 1), LogitsSelection.LastToken),
                "one-at-a-time decode after the chunked prefill");
        }

        const int blockSize = 16, numBlocks = 40;
        using var pool = gpu.CreatePagedKvCache(numBlocks, blockSize);
        using var cpuPool = cpu.CreatePagedKvCache(numBlocks, blockSize);
        var table = Enumerable.Range(0, length / blockSize + 1).Select(i => numBlocks - 1 - i).ToArray();
        for (int phase = 0; phase < 2; phase++)
        {
            BatchSequence[] batch = phase == 0
                ? [new BatchSequence(tokens.AsMemory(0, length), 0, table, true)]
                : [new BatchSequence(tokens.AsMemory(length, 1), length, table, true)];
            var g = gpu.ForwardBatch(pool, batch);
            var c = cpu.ForwardBatch(cpuPool, batch);
            RowError(g.AsSpan(0, vocab), c.AsSpan(0, vocab), $"serving step phase {phase}, SingleInputKV in 128-row chunks");
        }
        Assert.Equal(chunkBytes, gpu.SwiftKvWorkspaceBytes);
        Gpu.Log($"SingleInputKV in 128-row chunks: solo and serving step match the CPU; workspace {gpu.SwiftKvWorkspaceBytes} B");
    }

    /// <summary>max|actual - expected| / max|expected| of one logits row, asserted <= <paramref name="tolerance"/> (the bf16 rule by default); NaN fails.</summary>
    static double RowError(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, string what, double tolerance = 1e-2)
    {
        Assert.Equal(expected.Length, actual.Length);
        double maxE = 0, maxD = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.False(float.IsNaN(actual[i]), $"{what}: NaN at {i}");
            maxE = Math.Max(maxE, Math.Abs(expected[i]));
            maxD = Math.Max(maxD, Math.Abs(actual[i] - expected[i]));
        }
        double rel = maxD / maxE;
        Assert.True(rel <= tolerance, $"{what}: max|diff|/max|ref| = {rel:E3}");
        return rel;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ForwardBatch_MixedStep_SplitAttentionAndProfilerMatchOneLaunch(bool swiftKv)
    {
        // A mixed step whose decode tokens sit between prefill chunks: split (decodes reordered first, two attention
        // launches) against one launch in batch order, the same K/V state before each, with the profiler recording.
        Gpu.Require();
        var spec = new ModelSpec(Hidden: 128, Heads: 8, KvHeads: 2, HeadDim: 64, SwiftKvLayers: 2, Seed: 49);
        using var gpu = new CudaBackend(TestModels.View(TestModels.Checkpoint(spec), swiftKv));
        using var profiler = new CudaStepProfiler(every: 1);
        const int blockSize = 4;
        int[] lengths = [9, 23, 5, 17, 3, 30];
        var tokens = lengths.Select((n, i) => TestModels.RandomTokens(n, spec.Vocab, spec.Seed + (ulong)i)).ToArray();
        int next = 0;
        var tables = lengths.Select(n => Enumerable.Range(0, (n + blockSize - 1) / blockSize).Select(_ => next++).ToArray()).ToArray();
        BatchSequence[] Prefill() => [.. lengths.Select((n, i) => new BatchSequence(tokens[i].AsMemory(0, n - 1), 0, tables[i], false))];
        // Mixed: sequences 0, 2, 4 decode their last token; 1, 3, 5 bring a chunk ending their prompt (varied lengths).
        BatchSequence[] Mixed() => [.. lengths.Select((n, i) => i % 2 == 0
            ? new BatchSequence(tokens[i].AsMemory(n - 1, 1), n - 1, tables[i], true)
            : new BatchSequence(tokens[i].AsMemory(0, n), 0, tables[i], true))];

        float[] Run(bool split)
        {
            using var pool = gpu.CreatePagedKvCache(next + 1, blockSize);
            gpu.SplitMixedAttention = split;
            gpu.ForwardBatch(pool, Prefill());
            gpu.StepProfiler = profiler;
            var logits = gpu.ForwardBatch(pool, Mixed());
            gpu.StepProfiler = null;
            return logits;
        }
        var one = Run(split: false);
        var two = Run(split: true);
        gpu.SplitMixedAttention = true;
        Assert.Equal(lengths.Length * spec.Vocab, two.Length);
        double worst = 0;
        for (int r = 0; r < lengths.Length; r++)
            worst = Math.Max(worst, RowError(two.AsSpan(r * spec.Vocab, spec.Vocab), one.AsSpan(r * spec.Vocab, spec.Vocab), $"row {r} split vs one launch"));
        Assert.Equal(2, profiler.Steps["mixed"]);
        Assert.True(profiler.MeanMs("mixed", "attention, layers 0..l-1") > 0);
        Assert.True(profiler.MeanMs("mixed", "norm+lm_head") > 0);
        Assert.Contains("attention, layers 0..l-1", profiler.ToMarkdown());
        Gpu.Log($"mixed step split vs one launch (swiftkv {swiftKv}): worst row {worst:E2}\n{profiler.ToMarkdown()}");
    }

    [Fact]
    public void KvBytesAndPool_ShrinkWithAcrossKvAndReturnMemory()
    {
        Gpu.Require();
        var spec = new ModelSpec(Hidden: 128, Heads: 4, KvHeads: 2, HeadDim: 64, Layers: 6, SwiftKvLayers: 2, GroupSize: 2, Seed: 45);
        var full = TestModels.Checkpoint(spec);
        using var off = new CudaBackend(TestModels.View(full, false));
        using var on = new CudaBackend(TestModels.View(full, true));
        long kvDim = spec.KvHeads * spec.HeadDim;
        Assert.Equal(2 * 6 * kvDim * 2, off.KvBytesPerToken);
        Assert.Equal(2 * (2 + 2) * kvDim * 2, on.KvBytesPerToken);   // 2 full layers + 2 AcrossKV groups
        CudaRuntime.Synchronize();
        long before = DeviceMemory.AllocatedBytes;
        var pool = on.CreatePagedKvCache(1000, 16);
        Assert.Equal(4, pool.NumCaches);
        Assert.Equal(on.KvBytesPerToken * 16, pool.BytesPerBlock);
        Assert.Equal(before + pool.BytesPerBlock * 1000, DeviceMemory.AllocatedBytes);
        pool.Dispose();
        Assert.Equal(before, DeviceMemory.AllocatedBytes);
        Assert.Throws<ArgumentException>(() => on.CreatePagedKvCache(10, 12));
        using var tiny = new CudaBackend(TestModels.Build(new ModelSpec(Seed: 46)));   // head_dim 12: no paged kernel
        Assert.False(tiny.SupportsBatchedStep);
        Assert.Throws<NotSupportedException>(() => tiny.CreatePagedKvCache(10, 16));
    }

    /// <summary>
    /// The fp8 KV pool (KvCacheDtype.Fp8E4M3) against the bf16 pool on the same model and steps: every logits row
    /// within max|fp8 - bf16| / max|bf16| <= 1e-1 (e4m3 keeps 3 mantissa bits: ~3% RMS per stored element, carried
    /// through every layer of these small random models; H100 measured 4.1e-2 and 5.1e-2), pool bytes as KvBytesPerTokenOf says, and a serving engine with the option sizes its pool by it.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ForwardBatch_Fp8KvCloseToBf16Kv(bool acrossKv)
    {
        Gpu.Require();
        var spec = acrossKv
            ? new ModelSpec(Hidden: 128, Heads: 2, KvHeads: 1, HeadDim: 128, Layers: 6, SwiftKvLayers: 2, GroupSize: 2, Tied: true, Seed: 44)
            : new ModelSpec(Hidden: 128, Heads: 8, KvHeads: 2, HeadDim: 64, SwiftKvLayers: 2, Bias: true, RopeScaling: true, Seed: 43);
        using var gpu = new CudaBackend(TestModels.View(TestModels.Checkpoint(spec), true));
        const int blockSize = 4, numBlocks = 64;
        long kvDim = spec.KvHeads * spec.HeadDim;
        int caches = gpu.Config.NumKvCaches(true);
        Assert.Equal(2 * caches * (kvDim + 4 * spec.KvHeads), gpu.KvBytesPerTokenOf(KvCacheDtype.Fp8E4M3));
        Assert.Equal(gpu.KvBytesPerToken, gpu.KvBytesPerTokenOf(KvCacheDtype.Bf16));
        CudaRuntime.Synchronize();
        long before = DeviceMemory.AllocatedBytes;
        using var fp8 = (CudaPagedKvCache)gpu.CreatePagedKvCache(numBlocks, blockSize, KvCacheDtype.Fp8E4M3);
        Assert.Equal(KvCacheDtype.Fp8E4M3, fp8.Dtype);
        Assert.Equal(gpu.KvBytesPerTokenOf(KvCacheDtype.Fp8E4M3) * blockSize, fp8.BytesPerBlock);
        Assert.Equal(before + fp8.Bytes, DeviceMemory.AllocatedBytes);
        using var bf16 = gpu.CreatePagedKvCache(numBlocks, blockSize);

        int[] lengths = [14, 10, 6, 2, 7];
        var tokens = lengths.Select((n, i) => TestModels.RandomTokens(n, spec.Vocab, spec.Seed + 10 + (ulong)i)).ToArray();
        int next = 0;
        var tables = lengths.Select(n => Enumerable.Range(0, (n + blockSize - 1) / blockSize).Select(_ => next++ * 3 % numBlocks).ToArray()).ToArray();
        Chunk[][] steps =
        [
            [new(0, 0, 7, false), new(1, 0, 9, true), new(2, 0, 5, true)],
            [new(0, 7, 6, true), new(1, 9, 1, true), new(2, 5, 1, true), new(3, 0, 1, true), new(4, 0, 3, false)],
            [new(4, 3, 4, true), new(0, 13, 1, true), new(3, 1, 1, true)],
        ];
        double worst = 0;
        int vocab = spec.Vocab;
        foreach (var step in steps)
        {
            var batch = step.Select(c => new BatchSequence(tokens[c.Seq].AsMemory(c.Start, c.Count), c.Start, tables[c.Seq], c.Logits)).ToArray();
            var a = gpu.ForwardBatch(fp8, batch);
            var b = gpu.ForwardBatch(bf16, batch);
            Assert.Equal(b.Length, a.Length);
            for (int r = 0; r < a.Length / vocab; r++)
                worst = Math.Max(worst, RowError(a.AsSpan(r * vocab, vocab), b.AsSpan(r * vocab, vocab),
                    $"acrossKv {acrossKv} row {r}: fp8 vs bf16 KV", 1e-1));
        }
        Gpu.Log($"fp8 vs bf16 KV pool (acrossKv {acrossKv}, {spec}): worst logits row {worst:E2}");

        using var engine = new ServingEngine(gpu, new ServingOptions { BlockSize = 4, NumKvBlocks = 32, MaxBatchTokens = 64, KvCacheDtype = KvCacheDtype.Fp8E4M3 });
        Assert.Equal(gpu.KvBytesPerTokenOf(KvCacheDtype.Fp8E4M3) * 4, engine.Metrics.KvBytesPerBlock);
    }

    [Fact]
    public void ForwardBatch_RejectsBadInput()
    {
        Gpu.Require();
        var spec = new ModelSpec(Hidden: 128, Heads: 4, KvHeads: 2, HeadDim: 64, Seed: 47);
        using var gpu = new CudaBackend(TestModels.Build(spec));
        using var cpu = new CpuBackend(TestModels.Build(spec));
        var pool = gpu.CreatePagedKvCache(8, 4);
        using var foreign = cpu.CreatePagedKvCache(8, 4);
        BatchSequence Seq(int[] t, int start, int[] table) => new(t, start, table, true);
        Assert.Throws<ArgumentException>(() => gpu.ForwardBatch(foreign, [Seq([1], 0, [0])]));
        Assert.Throws<ArgumentException>(() => gpu.ForwardBatch(pool, []));
        Assert.Throws<ArgumentException>(() => gpu.ForwardBatch(pool, [Seq([], 0, [0])]));
        Assert.Throws<ArgumentException>(() => gpu.ForwardBatch(pool, [Seq([spec.Vocab], 0, [0])]));
        Assert.Throws<ArgumentException>(() => gpu.ForwardBatch(pool, [Seq([1, 2, 3, 4, 5], 0, [0])]));   // table too short
        Assert.Throws<ArgumentException>(() => gpu.ForwardBatch(pool, [Seq([1], 0, [8])]));               // block outside the pool
        Assert.Throws<ArgumentException>(() => gpu.ForwardBatch(pool, [Seq([1], -1, [0])]));
        Assert.Single(gpu.ForwardBatchGreedy(pool, [Seq([1, 2], 0, [3])]));
        pool.Dispose();
        Assert.Throws<ObjectDisposedException>(() => gpu.ForwardBatch(pool, [Seq([1], 0, [0])]));
    }

    static readonly ModelSpec EngineModel = new(Hidden: 128, Heads: 8, KvHeads: 2, HeadDim: 64, Layers: 6, SwiftKvLayers: 3, GroupSize: 3, Vocab: 211, Seed: 48);

    static ServingOptions EngineOptions => new()
    {
        BlockSize = 16, NumKvBlocks = 160, MaxBatchTokens = 48, MaxRunningSequences = 64, MaxSequenceLength = 256,
    };

    [Fact]
    public async Task ServingEngine_BatchedGreedyEqualsSoloRuns()
    {
        Gpu.Require();
        using var gpu = new CudaBackend(TestModels.Build(EngineModel));
        var rng = new TestRng(7);
        var shared = TestModels.RandomTokens(40, EngineModel.Vocab, 99);
        var prompts = Enumerable.Range(0, 40).Select(i => i % 8 == 0
            ? shared.Concat(TestModels.RandomTokens(3 + i % 5, EngineModel.Vocab, 200 + (ulong)i)).ToArray()   // shared prefix: prefix-cache hits
            : TestModels.RandomTokens(2 + rng.Next(60), EngineModel.Vocab, 300 + (ulong)i)).ToArray();
        // Two requests with a penalty: their steps take the host-logits path instead of the device argmax.
        SamplingParams Params(int i) => i % 13 == 5 ? new SamplingParams { FrequencyPenalty = 0.5f } : SamplingParams.Greedy;
        const int maxTokens = 16;

        int[][] batched;
        using (var engine = new ServingEngine(gpu, EngineOptions))
        {
            var requests = prompts.Select((p, i) => engine.Submit(p, Params(i), maxTokens, ct: TestContext.Current.CancellationToken)).ToArray();
            batched = await Task.WhenAll(requests.Select(Collect));
            Assert.True(engine.Metrics.PrefixCacheHitTokens > 0, "no prefix-cache hit among the shared-prefix requests");
        }
        var solo = new int[prompts.Length][];
        using (var engine = new ServingEngine(gpu, EngineOptions with { EnablePrefixCaching = false }))
            for (int i = 0; i < prompts.Length; i++)
                solo[i] = await Collect(engine.Submit(prompts[i], Params(i), maxTokens, ct: TestContext.Current.CancellationToken));

        int exact = 0;
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.Equal(maxTokens, batched[i].Length);
            int d = Enumerable.Range(0, maxTokens).FirstOrDefault(k => batched[i][k] != solo[i][k], -1);
            if (d < 0) { exact++; continue; }
            // Differ only where the solo logits of the two tokens are within bf16 noise.
            using var cache = gpu.CreateCache(256);
            var logits = gpu.Forward(cache, prompts[i].Concat(solo[i].Take(d)).ToArray(), LogitsSelection.LastToken);
            double max = logits.Max(Math.Abs), gap = Math.Abs(logits[solo[i][d]] - logits[batched[i][d]]);
            Assert.True(gap <= 2e-2 * max, $"request {i}: batched output differs from solo at token {d} ({batched[i][d]} vs {solo[i][d]}) with a solo logit gap {gap:E3} (max|logit| {max:E3})");
        }
        Gpu.Log($"engine batch invariance: {exact}/{prompts.Length} requests token-identical to their solo runs, the rest differ only at near-ties");
    }

    /// <summary>
    /// Options that leave the step shape open (as the IChatClient does) take the CUDA backend's: 64-position blocks for
    /// bf16 pools on Hopper at head_dim 128 (16 elsewhere and for fp8 pools), 8192 tokens per step on cards with >= 64
    /// GiB and >= 32 GiB beyond the weights (2048 otherwise). A 700-token prompt then prefills in one step over those blocks, and its greedy output agrees
    /// with the engine's former shape (16-position blocks, 64-token chunks) up to near-ties.
    /// </summary>
    [Fact]
    public async Task ServingEngine_DefaultStepShape_IsTheBackendsAndAgreesWithSmallChunks()
    {
        Gpu.Require();
        var spec = new ModelSpec(Hidden: 256, Heads: 4, KvHeads: 2, HeadDim: 128, Layers: 4, SwiftKvLayers: 2, Vocab: 211, Seed: 52, MaxPositions: 1024);
        using var gpu = new CudaBackend(TestModels.Build(spec));
        bool hopper = CudaRuntime.Device.Arch == "sm_90a";
        int expectBlock = hopper ? 64 : 16, expectTokens = CudaRuntime.Device.TotalMemoryBytes >= 64L << 30 && CudaRuntime.Device.TotalMemoryBytes - gpu.WeightBytes >= 32L << 30 ? 8192 : 2048;
        Assert.Equal((expectBlock, 16, expectTokens), (gpu.PreferredBlockSize(KvCacheDtype.Bf16), gpu.PreferredBlockSize(KvCacheDtype.Fp8E4M3), gpu.PreferredMaxBatchTokens));
        var prompt = TestModels.RandomTokens(700, spec.Vocab, 17);
        const int maxTokens = 12;
        var steps = new System.Collections.Concurrent.ConcurrentQueue<ServingStepTrace>();
        int[] big, small;
        using (var engine = new ServingEngine(gpu, new ServingOptions { NumKvBlocks = 4096 / expectBlock, MaxSequenceLength = 1024, StepObserver = steps.Enqueue }))
        {
            Assert.Equal((expectBlock, expectTokens, Math.Min(128, gpu.MaxSequencesPerStep)), (engine.BlockSize, engine.MaxBatchTokens, engine.MaxRunningSequences));
            big = await Collect(engine.Submit(prompt, SamplingParams.Greedy, maxTokens, ct: TestContext.Current.CancellationToken));
        }
        Assert.Equal(700, steps.First().Tokens);   // the whole prompt in the first step
        using (var engine = new ServingEngine(gpu, new ServingOptions { BlockSize = 16, MaxBatchTokens = 64, NumKvBlocks = 256, MaxSequenceLength = 1024 }))
            small = await Collect(engine.Submit(prompt, SamplingParams.Greedy, maxTokens, ct: TestContext.Current.CancellationToken));
        Assert.Equal(maxTokens, big.Length);
        int d = Enumerable.Range(0, maxTokens).FirstOrDefault(k => big[k] != small[k], -1);
        if (d >= 0)
        {
            using var cache = gpu.CreateCache(1024);
            var logits = gpu.Forward(cache, prompt.Concat(small.Take(d)).ToArray(), LogitsSelection.LastToken);
            double max = logits.Max(Math.Abs), gap = Math.Abs(logits[small[d]] - logits[big[d]]);
            Assert.True(gap <= 2e-2 * max, $"default step shape differs from 16-position blocks / 64-token chunks at token {d} ({big[d]} vs {small[d]}) with a logit gap {gap:E3} (max|logit| {max:E3})");
        }
        Gpu.Log($"default step shape: block {expectBlock}, {expectTokens} tokens/step; greedy output {(d < 0 ? "identical to" : $"first differs at token {d} from")} the 16 / 64 shape");
    }

    /// <summary>
    /// The KV budget left open (KvCacheBytes null, as the IChatClient does): the pool takes most of the memory free
    /// after the weights, the reserve stays free, a step of the engine's full token budget and decode steps still run
    /// beside the pool (the workspace grew before the pool was sized), a second engine whose workspace cannot fit is
    /// refused with a message naming MaxBatchTokens, and disposing the engine gives the pool back.
    /// </summary>
    [Fact]
    public async Task ServingEngine_AutoKvBudget_TakesFreeMemory_StepsStillRun_GivesItBack()
    {
        Gpu.Require();
        // 16 layers of 2 x 128-dim KV heads: 16 KiB per position, so 128 sequences of 128K positions (the cap) need more than any card has.
        var spec = new ModelSpec(Hidden: 256, Heads: 4, KvHeads: 2, HeadDim: 128, Layers: 16, Vocab: 211, Seed: 53, MaxPositions: 131072);
        using var gpu = new CudaBackend(TestModels.Build(spec));
        CudaRuntime.Synchronize();
        long freeBefore = CudaRuntime.MemoryInfo().Free;
        const long reserve = 2L << 30;
        using (var engine = new ServingEngine(gpu, new ServingOptions()))
        {
            Assert.Null(engine.Options.KvCacheBytes);
            long free = CudaRuntime.MemoryInfo().Free;
            // The pool is 0.9 x (free - workspace - reserve), so what stays free is 0.1 x (free - workspace) + 0.9 x reserve
            // less what the engine allocated after sizing it: the reserve read back from memory, a little under 2 GiB (the
            // earlier rule, 2 GiB or 5% of the card, left 4 GiB on an H100 and 7 GiB on an H200).
            double reserveSeen = (free - 0.1 * freeBefore) / 0.9;
            Gpu.Log($"auto KV budget: {engine.KvCacheBytes / (1 << 20)} MiB of {freeBefore / (1 << 20)} MiB free before; {free / (1 << 20)} MiB free after (reserve read back {reserveSeen / (1 << 20):F0} MiB)");
            Assert.InRange(engine.KvCacheBytes, (long)(0.8 * (freeBefore - reserve)), freeBefore - reserve);
            Assert.True(free >= reserve, $"only {free} bytes left free next to the pool; the reserve is {reserve}");
            Assert.InRange(reserveSeen, reserve - (768L << 20), reserve + (64L << 20));
            var prompt = TestModels.RandomTokens(engine.MaxBatchTokens, spec.Vocab, 23);
            var outputs = await Task.WhenAll(Enumerable.Range(0, 3).Select(i =>
                Collect(engine.Submit(i == 0 ? prompt : prompt[..(100 * i)], SamplingParams.Greedy, 6, ct: TestContext.Current.CancellationToken))));
            Assert.All(outputs, o => Assert.Equal(6, o.Length));
            // A second engine whose step workspace cannot fit beside the pool is refused up front, naming what to lower.
            var e = Assert.Throws<InvalidOperationException>(() => new ServingEngine(gpu, new ServingOptions { MaxBatchTokens = 1 << 23, NumKvBlocks = 4 }));
            Assert.Contains("MaxBatchTokens", e.Message);
            Assert.True(e.InnerException is CudaException { IsOutOfMemory: true }, e.ToString());
        }
        CudaRuntime.Synchronize();
        long freeAfter = CudaRuntime.MemoryInfo().Free;
        // The backend keeps its grown workspace (tens of MB here); the pool itself is gone.
        Assert.True(freeAfter >= freeBefore - (512L << 20), $"free memory {freeAfter} after disposing the engine, {freeBefore} before it started");
    }

    /// <summary>
    /// Engines made and disposed on a backend while another engine serves on it (each reserves and warms its workspace,
    /// holding the backend for that time) make the serving engine's steps wait their turn: none of its requests fails,
    /// and each gets all its tokens. Before, a step that met the busy backend failed every request in it.
    /// </summary>
    [Fact]
    public async Task ServingEngine_EnginesMadeBesideIt_DoNotFailItsRequests()
    {
        Gpu.Require();
        using var gpu = new CudaBackend(TestModels.Build(EngineModel));
        var ct = TestContext.Current.CancellationToken;
        using var serving = new ServingEngine(gpu, EngineOptions);
        var prompts = Enumerable.Range(0, 8).Select(i => TestModels.RandomTokens(20 + 7 * i, EngineModel.Vocab, 700 + (ulong)i)).ToArray();
        var all = Task.WhenAll(prompts.Select(p => Collect(serving.Submit(p, SamplingParams.Greedy, 60, new HashSet<int>(), ct))));
        int made = 0;
        while (!all.IsCompleted && made < 50)
        {
            using (new ServingEngine(gpu, EngineOptions with { NumKvBlocks = 16, MaxBatchTokens = 300 + 16 * made })) made++;
        }
        var outputs = await all;   // throws if any request failed
        Assert.All(outputs, o => Assert.Equal(60, o.Length));
        Assert.True(made > 0, "no engine was made while the requests ran");
        Gpu.Log($"{made} engines made and disposed beside one serving 8 requests: every request got its 60 tokens");
    }

    /// <summary>
    /// Disposing the backend while a batched step runs on another thread waits for that step: the step returns its
    /// logits or, started after the dispose, is refused with ObjectDisposedException; nothing else (no CUDA error from
    /// freed memory).
    /// </summary>
    [Fact]
    public void Dispose_DuringAStepOnAnotherThread_WaitsForIt()
    {
        Gpu.Require();
        var spec = new ModelSpec(Hidden: 256, Layers: 4, Heads: 32, KvHeads: 8, HeadDim: 128, Vocab: 97, Intermediate: 320, Seed: 35, MaxPositions: 2048);
        var gpu = new CudaBackend(TestModels.Build(spec));
        var pool = gpu.CreatePagedKvCache(96, 16);
        var prompt = TestModels.RandomTokens(1500, spec.Vocab, 8);
        var batch = new[] { new BatchSequence(prompt, 0, Enumerable.Range(0, 94).ToArray(), true) };
        int ran = 0;
        var errors = new System.Collections.Concurrent.ConcurrentQueue<Exception>();
        var worker = new Thread(() =>
        {
            for (int i = 0; i < 1000; i++)
            {
                try
                {
                    gpu.ForwardBatch(pool, batch);
                    ran++;
                }
                catch (ObjectDisposedException)
                {
                    return;
                }
                catch (Exception e)
                {
                    errors.Enqueue(e);
                    return;
                }
            }
        });
        worker.Start();
        while (Volatile.Read(ref ran) < 2) Thread.Sleep(1);
        gpu.Dispose();   // while the worker is (most likely) inside a step
        Assert.True(worker.Join(TimeSpan.FromSeconds(60)), "the worker did not stop after the dispose");
        Assert.Empty(errors);
        Assert.Throws<ObjectDisposedException>(() => gpu.ForwardBatch(pool, batch));
        pool.Dispose();
        gpu.Dispose();   // again: nothing left to do
    }

    static async Task<int[]> Collect(ServingRequest r)
    {
        var list = new List<int>();
        await foreach (int t in r.ReadAllAsync()) list.Add(t);
        await r.Completion;
        return list.ToArray();
    }

    [Fact]
    public async Task ServingEngine_CancellationFreesBlocksAndNothingLeaks()
    {
        Gpu.Require();
        using (var warm = new CudaBackend(TestModels.Build(EngineModel)))
        using (var e = new ServingEngine(warm, EngineOptions))
            await Collect(e.Submit([1, 2, 3], SamplingParams.Greedy, 2, ct: TestContext.Current.CancellationToken));
        CudaRuntime.Synchronize();
        long before = DeviceMemory.AllocatedBytes;

        var gpu = new CudaBackend(TestModels.Build(EngineModel));
        var engine = new ServingEngine(gpu, EngineOptions);
        var keep = Enumerable.Range(0, 6).Select(i => engine.Submit(TestModels.RandomTokens(20 + i, EngineModel.Vocab, 500 + (ulong)i), SamplingParams.Greedy, 24,
            ct: TestContext.Current.CancellationToken)).ToArray();
        var victim = engine.Submit(TestModels.RandomTokens(90, EngineModel.Vocab, 600), SamplingParams.Greedy, 150, ct: TestContext.Current.CancellationToken);
        int seen = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (int _ in victim.ReadAllAsync(TestContext.Current.CancellationToken))
                if (++seen == 3) victim.Cancel();
        });
        Assert.Equal(3, seen);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => victim.Completion);
        foreach (var r in keep) Assert.Equal(24, (await Collect(r)).Length);
        for (int i = 0; i < 200 && (engine.Metrics.KvBlocksUsed != 0 || engine.Metrics.RunningSequences != 0); i++) await Task.Delay(10, TestContext.Current.CancellationToken);
        Assert.Equal(0, engine.Metrics.KvBlocksUsed);
        Assert.Equal(0, engine.Metrics.RunningSequences);
        engine.Dispose();
        gpu.Dispose();
        CudaRuntime.Synchronize();
        Assert.Equal(before, DeviceMemory.AllocatedBytes);
    }
}
