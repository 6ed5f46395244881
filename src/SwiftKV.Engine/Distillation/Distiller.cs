// `swiftkv distill`: SwiftKV's knowledge-preserving distillation (SWIFTKV.md) of a llama_swiftkv checkpoint, in fp32
// on the CPU. The checkpoint is read once: the teacher (SwiftKV off: the original q/k/v of every layer) and the
// student (SwiftKV on) share every array but the SwiftKV tensors, which alone train. The result is the same
// checkpoint with those tensors replaced, stored in the source's dtype, companion files (tokenizer, ...) copied.
//
// NOTE: this is the reference trainer, not a fast one: a step costs about three forwards of the model over the batch
// on the CPU, which suits small models and checking; distilling an 8B model on the paper's ~680M tokens needs GPUs.
using System.Diagnostics;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;
using SwiftKV.Model.Tokenization;

namespace SwiftKV.Engine.Distillation;

/// <summary>Training settings; defaults are the paper's (SWIFTKV.md, "Distillation") where it gives one.</summary>
public sealed record DistillationOptions
{
    /// <summary>Passes over the data (the paper: 1).</summary>
    public int Epochs { get; init; } = 1;
    /// <summary>Sequences whose gradients are summed into one optimizer step.</summary>
    public int BatchSize { get; init; } = 8;
    /// <summary>Peak learning rate (the paper: 2e-4), reached after the warm-up and then decayed to 0 on a cosine.</summary>
    public double LearningRate { get; init; } = 2e-4;
    /// <summary>The share of steps spent warming the learning rate up linearly from 0 (the paper: 5%).</summary>
    public double WarmupFraction { get; init; } = 0.05;
    /// <summary>T of T²·KL (the paper: 2).</summary>
    public float Temperature { get; init; } = 2f;
    /// <summary>Sequences longer than this keep their first tokens (the paper: 8192).</summary>
    public int MaxSequenceTokens { get; init; } = 8192;
    /// <summary>Seeds the order of the sequences in each epoch.</summary>
    public int Seed { get; init; }

    public void Validate()
    {
        if (Epochs < 1) throw new ArgumentOutOfRangeException(nameof(Epochs), Epochs, "DistillationOptions.Epochs must be >= 1.");
        if (BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(BatchSize), BatchSize, "DistillationOptions.BatchSize must be >= 1.");
        if (!(LearningRate > 0) || !double.IsFinite(LearningRate))
            throw new ArgumentOutOfRangeException(nameof(LearningRate), LearningRate, "DistillationOptions.LearningRate must be a positive number.");
        if (!(WarmupFraction >= 0 && WarmupFraction < 1))
            throw new ArgumentOutOfRangeException(nameof(WarmupFraction), WarmupFraction, "DistillationOptions.WarmupFraction must be in [0, 1).");
        if (!(Temperature > 0) || !float.IsFinite(Temperature))
            throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "DistillationOptions.Temperature must be a positive number.");
        if (MaxSequenceTokens < 2)
            throw new ArgumentOutOfRangeException(nameof(MaxSequenceTokens), MaxSequenceTokens, "DistillationOptions.MaxSequenceTokens must be >= 2.");
    }

    /// <summary>The learning rate of step <paramref name="step"/> (0-based) of <paramref name="totalSteps"/>.</summary>
    public double LearningRateAt(int step, int totalSteps)
    {
        int warmup = (int)Math.Ceiling(WarmupFraction * totalSteps);
        if (step < warmup) return LearningRate * (step + 1) / warmup;
        int decay = totalSteps - warmup;
        if (decay <= 1) return LearningRate;
        double progress = (double)(step - warmup) / (decay - 1);
        return LearningRate * 0.5 * (1 + Math.Cos(Math.PI * progress));
    }
}

/// <summary>What a distillation run did, with the student scored against the teacher before and after.</summary>
public sealed record DistillationReport(
    DistillationScore Before, DistillationScore After, int Steps, int Sequences, long Tokens, int Truncated, int Skipped,
    TimeSpan Elapsed, string ScoredOn);

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
        var sw = Stopwatch.StartNew();
        var config = LlamaConfig.Load(modelDirectory);
        if (!config.SwiftKv)
            throw new InvalidModelException($"{modelDirectory} is a plain Llama checkpoint; make its SwiftKV student first (swiftkv transform --model {modelDirectory} --out DIR --swiftkv-layers L), then distil that.");
        var tokenizer = LlamaTokenizer.Load(modelDirectory);
        int maxTokens = Math.Min(options.MaxSequenceTokens, config.MaxPositionEmbeddings);
        var train = DistillationData.Read(dataPath, tokenizer, maxTokens);
        var eval = evalPath is null ? train : DistillationData.Read(evalPath, tokenizer, maxTokens);

        using var checkpoint = SafetensorsCheckpoint.Open(modelDirectory);
        var (teacher, student) = LoadTeacherAndStudent(modelDirectory, config, checkpoint);
        var model = new DistillationModel(teacher, student, options.Temperature);
        log?.Invoke($"loaded {modelDirectory}: {config.NumHiddenLayers} layers, SwiftKV l = {config.NumKeyValueLayers}, g = {config.KeyValueGroupSize}; " +
            $"{model.Parameters.Count:N0} trainable values; {train.Sequences.Count} sequences, {train.Tokens:N0} tokens, {train.LossPositions:N0} scored positions");

        var before = Score(model, eval, cancellationToken);
        log?.Invoke($"before: loss {before.Loss:F4} (T²·KL per position), top-1 agreement {before.Top1Agreement:P1}");

        int batchesPerEpoch = (train.Sequences.Count + options.BatchSize - 1) / options.BatchSize;
        int totalSteps = batchesPerEpoch * options.Epochs, step = 0;
        var gradients = model.Parameters.ZerosLike();
        var adam = new Adam(model.Parameters);
        var random = new Random(options.Seed);
        for (int epoch = 0; epoch < options.Epochs; epoch++)
        {
            var order = Enumerable.Range(0, train.Sequences.Count).ToArray();
            random.Shuffle(order);
            for (int b = 0; b < batchesPerEpoch; b++, step++)
            {
                var batch = order.Skip(b * options.BatchSize).Take(options.BatchSize).Select(i => train.Sequences[i]).ToList();
                var score = TrainStep(model, adam, gradients, batch, options.LearningRateAt(step, totalSteps), cancellationToken);
                if (log is not null && (step % 10 == 0 || step == totalSteps - 1))
                    log($"step {step + 1}/{totalSteps} (epoch {epoch + 1}): loss {score.Loss:F4}, top-1 {score.Top1Agreement:P1}, lr {options.LearningRateAt(step, totalSteps):G3}");
            }
        }

        var after = Score(model, eval, cancellationToken);
        log?.Invoke($"after: loss {after.Loss:F4}, top-1 agreement {after.Top1Agreement:P1}");
        Save(modelDirectory, outputDirectory, config, checkpoint, model.Parameters);
        return new DistillationReport(before, after, totalSteps, train.Sequences.Count, train.Tokens, train.Truncated, train.SkippedWithoutLoss,
            sw.Elapsed, evalPath ?? dataPath);
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
                throw new InvalidOperationException($"the gradient of {name} is not finite (loss {total.Loss}): lower the learning rate, or check the checkpoint for NaN/Inf weights.");
        adam.Step(gradients, learningRate);
        return total;
    }

    static DistillationScore Score(DistillationModel model, DistillationDataSet data, CancellationToken cancellationToken)
    {
        var total = default(DistillationScore);
        foreach (var s in data.Sequences)
        {
            cancellationToken.ThrowIfCancellationRequested();
            total += model.Run(s.Tokens, s.LossMask);
        }
        return total;
    }

    /// <summary>
    /// Both views of one checkpoint: every tensor is read once, so the student's frozen weights are the teacher's
    /// arrays and only the SwiftKV tensors (and the later layers' original q/k/v, the teacher's) exist once each.
    /// </summary>
    public static (LlamaWeights Teacher, LlamaWeights Student) LoadTeacherAndStudent(string directory, LlamaConfig config, SafetensorsCheckpoint checkpoint)
    {
        LlamaCheckpointLoader.Verify(directory, swiftKv: false);
        LlamaCheckpointLoader.Verify(directory, swiftKv: true);
        var names = LlamaTensorNames.ForModel(config, false).Concat(LlamaTensorNames.ForModel(config, true)).Select(s => s.Name).Distinct().ToList();
        long bytes = names.Sum(n => LlamaTensorNames.ForCheckpoint(config).First(s => s.Name == n).ElementCount * 4L);
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (bytes > available)
            throw new InsufficientMemoryException($"distilling {directory} holds its weights in fp32 ({bytes / 1e9:F1} GB), more than the {available / 1e9:F1} GB this process may use.");
        var tensors = names.ToDictionary(n => n, n => LlamaCheckpointLoader.ReadFloat32(config, checkpoint, n), StringComparer.Ordinal);
        return (LlamaWeightMap.Build(config, false, tensors), LlamaWeightMap.Build(config, true, tensors));
    }

    static void CheckOutput(string modelDirectory, string outputDirectory)
    {
        string src = Path.GetFullPath(modelDirectory).TrimEnd('/'), dst = Path.GetFullPath(outputDirectory).TrimEnd('/');
        // Writing removes the output's safetensors files, which must not be the weights being read.
        if (string.Equals(src, dst, StringComparison.Ordinal) || dst.StartsWith(src + "/", StringComparison.Ordinal))
            throw new ArgumentException($"the output directory {dst} must be outside the checkpoint being distilled ({src}).", nameof(outputDirectory));
    }

    static void Save(string modelDirectory, string outputDirectory, LlamaConfig config, SafetensorsCheckpoint checkpoint, SwiftKvTensors trained)
    {
        var byName = trained.Named().ToDictionary(t => t.Name, t => t.Values, StringComparer.Ordinal);
        // An FP8 source is written unquantized, as transform writes it.
        var target = config with { Quantization = null };
        var dtype = config.Quantization is null ? TensorDtypes.FromTorchName(config.TorchDtype) : TensorDtype.BF16;
        var tensors = LlamaTensorNames.ForCheckpoint(target)
            .Select(spec => new TensorToWrite(spec.Name, spec.Shape,
                () => byName.TryGetValue(spec.Name, out var values) ? values : LlamaCheckpointLoader.ReadFloat32(config, checkpoint, spec.Name)))
            .ToList();
        LlamaCheckpointWriter.Save(outputDirectory, target, tensors, dtype);
        SwiftKvConverter.CopyCompanionFiles(modelDirectory, outputDirectory);
    }
}
