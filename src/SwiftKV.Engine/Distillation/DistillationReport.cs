// What `swiftkv distill` reports at the end of a run.
namespace SwiftKV.Engine.Distillation;

/// <summary>
/// What a distillation run did, with the student scored against the teacher before and after (the lines its data lost
/// to --max-seq are told in the run's log, before training).
/// </summary>
public sealed record DistillationReport(
    DistillationScore Before, DistillationScore After, int Steps, int Sequences, long Tokens, TimeSpan Elapsed, string ScoredOn)
{
    /// <summary>The optimizer steps alone (no loading, scoring or writing): what more GPUs shorten.</summary>
    public TimeSpan Training { get; init; }
    /// <summary>Tokens of the data trained on (every epoch's) per second of <see cref="Training"/>.</summary>
    public double TrainedTokensPerSecond => Training > TimeSpan.Zero ? Tokens * (double)Epochs / Training.TotalSeconds : 0;
    /// <summary>Passes over the data.</summary>
    public int Epochs { get; init; } = 1;
}
