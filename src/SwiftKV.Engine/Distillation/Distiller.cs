// `swiftkv distill`: SwiftKV's knowledge-preserving distillation (SWIFTKV.md) of a llama_swiftkv checkpoint, in fp32,
// on the GPU (CudaDistillationTrainer) or the CPU (DistillationModel, the reference). The checkpoint is read once: the
// teacher (SwiftKV off: the original q/k/v of every layer) and the student (SwiftKV on) share every array but the
// SwiftKV tensors, which alone train. The result is the same checkpoint with those tensors replaced, stored in the
// source's dtype, companion files (tokenizer, ...) copied.
//
// NOTE: the CPU trainer is a reference, not a fast one: a step costs about three forwards of the model over the batch,
// which suits small models and checking.
using System.Diagnostics;
using SwiftKV.Cuda;
using SwiftKV.Model;
using SwiftKV.Model.Tokenization;
using SwiftKV.Model.Checkpoint;

namespace SwiftKV.Engine.Distillation;

/// <summary>Loads a SwiftKV checkpoint as teacher and student, trains the SwiftKV tensors, writes the result.</summary>
public static class Distiller
{
    /// <summary>
    /// Distils <paramref name="modelDirectory"/> on <paramref name="dataPath"/> and writes the result to
    /// <paramref name="outputDirectory"/>. <paramref name="evalPath"/> (optional) is scored before and after; without it
    /// the training data is. <paramref name="log"/> receives a line per progress report.
    /// </summary>
    public static DistillationReport Run(string modelDirectory, string dataPath, string outputDirectory, DistillationOptions options,
        string? evalPath = null, Action<string>? log = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        CheckOutput(modelDirectory, outputDirectory);
        if (options.Rank != 0) log = null;   // data parallel: rank 0 speaks (and writes) for all
        var sw = Stopwatch.StartNew();
        var config = LlamaConfig.Load(modelDirectory);
        if (!config.SwiftKv)
            throw new InvalidModelException($"{modelDirectory} is a plain Llama checkpoint; make its SwiftKV student first (swiftkv transform --model {modelDirectory} --out DIR --swiftkv-layers L), then distill that.");
        var tokenizer = LlamaTokenizer.Load(modelDirectory);
        int maxTokens = Math.Min(options.MaxSequenceTokens, config.MaxPositionEmbeddings);
        // Conversations are written as the checkpoint's own template writes them (Llama 3.0's or 3.1's system block).
        var template = CheckpointChatTemplate.Kind(modelDirectory);
        var train = DistillationData.Read(dataPath, tokenizer, maxTokens, config.VocabSize, template);
        var eval = evalPath is null ? train : DistillationData.Read(evalPath, tokenizer, maxTokens, config.VocabSize, template);
        int longest = Math.Max(train.LongestSequence, eval.LongestSequence);

        using var checkpoint = SafetensorsCheckpoint.Open(modelDirectory);
        using var trainer = OpenTrainer(modelDirectory, config, checkpoint, options, longest, log);
        log?.Invoke($"loaded {modelDirectory}: {config.NumHiddenLayers} layers, SwiftKV l = {config.NumKeyValueLayers}, g = {config.KeyValueGroupSize}; " +
            $"{trainer.ParameterCount:N0} trainable values; {Count(train.Sequences.Count, "sequence")}, {train.Tokens:N0} tokens, {train.LossPositions:N0} scored positions; training on {trainer.Device}");
        foreach (var (set, name) in evalPath is null ? [(train, dataPath)] : new[] { (train, dataPath), (eval, evalPath) })
        {
            if (set.Truncated > 0)
                log?.Invoke($"note: {Count(set.Truncated, "sequence")} of {name} kept only {(set.Truncated == 1 ? "its" : "their")} first {maxTokens} tokens (--max-seq, or the model's context).");
            if (set.SkippedWithoutLoss > 0)
                log?.Invoke($"note: {Count(set.SkippedWithoutLoss, "sequence")} of {name} had nothing to score within {maxTokens} tokens (no assistant reply) and {(set.SkippedWithoutLoss == 1 ? "is" : "are")} left out.");
        }
        var initial = trainer.ReadParameters().Named().Select(t => (float[])t.Values.Clone()).ToList();
        string scoredOn = evalPath is null ? "the training data" : evalPath;

        var before = Score(trainer, eval, cancellationToken);
        log?.Invoke($"before, on {scoredOn}: loss {before.Loss:F4} per scored position, top-1 agreement with the teacher {before.Top1Agreement:P1}");
        // Exactly 0 on the CPU; the GPU's GEMMs may leave a few ulps.
        bool nothingToLearn = before.Loss <= 1e-7;
        if (nothingToLearn)
            log?.Invoke("note: the student already computes what the teacher does (loss 0), so there is nothing to distil" +
                (config.NumKeyValueLayers == config.NumHiddenLayers - 1 && config.KeyValueGroupSize == 1
                    ? ": with SwiftKV on the last layer only and no AcrossKV, that layer's K/V come from the same input as the teacher's, so the model is exact as transform made it."
                    : "."));

        int batchesPerEpoch = (train.Sequences.Count + options.BatchSize - 1) / options.BatchSize;
        int totalSteps = batchesPerEpoch * options.Epochs, step = 0;
        var random = new Random(options.Seed);
        var training = Stopwatch.StartNew();
        for (int epoch = 0; epoch < options.Epochs; epoch++)
        {
            var order = Enumerable.Range(0, train.Sequences.Count).ToArray();
            random.Shuffle(order);
            for (int b = 0; b < batchesPerEpoch; b++, step++)
            {
                var batch = order.Skip(b * options.BatchSize).Take(options.BatchSize).Select(i => train.Sequences[i]).ToList();
                var score = trainer.TrainStep(batch, options.LearningRateAt(step, totalSteps), cancellationToken);
                if (log is not null && (step % 10 == 0 || step == totalSteps - 1))
                    log($"step {step + 1}/{totalSteps} (epoch {epoch + 1}): loss {score.Loss:F4}, top-1 {score.Top1Agreement:P1}, lr {options.LearningRateAt(step, totalSteps):0.##E+0}");
            }
        }

        training.Stop();
        // What is scored "after" is what is written: the trained tensors rounded to the checkpoint's dtype.
        var dtype = LlamaCheckpointLoader.StoredDtype(config, checkpoint);
        var parameters = trainer.ReadParameters();
        var trained = parameters.Named();
        int unchanged = 0;
        for (int i = 0; i < trained.Count; i++)
        {
            RoundTo(trained[i].Values, dtype);
            if (trained[i].Values.AsSpan().SequenceEqual(initial[i])) unchanged++;
        }
        trainer.WriteParameters(parameters);
        var after = Score(trainer, eval, cancellationToken);
        (trainer as CudaDistillationTrainer)?.FinishDataParallel();   // the ranks' last collective
        log?.Invoke($"after, on {scoredOn} with the weights as written ({dtype}): loss {after.Loss:F4}, top-1 agreement {after.Top1Agreement:P1}");
        if (unchanged > 0)
            log?.Invoke($"note: {unchanged} of {trained.Count} trained tensors are unchanged once rounded to {dtype} (their updates were smaller than its precision): train longer, or with a larger --lr.");
        if (!(after.Loss < before.Loss) && !nothingToLearn)
            log?.Invoke("note: the loss did not go down; the checkpoint is written anyway. Check --lr (too large overshoots, too small does nothing) and --temperature.");
        if (options.Rank == 0) Save(modelDirectory, outputDirectory, config, checkpoint, parameters, dtype, cancellationToken);
        return new DistillationReport(before, after, totalSteps, train.Sequences.Count, train.Tokens,
            sw.Elapsed, scoredOn) { Training = training.Elapsed, Epochs = options.Epochs };
    }

    static string Count(int n, string noun) => n == 1 ? $"1 {noun}" : $"{n} {noun}s";

    /// <summary>Rounds fp32 values to what <paramref name="dtype"/> stores, in place.</summary>
    static void RoundTo(float[] values, TensorDtype dtype)
    {
        if (dtype == TensorDtype.F32) return;
        var bytes = new byte[values.Length * dtype.ElementSize()];
        Fp32Conversion.FromFloat32(values, dtype, bytes);
        Fp32Conversion.ToFloat32(bytes, dtype, values);
    }

    /// <summary>
    /// One optimizer step: the batch's gradients of its mean loss per scored position, then Adam. Returns the
    /// batch's score, computed before the update.
    /// </summary>
    public static DistillationScore TrainStep(DistillationModel model, Adam adam, SwiftKvTensors gradients,
        IReadOnlyList<DistillationSequence> batch, double learningRate, CancellationToken cancellationToken = default)
    {
        gradients.Clear();
        long positions = batch.Sum(s => (long)s.LossPositions);
        var total = default(DistillationScore);
        if (positions == 0) return total;
        foreach (var s in batch)
        {
            cancellationToken.ThrowIfCancellationRequested();
            total += model.Run(s.Tokens, s.LossMask, gradients, 1f / positions);
        }
        foreach (var (name, g) in gradients.Named())
            if (g.Any(v => !float.IsFinite(v)))
                throw new NotFiniteNumberException($"the gradient of {name} is not finite (batch loss {total.Loss}), so training stops and nothing is written: " +
                    "lower the learning rate, or check the checkpoint for NaN/Inf weights (swiftkv logits reports them).");
        adam.Step(gradients, learningRate);
        return total;
    }

    /// <summary>The data's score in one call: the GPU packs all of it into its passes, and both trainers stop between them when cancelled.</summary>
    static DistillationScore Score(IDistillationTrainer trainer, DistillationDataSet data, CancellationToken cancellationToken) =>
        trainer.Score(data.Sequences, cancellationToken);

    /// <summary>
    /// The trainer <paramref name="options"/> ask for: the GPU when CUDA is usable (Auto) or asked for (Cuda) and the run
    /// fits its free memory, else the CPU. Refuses a run that fits neither, before reading a weight.
    /// </summary>
    static IDistillationTrainer OpenTrainer(string directory, LlamaConfig config, SafetensorsCheckpoint checkpoint, DistillationOptions options,
        int longest, Action<string>? log)
    {
        var weights = ValueCounts(config, checkpoint);
        if (options.World > 1) return OpenDataParallel(directory, config, checkpoint, options, longest, weights);
        string? cpuReason = null;
        if (options.Backend != BackendKind.Cpu)
        {
            if (!CudaRuntime.TryInitialize(out var why))
            {
                if (options.Backend == BackendKind.Cuda) throw new NotSupportedException("--backend cuda was asked for, but CUDA is not usable: " + why);
                cpuReason = "no usable CUDA: " + why;
            }
            else
            {
                long free = CudaRuntime.MemoryInfo().Free;
                int packRows;
                (weights, packRows) = ChooseGpuLayout(config, weights, longest, options.HiddenLossWeight, free);
                bool frozenInBf16 = weights.FrozenBf16 > 0;
                long gpuBytes = CudaDistillationTrainer.MemoryNeeded(config, weights, longest, options.HiddenLossWeight, packRows);
                if (gpuBytes <= free)
                {
                    RefuseHostMemory(directory, 4 * weights.Values, $"the fp32 weights ({4 * weights.Values / 1e9:F1} GB) are read on the host before they go to the GPU");
                    var (teacher, student) = LoadTeacherAndStudent(directory, config, checkpoint);
                    try
                    {
                        return new CudaDistillationTrainer(teacher, student, options.Temperature, options.HiddenLossWeight, options.Tf32, packRows, frozenInBf16);
                    }
                    catch (CudaException e) when (options.Backend == BackendKind.Auto)
                    {
                        // The GPU answered but the trainer did not start there (a kernel that did not compile, memory
                        // another process took): Auto's promise is the CPU, with the weights already read.
                        log?.Invoke($"note: training on the CPU: the GPU trainer did not start ({e.Message}).");
                        RefusePastMemory(directory, config, longest);
                        return new CpuDistillationTrainer(new DistillationModel(teacher, student, options.Temperature, options.HiddenLossWeight));
                    }
                }
                string message = $"distilling {directory} on sequences of up to {longest} tokens needs about {gpuBytes / 1e9:F1} GB of GPU memory " +
                    $"(weights {weights.GpuBytes / 1e9:F1} GB{(weights.FrozenBf16 > 0 ? ", the frozen layer matrices in bf16" : " in fp32")}), more than the {free / 1e9:F1} GB free on {CudaRuntime.Device.Name}";
                if (options.Backend == BackendKind.Cuda)
                    throw new InsufficientMemoryException(message + ": shorten the sequences (--max-seq) or use a GPU with more memory.");
                cpuReason = message;
            }
            log?.Invoke($"note: training on the CPU (exact fp32 throughout): {cpuReason.TrimEnd('.')}.");
        }
        RefusePastMemory(directory, config, longest);
        var (t, s) = LoadTeacherAndStudent(directory, config, checkpoint);
        return new CpuDistillationTrainer(new DistillationModel(t, s, options.Temperature, options.HiddenLossWeight));
    }

    /// <summary>
    /// Tokens a GPU pass holds at most when the sequences are short (the paper's longest sequence): enough rows that the
    /// GEMMs run near their rate and the weights stream once for many sequences.
    /// </summary>
    internal const int PackRows = 8192;

    /// <summary>
    /// One rank of a data-parallel run: CUDA is required (no CPU fallback: the other ranks are GPUs), the ranks join
    /// before the weights load (so a rank that cannot start is known at once), and the run must fit this rank's GPU.
    /// </summary>
    const long NcclHeadroomBytes = 1L << 30;

    static IDistillationTrainer OpenDataParallel(string directory, LlamaConfig config, SafetensorsCheckpoint checkpoint, DistillationOptions options,
        int longest, DistillationWeightCounts weights)
    {
        string rank = $"rank {options.Rank} of {options.World}";
        if (!CudaRuntime.TryInitialize(out var why)) throw new NotSupportedException($"{rank}: training on several GPUs needs CUDA, which is not usable: {why}");
        var ranks = DataParallelRendezvous.Join(options.Rendezvous!, options.Rank, options.World, CancellationToken.None);
        try
        {
            // NCCL allocates its buffers at the first all-reduce (lazy connection): keep room for them.
            long free = CudaRuntime.MemoryInfo().Free - NcclHeadroomBytes;
            (weights, int packRows) = ChooseGpuLayout(config, weights, longest, options.HiddenLossWeight, free);
            long gpuBytes = CudaDistillationTrainer.MemoryNeeded(config, weights, longest, options.HiddenLossWeight, packRows);
            if (gpuBytes > free)
                throw new InsufficientMemoryException($"{rank}: distilling {directory} on sequences of up to {longest} tokens needs about {gpuBytes / 1e9:F1} GB of GPU memory, " +
                    $"more than the {free / 1e9:F1} GB free on {CudaRuntime.Device.Name}: shorten the sequences (--max-seq) or use GPUs with more memory.");
            // The ranks run on one host and read their weights at once.
            RefuseHostMemory(directory, options.World * 4 * weights.Values,
                $"the fp32 weights ({4 * weights.Values / 1e9:F1} GB) are read on the host before they go to the GPU, by each of the {options.World} ranks at once");
            var (teacher, student) = LoadTeacherAndStudent(directory, config, checkpoint);
            var trainer = new CudaDistillationTrainer(teacher, student, options.Temperature, options.HiddenLossWeight, options.Tf32, packRows, weights.FrozenBf16 > 0);
            trainer.JoinDataParallel(ranks);
            return trainer;
        }
        catch
        {
            ranks.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The GPU trainer's frozen matrices in fp32 where that fits as large a pass (faster: no widening before each GEMM),
    /// else in bf16 where the checkpoint's values allow (<paramref name="weights"/> counts them) and that is smaller; and
    /// its pass size.
    /// </summary>
    internal static (DistillationWeightCounts Weights, int PackRows) ChooseGpuLayout(LlamaConfig config, DistillationWeightCounts weights, int longest,
        float hiddenLossWeight, long free)
    {
        var allFp32 = weights with { FrozenBf16 = 0, WidestBf16 = 0 };
        int packFp32 = ChoosePackRows(config, allFp32, longest, hiddenLossWeight, free);
        int packBf16 = ChoosePackRows(config, weights, longest, hiddenLossWeight, free);
        bool fp32Fits = packFp32 >= packBf16 && CudaDistillationTrainer.MemoryNeeded(config, allFp32, longest, hiddenLossWeight, packFp32) <= free;
        // A checkpoint with few BF16 matrices: their saving may not pay for the fp32 scratch they are widened into.
        bool bf16Smaller = weights.GpuBytes < allFp32.GpuBytes;
        return fp32Fits || !bf16Smaller ? (allFp32, packFp32) : (weights, packBf16);
    }

    /// <summary>
    /// The GPU trainer's pass size: <see cref="PackRows"/>, halved while the run would not fit <paramref name="free"/>
    /// bytes, and never below the longest sequence (a pass that long costs nothing a single sequence does not).
    /// </summary>

    internal static int ChoosePackRows(LlamaConfig config, DistillationWeightCounts weights, int longest, float hiddenLossWeight, long free)
    {
        int packRows = Math.Max(PackRows, longest);
        while (packRows > longest && CudaDistillationTrainer.MemoryNeeded(config, weights, longest, hiddenLossWeight, packRows) > free)
            packRows = Math.Max(longest, packRows / 2);
        return packRows;
    }

    static void RefuseHostMemory(string directory, long bytes, string what)
    {
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (bytes > available)
            throw new InsufficientMemoryException($"distilling {directory} needs about {bytes / 1e9:F1} GB of host memory ({what}), more than the {available / 1e9:F1} GB this process may use.");
    }

    /// <summary>
    /// Both views of one checkpoint: every tensor is read once, so the student's frozen weights are the teacher's
    /// arrays and only the SwiftKV tensors (and the later layers' original q/k/v, the teacher's) exist once each.
    /// </summary>
    public static (LlamaWeights Teacher, LlamaWeights Student) LoadTeacherAndStudent(string directory, LlamaConfig config, SafetensorsCheckpoint checkpoint)
    {
        LlamaCheckpointLoader.Verify(directory, swiftKv: true);
        try { LlamaCheckpointLoader.Verify(directory, swiftKv: false); }
        catch (InvalidModelException e)
        {
            throw new InvalidModelException($"{directory} cannot be distilled: the teacher is this checkpoint with SwiftKV off, which needs the " +
                $"original q/k/v_proj of every layer (transform keeps them, as the published SwiftKV checkpoints do). {e.Message}");
        }
        var names = TeacherAndStudentSpecs(config).Select(s => s.Name).ToList();
        // Tensors convert to fp32 on all cores (the checkpoint is memory-mapped, so reads in parallel are safe): every
        // rank of a data-parallel run does this before it can train.
        var read = new float[names.Count][];
        var errors = new Exception?[names.Count];
        Parallel.For(0, names.Count, i =>
        {
            try { read[i] = LlamaCheckpointLoader.ReadFloat32(config, checkpoint, names[i]); }
            catch (Exception e) { errors[i] = e; }
        });
        // The first tensor's own error (a truncated file, a bad dtype), as a sequential read would have thrown it.
        if (errors.FirstOrDefault(e => e is not null) is { } first) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(first).Throw();
        var tensors = names.Select((n, i) => (n, i)).ToDictionary(p => p.n, p => read[p.i], StringComparer.Ordinal);
        return (LlamaWeightMap.Build(config, false, tensors), LlamaWeightMap.Build(config, true, tensors));
    }

    /// <summary>The tensors teacher and student need together: the checkpoint's with SwiftKV off and on, each once.</summary>
    static List<TensorSpec> TeacherAndStudentSpecs(LlamaConfig config) =>
        LlamaTensorNames.ForModel(config, false).Concat(LlamaTensorNames.ForModel(config, true)).DistinctBy(s => s.Name).ToList();

    /// <summary>Values of every tensor teacher and student read (each once), and of the trainable ones among them.</summary>
    internal static DistillationWeightCounts ValueCounts(LlamaConfig config, SafetensorsCheckpoint? checkpoint = null)
    {
        var needed = TeacherAndStudentSpecs(config);
        // The GPU trainer holds a frozen layer matrix in bf16 when its values are exact bf16 values, as a BF16 tensor's
        // are. An F32 one's may be too: counting it fp32 overstates the weights, and the scratch they widen into is
        // counted as large as the widest frozen matrix of any dtype, so the estimate stays an upper bound.
        var frozen = needed.Where(IsFrozenLayerMatrix).ToList();
        var bf16 = checkpoint is null ? [] : frozen.Where(s => checkpoint.TryGet(s.Name, out var info, out _) && info.Dtype == TensorDtype.BF16).ToList();
        return new DistillationWeightCounts(needed.Sum(s => s.ElementCount), needed.Where(IsTrainable).Sum(s => s.ElementCount),
            bf16.Sum(s => s.ElementCount), bf16.Count == 0 ? 0 : frozen.Max(s => s.ElementCount));
    }

    static bool IsTrainable(TensorSpec s) => s.Name.Contains("swiftkv", StringComparison.Ordinal);

    /// <summary>A layer's q/k/v/o/gate/up/down matrix (not a SwiftKV one): what the GPU trainer may hold in bf16.</summary>
    internal static bool IsFrozenLayerMatrix(TensorSpec s) =>
        s.Shape.Count == 2 && s.Name.StartsWith("model.layers.", StringComparison.Ordinal) && !IsTrainable(s);

    /// <summary>
    /// Refuses a run that would not fit in memory, before reading a weight (Linux overcommits: the process would be
    /// killed part-way, with no message): the weights in fp32, the trainable tensors' gradient and Adam moments, and
    /// the longest sequence's activations in the later layers with the backward pass's temporaries.
    /// </summary>
    static void RefusePastMemory(string directory, LlamaConfig c, int longest)
    {
        long T = longest, h = c.HiddenSize, q = c.QueryDim, kv = c.KeyValueDim, i = c.IntermediateSize;
        int later = c.NumHiddenLayers - c.NumKeyValueLayers, leaders = (later + c.KeyValueGroupSize - 1) / c.KeyValueGroupSize;
        var (weights, trainable, _, _) = ValueCounts(c);
        long activations = later * T * (3 * h + q + 2 * i) + leaders * 4 * T * kv + T * (3 * i + 5 * h + 2 * q)
            + (long)Environment.ProcessorCount * 2 * T * kv + 3L * 32 * c.VocabSize;
        long bytes = 4 * (weights + 3 * trainable + activations);
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (bytes > available)
            throw new InsufficientMemoryException(
                $"distilling {directory} on sequences of up to {longest} tokens needs about {bytes / 1e9:F1} GB (weights in fp32 " +
                $"{4 * weights / 1e9:F1} GB, activations {4 * activations / 1e9:F1} GB), more than the {available / 1e9:F1} GB this process may use: " +
                "shorten the sequences (--max-seq) or distill on a machine with more memory.");
    }

    static void CheckOutput(string modelDirectory, string outputDirectory)
    {
        string src = Path.GetFullPath(modelDirectory).TrimEnd('/'), dst = Path.GetFullPath(outputDirectory).TrimEnd('/');
        // Writing removes the output's safetensors files, which must not be the weights being read.
        if (string.Equals(src, dst, StringComparison.Ordinal) || dst.StartsWith(src + "/", StringComparison.Ordinal))
            throw new ArgumentException($"the output directory {dst} must be outside the checkpoint being distilled ({src}).", nameof(outputDirectory));
    }

    /// <summary>The source checkpoint with the trained tensors, in <paramref name="dtype"/> (fp8 weights: written dequantized, as transform writes them).</summary>
    static void Save(string modelDirectory, string outputDirectory, LlamaConfig config, SafetensorsCheckpoint checkpoint, SwiftKvTensors trained, TensorDtype dtype,
        CancellationToken cancellationToken)
    {
        var byName = trained.Named().ToDictionary(t => t.Name, t => t.Values, StringComparer.Ordinal);
        var target = config with { Quantization = null };
        var tensors = LlamaTensorNames.ForCheckpoint(target)
            .Select(spec => new TensorToWrite(spec.Name, spec.Shape,
                () => byName.TryGetValue(spec.Name, out var values) ? values : LlamaCheckpointLoader.ReadFloat32(config, checkpoint, spec.Name)))
            .ToList();
        LlamaCheckpointWriter.Save(outputDirectory, target, tensors, dtype, companions: staging => SwiftKvConverter.CopyCompanionFiles(modelDirectory, staging),
            cancellationToken: cancellationToken);
    }
}

/// <summary>
/// What the weights teacher and student read come to, before any is read: all their values (each array once), the
/// trainable ones, and the frozen layer matrices the GPU trainer will hold in bf16 with the largest of them (its fp32
/// scratch).
/// </summary>
public readonly record struct DistillationWeightCounts(long Values, long Trainable, long FrozenBf16 = 0, long WidestBf16 = 0)
{
    /// <summary>The GPU trainer's bytes for these weights: fp32, bf16 for the frozen matrices counted so, and their fp32 scratch.</summary>
    public long GpuBytes => 4 * Values - 2 * FrozenBf16 + 4 * WidestBf16;
}
