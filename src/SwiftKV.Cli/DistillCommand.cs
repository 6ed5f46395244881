// swiftkv distill: SwiftKV's distillation of a transformed (or published) SwiftKV checkpoint on JSON Lines data,
// in fp32 on the GPU or the CPU (SwiftKV.Engine/Distillation). Prints the student-vs-teacher loss before and after, then writes
// the checkpoint with its trained SwiftKV tensors to --out.
using SwiftKV.Engine.Distillation;

namespace SwiftKV.Cli;

internal static class DistillCommand
{
    public const string Usage =
        "--model DIR (a SwiftKV checkpoint: swiftkv transform makes one) --data FILE.jsonl --out DIR [--eval FILE.jsonl]\n" +
        "              [--epochs 1 --batch-size 8 --lr 2e-4 --warmup 0.05 --temperature 2 --hidden-loss 0 --max-seq 8192 --seed 0] [--force]\n" +
        "              [--backend auto|cpu|cuda] [--gemm tf32|fp32] [--gpus N: data parallel over N GPUs, one process each, NCCL]\n" +
        "              --hidden-loss W adds W x the mean squared difference of the states entering the last layer\n" +
        "              data: one JSON object per line, {\"messages\": [{\"role\": ..., \"content\": ...}, ...]} (the loss covers\n" +
        "              assistant replies) or {\"text\": ...} (every token)\n" +
        "              fp32 on the GPU (auto: when CUDA is usable and the run fits; GEMMs on TF32 tensor cores unless --gemm fp32)\n" +
        "              or on the CPU (the reference, always exact fp32: for small models and checking)\n" +
        "              --gpus N: one process per GPU (CUDA_VISIBLE_DEVICES's first N, or 0..N-1), each taking every N-th\n" +
        "              sequence of a --batch-size batch, gradients summed over NCCL (libnccl2); no CPU fallback";

    static readonly (string Setting, string Option)[] s_options =
    [
        (nameof(DistillationOptions.Epochs), "--epochs"), (nameof(DistillationOptions.BatchSize), "--batch-size"),
        (nameof(DistillationOptions.LearningRate), "--lr"), (nameof(DistillationOptions.WarmupFraction), "--warmup"),
        (nameof(DistillationOptions.Temperature), "--temperature"),
        (nameof(DistillationOptions.HiddenLossWeight), "--hidden-loss"), (nameof(DistillationOptions.MaxSequenceTokens), "--max-seq"),
    ];

    static string Count(int n, string noun) => n == 1 ? $"1 {noun}" : $"{n:N0} {noun}s";

    public static int Run(CliArgs a)
    {
        string model = a.Required("model"), data = a.Required("data"), outDir = a.Required("out");
        string? eval = a.String("eval");
        var defaults = new DistillationOptions();
        string? gemm = a.String("gemm");
        var options = new DistillationOptions
        {
            Epochs = a.Int("epochs") ?? defaults.Epochs,
            BatchSize = a.Int("batch-size") ?? defaults.BatchSize,
            LearningRate = a.Double("lr") ?? defaults.LearningRate,
            WarmupFraction = a.Double("warmup") ?? defaults.WarmupFraction,
            Temperature = a.Float("temperature") ?? defaults.Temperature,
            HiddenLossWeight = a.Float("hidden-loss") ?? defaults.HiddenLossWeight,
            MaxSequenceTokens = a.Int("max-seq") ?? defaults.MaxSequenceTokens,
            Seed = a.Int("seed") ?? defaults.Seed,
            Backend = LogitsCommand.ParseBackend(a.String("backend")),
            Tf32 = gemm?.ToLowerInvariant() switch
            {
                null or "tf32" => true,
                "fp32" => false,
                var other => throw new UsageException($"--gemm must be tf32 or fp32 (got '{other}')"),
            },
        };
        if (gemm is not null && options.Backend == SwiftKV.Engine.BackendKind.Cpu)
            throw new UsageException("--gemm sets the GPU trainer's GEMMs; --backend cpu always computes in exact fp32");
        int gpus = a.Int("gpus") ?? 1;
        if (gpus < 1) throw new UsageException($"--gpus must be >= 1 (got {gpus})");
        if (gpus > 1 && options.Backend == SwiftKV.Engine.BackendKind.Cpu)
            throw new UsageException("--gpus trains on several GPUs; it cannot go with --backend cpu");
        // A rank's own options, set by the launcher below (not for typing by hand).
        int? rank = a.Int("rank"), world = a.Int("world"), launcherPid = a.Int("launcher-pid");
        string? rendezvous = a.String("rendezvous");
        if (rank is not null)
            options = options with { Rank = rank.Value, World = world ?? throw new UsageException("--rank goes with --world"), Rendezvous = rendezvous };
        bool force = a.Flag("force");
        a.RejectUnknown();
        try { options.Validate(); }
        catch (ArgumentException e)
        {
            string message = e.Message;
            foreach (var (setting, option) in s_options) message = message.Replace($"DistillationOptions.{setting}", option, StringComparison.Ordinal);
            throw new UsageException(message);
        }
        CliArgs.CheckModelDirectory(model);
        if (ModelCommands.SameDirectory(model, outDir))
            throw new UsageException("--out must be another directory than --model: writing the result removes the old weights first.");
        if (rank is null or 0) ModelCommands.RefuseExistingCheckpoint(outDir, force);

        // Ctrl-C (or SIGTERM) stops training at the next sequence, or the write before its files move into place;
        // nothing is written then.
        bool existed = Directory.Exists(outDir);
        using var interrupt = new Interrupt();
        if (gpus > 1 && rank is null)
        {
            int code = DataParallelLauncher.Run(gpus, a.Raw, interrupt.Token);
            if (code == 130) Interrupt.RemoveIfLeftEmpty(outDir, existed);
            return code;
        }
        if (launcherPid is { } pid) DataParallelLauncher.EndWithTheLauncher(pid);
        DistillationReport report;
        try
        {
            report = Distiller.Run(model, data, outDir, options, eval, Console.WriteLine, interrupt.Token);
        }
        catch (OperationCanceledException e) when (interrupt.Caused(e))
        {
            if (options.Rank != 0) return 130;   // rank 0 speaks for the run, and owns --out
            Interrupt.RemoveIfLeftEmpty(outDir, existed);
            return Interrupt.Report("distill", outDir);
        }
        if (options.Rank != 0) return 0;   // rank 0 wrote, and says so
        Console.WriteLine($"wrote {outDir}: {Count(report.Steps, "step")} over {Count(report.Sequences, "sequence")} ({report.Tokens:N0} tokens) in {report.Elapsed.TotalSeconds:F1} s " +
            $"(training {report.Training.TotalSeconds:F1} s, {report.TrainedTokensPerSecond:N0} tokens/s); " +
            $"on {report.ScoredOn}: loss {report.Before.Loss:F4} -> {report.After.Loss:F4}, top-1 agreement {report.Before.Top1Agreement:P1} -> {report.After.Top1Agreement:P1}");
        return 0;
    }
}
