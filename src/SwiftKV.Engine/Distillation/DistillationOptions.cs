// The settings of a distillation run and its learning-rate schedule.
namespace SwiftKV.Engine.Distillation;

/// <summary>Training settings; defaults are the paper's (SWIFTKV.md, "Distillation") where it gives one.</summary>
public sealed record DistillationOptions
{
    /// <summary>Passes over the data (the paper: 1).</summary>
    public int Epochs { get; init; } = 1;
    /// <summary>Sequences whose gradients are summed into one optimizer step.</summary>
    public int BatchSize { get; init; } = 8;
    /// <summary>Peak learning rate (the paper: 2e-4), reached after the warm-up and then decayed towards 0 on a cosine.</summary>
    public double LearningRate { get; init; } = 2e-4;
    /// <summary>The share of steps spent warming the learning rate up linearly from 0 (the paper: 5%).</summary>
    public double WarmupFraction { get; init; } = 0.05;
    /// <summary>T of T²·KL (the paper: 2).</summary>
    public float Temperature { get; init; } = 2f;
    /// <summary>
    /// Weight of the optional hidden-state term (SWIFTKV.md): the mean squared difference between the teacher's and the
    /// student's states entering the last layer, per scored position. 0 (the default): KL only.
    /// </summary>
    public float HiddenLossWeight { get; init; }
    /// <summary>Sequences longer than this keep their first tokens (the paper: 8192).</summary>
    public int MaxSequenceTokens { get; init; } = 8192;
    /// <summary>Seeds the order of the sequences in each epoch.</summary>
    public int Seed { get; init; }
    /// <summary>Where training runs: Auto takes the GPU when CUDA is usable and the run fits its memory, else the CPU.</summary>
    public BackendKind Backend { get; init; } = BackendKind.Auto;
    /// <summary>
    /// On the GPU, run the fp32 GEMMs on TF32 tensor cores (inputs rounded to 10 mantissa bits, sums in fp32; the
    /// default) rather than as exact fp32, which is several times slower. The CPU is always exact fp32.
    /// </summary>
    public bool Tf32 { get; init; } = true;
    /// <summary>
    /// Data parallelism: this process is rank <see cref="Rank"/> of <see cref="World"/>, one GPU each, all given the same
    /// data and options (`swiftkv distill --gpus N` starts them). Each trains on its share of every batch and the ranks
    /// sum their gradients over NCCL, so the result is one GPU's over the whole batch. Rank 0 logs and writes.
    /// </summary>
    public int World { get; init; } = 1;
    /// <inheritdoc cref="World"/>
    public int Rank { get; init; }
    /// <summary>With <see cref="World"/> > 1: a directory every rank can read, where rank 0 leaves NCCL's unique id for the others.</summary>
    public string? Rendezvous { get; init; }

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first setting out of range.</summary>
    public void Validate()
    {
        static void Check(bool ok, string setting, object value, string rule)
        {
            if (!ok) throw new ArgumentException($"DistillationOptions.{setting} must be {rule} (got {value}).");
        }
        Check(Epochs >= 1, nameof(Epochs), Epochs, ">= 1");
        Check(BatchSize >= 1, nameof(BatchSize), BatchSize, ">= 1");
        Check(LearningRate > 0 && double.IsFinite(LearningRate), nameof(LearningRate), LearningRate, "a positive number");
        Check(WarmupFraction >= 0 && WarmupFraction < 1, nameof(WarmupFraction), WarmupFraction, "in [0, 1)");
        Check(Temperature > 0 && float.IsFinite(Temperature), nameof(Temperature), Temperature, "a positive number");
        Check(HiddenLossWeight >= 0 && float.IsFinite(HiddenLossWeight), nameof(HiddenLossWeight), HiddenLossWeight, "a number >= 0");
        Check(MaxSequenceTokens >= 2, nameof(MaxSequenceTokens), MaxSequenceTokens, ">= 2");
        Check(World >= 1, nameof(World), World, ">= 1");
        Check(Rank >= 0 && Rank < World, nameof(Rank), Rank, $"in 0..{World - 1}");
        if (World > 1)
        {
            if (Backend == BackendKind.Cpu) throw new ArgumentException("DistillationOptions.World > 1 trains on several GPUs: it cannot run on the CPU backend.");
            if (string.IsNullOrEmpty(Rendezvous)) throw new ArgumentException("DistillationOptions.World > 1 needs a Rendezvous directory shared by the ranks.");
        }
    }

    /// <summary>The learning rate of step <paramref name="step"/> (0-based) of <paramref name="totalSteps"/>.</summary>
    public double LearningRateAt(int step, int totalSteps)
    {
        int warmup = (int)Math.Ceiling(WarmupFraction * totalSteps);
        if (step < warmup) return LearningRate * (step + 1) / warmup;
        // As Hugging Face's cosine schedule: the last step still has a small rate (a rate of 0 would waste its batch).
        double progress = (double)(step - warmup) / (totalSteps - warmup);
        return LearningRate * 0.5 * (1 + Math.Cos(Math.PI * progress));
    }
}
