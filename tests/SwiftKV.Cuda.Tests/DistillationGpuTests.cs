// The GPU distillation trainer against independent references:
//  - PyTorch autograd in float64 (tests/fixtures/distill): the loss, every gradient, and the tensors after three Adam
//    steps, with exact fp32 GEMMs (the CPU trainer's tolerances) and with TF32 GEMMs (looser: 10-bit mantissas);
//  - the CPU trainer on random checkpoints in shapes the fixtures do not cover (AcrossKV g = 1/3, MQA, biases, tied
//    embeddings, 90- and 300-token sequences, the hidden-state term): loss, top-1 agreement and every gradient;
//  - the whole `distill` run on the GPU: the loss goes down and the checkpoint is written;
//  - bad input is refused before any work, and the trainer gives back all its GPU memory.
using Xunit;
using SwiftKV.Engine;
using SwiftKV.Engine.Distillation;
using SwiftKV.Engine.Tests.Distillation;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;

namespace SwiftKV.Cuda.Tests;

public sealed class DistillationGpuTests : IDisposable
{
    readonly string _root = Path.Combine(Path.GetTempPath(), "swiftkv-distill-gpu-" + Guid.NewGuid().ToString("N"));

    public static TheoryData<string, bool> FixtureCases()
    {
        var data = new TheoryData<string, bool>();
        foreach (var c in DistillationFixture.Cases()) { data.Add(c.Data, false); data.Add(c.Data, true); }
        return data;
    }

    [Fact]
    public void Fixtures_ArePresent() => Assert.Equal(6, FixtureCases().Count);

    [Theory]
    [MemberData(nameof(FixtureCases))]
    public void GradientsAndAdamSteps_MatchPyTorch(string name, bool tf32)
    {
        Gpu.Require();
        using var fixture = DistillationFixture.Open(name);
        var (teacher, student) = fixture.Load();
        // TF32 runs as distill runs it, the batch's two sequences packed into one pass; fp32 one sequence a pass.
        using var trainer = new CudaDistillationTrainer(teacher, student, fixture.Temperature, fixture.HiddenLossWeight, tf32, packRows: tf32 ? 4096 : 0);
        Assert.Equal(fixture.TensorNames, trainer.ReadParameters().Named().Select(t => t.Name));
        var first = trainer.TrainStep(fixture.Batch, fixture.LearningRate, TestContext.Current.CancellationToken);
        // TF32 rounds every GEMM input to 10 mantissa bits (2^-11 relative): the loss and gradients move by about that much
        // times the depth of the chain they went through.
        double gradTol = tf32 ? 2e-2 : 1e-4, afterTol = tf32 ? 2e-2 : 1e-3;
        Assert.Equal(fixture.Loss, first.Loss, (tf32 ? 1e-3 : 1e-5) * fixture.Loss);
        DistillationFixture.AssertTensors(fixture.Gradients, trainer.ReadGradients(), gradTol, $"{name} gradient ({(tf32 ? "TF32" : "fp32")})", Gpu.Log);
        for (int s = 1; s < fixture.Steps; s++) trainer.TrainStep(fixture.Batch, fixture.LearningRate, TestContext.Current.CancellationToken);
        var after = trainer.ReadParameters();
        if (tf32)
        {
            // A key bias barely moves the scores (it adds the same q·b to every key of a query, up to RoPE's turn), so its
            // true gradient is close to 0, and Adam's first steps scale whatever is there to a full step of ±lr: TF32's
            // rounding noise then decides its direction (measured: 15% off after 3 steps, every other tensor within
            // 0.8%). Those tensors are left out of this check; their gradients are checked above with the rest.
            var expected = fixture.After;
            int at = 0;
            foreach (var (tensor, values) in after.Named())
            {
                if (tensor.EndsWith("k_proj_swiftkv.bias", StringComparison.Ordinal)) Array.Copy(expected, at, values, 0, values.Length);
                at += values.Length;
            }
        }
        DistillationFixture.AssertTensors(fixture.After, after, afterTol, $"{name} after {fixture.Steps} Adam steps ({(tf32 ? "TF32, key biases left out" : "fp32")})", Gpu.Log);
    }

    /// <param name="bf16">Write the checkpoint in BF16, as real ones are: the GPU trainer then holds its frozen matrices in bf16.</param>
    string MakeStudent(int layers, int l, int g, bool bias, bool tied, int kvHeads, int seed = 5, int headDim = 8, int vocab = 96, int hidden = 32, bool bf16 = false)
    {
        string tag = $"{seed}{bias}{tied}{layers}{kvHeads}-{headDim}-{vocab}-{hidden}{(bf16 ? "-bf16" : "")}";
        string baseDir = Path.Combine(_root, "base" + tag), dir = Path.Combine(_root, $"skv{l}{g}" + tag);
        var config = ModelPresets.Get("tiny") with
        {
            VocabSize = vocab, NumHiddenLayers = layers, AttentionBias = bias, TieWordEmbeddings = tied,
            HiddenSize = hidden, NumAttentionHeads = 4, NumKeyValueHeads = kvHeads, HeadDim = headDim, IntermediateSize = 48,
        };
        ModelMaker.Write(baseDir, config.Validate(), new ModelMakerOptions { Seed = (ulong)seed, Dtype = bf16 ? TensorDtype.BF16 : TensorDtype.F32, InitStd = 0.3f });
        SwiftKvConverter.Convert(baseDir, dir, l, g);
        return dir;
    }

    static (LlamaWeights Teacher, LlamaWeights Student) Load(string dir)
    {
        var config = LlamaConfig.Load(dir);
        using var checkpoint = SafetensorsCheckpoint.Open(dir);
        return Distiller.LoadTeacherAndStudent(dir, config, checkpoint);
    }

    static List<DistillationSequence> RandomBatch(int seed, int count, int length, int vocab)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, count).Select(i =>
        {
            int n = length - 3 * i;
            var tokens = Enumerable.Range(0, n).Select(_ => r.Next(vocab)).ToArray();
            return new DistillationSequence(tokens, tokens.Select((_, t) => t < n - 1 && r.Next(4) != 0).ToArray());
        }).ToList();
    }

    [Theory]
    [InlineData(4, 2, 1, false, false, 2, 13, 0f)]
    [InlineData(6, 2, 2, true, true, 2, 13, 0f)]
    [InlineData(7, 1, 3, false, false, 1, 90, 0f)]
    [InlineData(6, 2, 2, true, false, 2, 15, 0.7f)]
    [InlineData(5, 3, 2, false, true, 4, 300, 0.3f)]
    [InlineData(4, 2, 1, true, false, 2, 40, 0.5f, 80, 2000)]   // head_dim 80 (not a power of two), a vocabulary of 2000
    [InlineData(6, 2, 2, true, true, 2, 13, 0f, 8, 96, true)]   // a BF16 checkpoint: the frozen matrices held in bf16
    [InlineData(5, 3, 2, false, false, 4, 300, 0.3f, 8, 96, true)]
    [InlineData(6, 2, 2, true, true, 2, 13, 0f, 8, 96, true, false)]   // a BF16 checkpoint held in fp32, as distill does where that fits
    public void LossAndGradients_MatchTheCpuTrainer(int layers, int l, int g, bool bias, bool tied, int kvHeads, int length, float hiddenLossWeight,
        int headDim = 8, int vocab = 96, bool bf16 = false, bool frozenInBf16 = true)
    {
        Gpu.Require();
        string dir = MakeStudent(layers, l, g, bias, tied, kvHeads, headDim: headDim, vocab: vocab, hidden: headDim == 8 ? 32 : 64, bf16: bf16);
        var batch = RandomBatch(7, 3, length, vocab);

        var (ct, cs) = Load(dir);
        var cpu = new DistillationModel(ct, cs, 2f, hiddenLossWeight);
        var cpuGrads = cpu.Parameters.ZerosLike();
        var cpuScore = Distiller.TrainStep(cpu, new Adam(cpu.Parameters), cpuGrads, batch, 0.0, TestContext.Current.CancellationToken);

        var flat = cpuGrads.Named().SelectMany(t => t.Values).ToArray();
        var cpuEval = batch.Aggregate(default(DistillationScore), (sum, s) => sum + cpu.Run(s.Tokens, s.LossMask));

        // One sequence a pass; all three packed into one pass (each with its own positions and attention); and the first
        // alone with the other two packed after it.
        var (gt, gs) = Load(dir);
        foreach (int packRows in new[] { 0, 4096, 2 * length - 9 })
        {
            using var gpu = new CudaDistillationTrainer(gt, gs, 2f, hiddenLossWeight, tf32: false, packRows: packRows, frozenInBf16: frozenInBf16);
            // Every layer matrix but the trainable SwiftKV ones: the teacher's q/k/v, o, gate, up, down.
            long frozen = (long)layers * (gt.Config.QueryDim + 2 * gt.Config.KeyValueDim + 3 * gt.Config.IntermediateSize) * gt.Config.HiddenSize
                + (long)layers * gt.Config.QueryDim * gt.Config.HiddenSize;
            Assert.Equal(bf16 && frozenInBf16 ? frozen : 0, gpu.Bf16Values);
            var gpuScore = gpu.TrainStep(batch, 0.0, TestContext.Current.CancellationToken);   // lr 0: the weights stay as loaded
            Assert.Equal(cpuScore.Positions, gpuScore.Positions);
            Assert.Equal(cpuScore.Loss, gpuScore.Loss, 1e-5 * cpuScore.Loss);
            // Agreement compares argmaxes; the random models' logits have no near-ties at this size, so they match exactly.
            Assert.Equal(cpuScore.Top1Agreement, gpuScore.Top1Agreement);
            DistillationFixture.AssertTensors(flat, gpu.ReadGradients(), 1e-4,
                $"gradient against the CPU trainer (L={layers}, l={l}, g={g}, T={length}, pack {packRows})", Gpu.Log);
            var gpuEval = gpu.Score(batch, TestContext.Current.CancellationToken);
            Assert.Equal(cpuEval.Positions, gpuEval.Positions);
            Assert.Equal(cpuEval.LossSum, gpuEval.LossSum, 1e-5 * Math.Max(1e-3, cpuEval.LossSum));
        }
    }

    /// <summary>
    /// The memory check's count (CudaDistillationTrainer.EstimateBytes) against the device buffers a trainer really holds
    /// after a step, with the hidden-state term on (its buffers included): never below, and not far above.
    /// </summary>
    [Theory]
    [InlineData(0f, 0)]
    [InlineData(0.5f, 0)]
    [InlineData(0.5f, 797)]
    [InlineData(0.5f, 797, true)]
    public void MemoryEstimate_CoversWhatAStepHolds(float hiddenLossWeight, int packRows, bool bf16 = false)
    {
        Gpu.Require();
        string dir = MakeStudent(5, 2, 1, true, false, 2, headDim: 16, vocab: 3000, hidden: 64, bf16: bf16);
        var (t, s) = Load(dir);
        var config = t.Config;
        DistillationWeightCounts weights;
        using (var checkpoint = SafetensorsCheckpoint.Open(dir)) weights = Distiller.ValueCounts(config, checkpoint);
        Assert.Equal(bf16, weights.FrozenBf16 > 0);
        const int T = 400;
        long estimate = CudaDistillationTrainer.EstimateBytes(config, weights, T, hiddenLossWeight, packRows);
        long before = DeviceMemory.AllocatedBytes;
        using var trainer = new CudaDistillationTrainer(t, s, 2f, hiddenLossWeight, packRows: packRows);
        // Packed: 400 + 397 rows fill a pass of 797 exactly; 394 go in a second.
        trainer.TrainStep(RandomBatch(2, packRows > 0 ? 3 : 2, T, config.VocabSize).Select(q => q with { LossMask = q.LossMask.Select(_ => true).ToArray() }).ToList(), 1e-3,
            TestContext.Current.CancellationToken);
        long held = DeviceMemory.AllocatedBytes - before;
        Assert.Equal(weights.FrozenBf16, trainer.Bf16Values);
        Gpu.Log($"bf16 {bf16}, hidden-loss {hiddenLossWeight}, pack {packRows}: a step holds {held:N0} bytes of device buffers; the estimate counts {estimate:N0}");
        Assert.True(held <= estimate, $"held {held:N0} > estimated {estimate:N0}");
        // Most of a toy model's count is cuBLAS's fixed workspace: the rest must be close too.
        Assert.True(held - Cublas.WorkspaceBytes >= 0.9 * (estimate - Cublas.WorkspaceBytes), $"held {held:N0} is far below the estimate {estimate:N0}");
    }

    [Fact]
    public void TrainStep_IsDeterministic_AndFreesItsMemory()
    {
        Gpu.Require();
        string dir = MakeStudent(6, 2, 2, true, false, 2);
        var batch = RandomBatch(3, 4, 40, 96);
        long before = DeviceMemory.AllocatedBytes;
        float[] Train()
        {
            var (t, s) = Load(dir);
            using var trainer = new CudaDistillationTrainer(t, s, 2f, 0.5f, tf32: true, packRows: 100);
            for (int i = 0; i < 3; i++) trainer.TrainStep(batch, 1e-2, TestContext.Current.CancellationToken);
            return trainer.ReadParameters().Named().SelectMany(p => p.Values).ToArray();
        }
        var a = Train();
        var b = Train();
        Assert.Equal(a, b);
        Assert.Equal(before, DeviceMemory.AllocatedBytes);
    }

    [Fact]
    public void BadInput_IsRefusedBeforeAnyWork()
    {
        Gpu.Require();
        string dir = MakeStudent(4, 2, 1, false, false, 2);
        var (t, s) = Load(dir);
        using var trainer = new CudaDistillationTrainer(t, s, 2f);
        var start = trainer.ReadParameters().Named().SelectMany(p => p.Values).ToArray();
        var good = new DistillationSequence([1, 2, 3, 4], [true, true, true, false]);
        var outside = new DistillationSequence([1, 2, 96], [true, true, false]);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => trainer.TrainStep([good, outside], 1e-2, TestContext.Current.CancellationToken));
        Assert.Contains("vocab_size 96", e.Message);
        Assert.Throws<ArgumentException>(() => trainer.Score([new DistillationSequence([1, 2], [true])], TestContext.Current.CancellationToken));
        Assert.Throws<ArgumentException>(() => trainer.Score([new DistillationSequence([], [])], TestContext.Current.CancellationToken));
        Assert.Throws<ArgumentOutOfRangeException>(() => trainer.TrainStep([good], double.NaN, TestContext.Current.CancellationToken));
        // Nothing moved: the refused batch was checked before its first sequence ran.
        Assert.Equal(start, trainer.ReadParameters().Named().SelectMany(p => p.Values).ToArray());
        trainer.TrainStep([good], 1e-2, TestContext.Current.CancellationToken);
        Assert.NotEqual(start, trainer.ReadParameters().Named().SelectMany(p => p.Values).ToArray());
    }

    [Fact]
    public void NonFiniteGradient_StopsWithTheTensorNamed()
    {
        Gpu.Require();
        string dir = MakeStudent(4, 2, 1, false, false, 2);
        var (t, s) = Load(dir);
        s.Layers[3].QProjSwiftKv![5] = float.NaN;   // the student's own tensor: its gradient and what flows from it go NaN
        using var trainer = new CudaDistillationTrainer(t, s, 2f);
        var e = Assert.Throws<NotFiniteNumberException>(() => trainer.TrainStep(RandomBatch(1, 1, 12, 96), 1e-2, TestContext.Current.CancellationToken));
        Assert.Contains("model.", e.Message);
        Assert.Contains("is not finite", e.Message);
    }

    [Fact]
    public void Distill_OnTheGpu_LowersTheLossAndWritesTheCheckpoint()
    {
        Gpu.Require();
        // The tiny preset with the demo tokenizer (Llama 3's vocabulary size) and chat data, as the CLI's distill test.
        string baseDir = Path.Combine(_root, "full-vocab"), dir = Path.Combine(_root, "full-vocab-skv");
        ModelMaker.Write(baseDir, ModelPresets.Get("tiny"), new ModelMakerOptions { Seed = 3, Dtype = TensorDtype.F32 }, cancellationToken: TestContext.Current.CancellationToken);
        SwiftKV.Model.Tokenization.LlamaTokenizer.CreateDemo().Save(baseDir);
        SwiftKvConverter.Convert(baseDir, dir, 2, 2, cancellationToken: TestContext.Current.CancellationToken);
        string data = Path.Combine(_root, "data.jsonl"), outDir = Path.Combine(_root, "out");
        File.WriteAllLines(data, Enumerable.Range(0, 8).Select(i =>
            $$"""{"messages": [{"role": "user", "content": "Summarize item {{i}}: revenue grew {{i}}% while costs fell."}, {"role": "assistant", "content": "Revenue up {{i}}%, costs down."}]}"""));
        var lines = new List<string>();
        var report = Distiller.Run(dir, data, outDir, new DistillationOptions { Backend = BackendKind.Cuda, Epochs = 2, BatchSize = 2, LearningRate = 2e-3 },
            log: lines.Add, cancellationToken: TestContext.Current.CancellationToken);
        foreach (var line in lines) Gpu.Log(line);
        Assert.Contains(lines, l => l.Contains("training on " + CudaRuntime.Device.Name, StringComparison.Ordinal));
        Assert.True(report.After.Loss < report.Before.Loss, $"loss {report.Before.Loss} -> {report.After.Loss}");
        Assert.True(File.Exists(Path.Combine(outDir, "config.json")));
        // The written checkpoint scores as the trainer said "after" did: the CPU trainer on it gives the same loss.
        var (t, s) = Load(outDir);
        var cpu = new DistillationModel(t, s, 2f);
        var train = DistillationData.Read(data, SwiftKV.Model.Tokenization.LlamaTokenizer.Load(outDir), 8192, t.Config.VocabSize);
        var total = default(DistillationScore);
        foreach (var seq in train.Sequences) total += cpu.Run(seq.Tokens, seq.LossMask);
        Gpu.Log($"written checkpoint on the CPU trainer: loss {total.Loss:F6}; the GPU's 'after' (TF32 GEMMs): {report.After.Loss:F6}");
        Assert.Equal(report.After.Loss, total.Loss, 1e-2 * report.After.Loss);
    }

    public void Dispose()
    {
        if (Directory.Exists(_root)) Directory.Delete(_root, recursive: true);
    }
}
