// A distillation loss summed over scored positions, with how often the student's top token is the teacher's.
namespace SwiftKV.Engine.Distillation;

/// <summary>What one sequence (or a sum of them) scored: the loss and how often the student's top token is the teacher's.</summary>
public readonly record struct DistillationScore(double LossSum, int Positions, int Top1Agreements)
{
    /// <summary>T²·KL per selected position.</summary>
    public double Loss => Positions == 0 ? 0 : LossSum / Positions;
    /// <summary>The share of selected positions where the student's and the teacher's argmax agree.</summary>
    public double Top1Agreement => Positions == 0 ? 0 : (double)Top1Agreements / Positions;
    public static DistillationScore operator +(DistillationScore a, DistillationScore b) =>
        new(a.LossSum + b.LossSum, a.Positions + b.Positions, a.Top1Agreements + b.Top1Agreements);
}
