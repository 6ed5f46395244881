// What Distiller needs from a device that trains: score a sequence, take an optimizer step over a batch, and hand the
// trained tensors over. The CPU trainer (DistillationModel + Adam) is the reference; the CUDA trainer computes the same
// loss, gradients and Adam steps on the GPU and is checked against it.
namespace SwiftKV.Engine.Distillation;

/// <summary>Distillation's forward, backward and optimizer on one device.</summary>
public interface IDistillationTrainer : IDisposable
{
    /// <summary>Where and in what precision it runs, for the log ("CPU, fp32, 16 threads").</summary>
    string Device { get; }

    /// <summary>How many trainable values.</summary>
    long ParameterCount { get; }

    /// <summary>The summed loss and top-1 agreement of <paramref name="sequences"/>, no gradients.</summary>
    DistillationScore Score(IReadOnlyList<DistillationSequence> sequences, CancellationToken cancellationToken = default);

    /// <summary>
    /// One optimizer step: the batch's gradients of its mean loss per scored position, then Adam at
    /// <paramref name="learningRate"/>. Returns the batch's score before the update. Throws
    /// <see cref="NotFiniteNumberException"/> naming the tensor whose gradient is not finite (nothing is updated then).
    /// </summary>
    DistillationScore TrainStep(IReadOnlyList<DistillationSequence> batch, double learningRate, CancellationToken cancellationToken = default);

    /// <summary>The trainable tensors as they are now, on the host (copies where the trainer keeps them elsewhere).</summary>
    SwiftKvTensors ReadParameters();

    /// <summary>Replaces the trainable tensors (same shapes): the rounded values that are scored and written.</summary>
    void WriteParameters(SwiftKvTensors values);
}

/// <summary>The CPU trainer: fp32 forward and hand-written backward (<see cref="DistillationModel"/>) with <see cref="Adam"/>.</summary>
public sealed class CpuDistillationTrainer : IDistillationTrainer
{
    readonly SwiftKvTensors _gradients;
    readonly Adam _adam;

    public CpuDistillationTrainer(DistillationModel model)
    {
        Model = model ?? throw new ArgumentNullException(nameof(model));
        _gradients = model.Parameters.ZerosLike();
        _adam = new Adam(model.Parameters);
    }

    public DistillationModel Model { get; }
    public string Device => $"CPU, fp32, {Environment.ProcessorCount} threads";
    public long ParameterCount => Model.Parameters.Count;

    public DistillationScore Score(IReadOnlyList<DistillationSequence> sequences, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(sequences);
        var total = default(DistillationScore);
        foreach (var s in sequences)
        {
            cancellationToken.ThrowIfCancellationRequested();
            total += Model.Run(s.Tokens, s.LossMask);
        }
        return total;
    }

    public DistillationScore TrainStep(IReadOnlyList<DistillationSequence> batch, double learningRate, CancellationToken cancellationToken = default) =>
        Distiller.TrainStep(Model, _adam, _gradients, batch, learningRate, cancellationToken);

    public SwiftKvTensors ReadParameters() => Model.Parameters;

    public void WriteParameters(SwiftKvTensors values)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (ReferenceEquals(values, Model.Parameters)) return;
        var to = Model.Parameters.Named();
        var from = values.Named();
        if (from.Count != to.Count) throw new ArgumentException("the tensors do not match the trainer's.", nameof(values));
        for (int i = 0; i < to.Count; i++)
        {
            if (from[i].Values.Length != to[i].Values.Length || from[i].Name != to[i].Name)
                throw new ArgumentException($"tensor {from[i].Name} does not match the trainer's {to[i].Name}.", nameof(values));
            from[i].Values.CopyTo(to[i].Values, 0);
        }
    }

    public void Dispose() { }
}
