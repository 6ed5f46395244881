// What `swiftkv distill` reports at the end of a run.
namespace SwiftKV.Engine.Distillation;

/// <summary>What a distillation run did, with the student scored against the teacher before and after.</summary>
public sealed record DistillationReport(
    DistillationScore Before, DistillationScore After, int Steps, int Sequences, long Tokens, int Truncated, int Skipped,
    TimeSpan Elapsed, string ScoredOn);
