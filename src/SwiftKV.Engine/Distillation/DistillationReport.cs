// What `swiftkv distill` reports at the end of a run.
namespace SwiftKV.Engine.Distillation;

/// <summary>
/// What a distillation run did, with the student scored against the teacher before and after (the lines its data lost
/// to --max-seq are told in the run's log, before training).
/// </summary>
public sealed record DistillationReport(
    DistillationScore Before, DistillationScore After, int Steps, int Sequences, long Tokens, TimeSpan Elapsed, string ScoredOn);
