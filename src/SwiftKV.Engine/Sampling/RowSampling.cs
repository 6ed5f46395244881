// One logits row's token pick on a batched backend (IGreedyBatchedBackend.ForwardBatchSample), so a sampled decode
// step copies one id per sequence back instead of a 512 KB logits row (Llama 3) and a sort of it on the host.
// The rule is the GPU sampler's (native-kernels/sampling.cu): z = (logit - max) / T; top-k keeps every z at or above
// the k-th largest (ties kept); top-p then keeps every z at or above the largest threshold whose mass reaches top_p of
// the top-k mass; the token is the first, in vocabulary order, whose running kept mass exceeds U times the kept mass.
// The Sampler picks with it too, so a request's tokens follow one rule whichever side picks them. Pick is the rule on
// the CPU, in double (the Sampler, CpuBackend, and the GPU tests' reference); the kernel's fp32 sums may put a draw
// on the other side of a bucket edge, rarely.
namespace SwiftKV.Engine.Sampling;

/// <summary>
/// How one logits row picks its token: <paramref name="Temperature"/> 0 is the argmax (lowest id on ties);
/// otherwise a draw with the uniform <paramref name="U"/> in [0, 1) from softmax(logits / T) restricted by
/// <paramref name="TopK"/> (0 = off) then <paramref name="TopP"/> (1 = off).
/// </summary>
public readonly record struct RowSampling(float Temperature, int TopK, float TopP, float U)
{
    /// <summary>The argmax pick.</summary>
    public static RowSampling Greedy => new(0, 0, 1, 0);

    /// <summary>Throws <see cref="ArgumentException"/> naming <paramref name="what"/> when a field is out of range.</summary>
    public void Validate(string what)
    {
        if (!(Temperature >= 0) || float.IsInfinity(Temperature) || (Temperature > 0 && float.IsInfinity(1f / Temperature)))
            throw new ArgumentException($"{what}: temperature must be finite, >= 0, and 0 or with a finite inverse (got {Temperature}).");
        if (TopK < 0) throw new ArgumentException($"{what}: top_k must be >= 0 (got {TopK}).");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"{what}: top_p must be in (0, 1] (got {TopP}).");
        if (!(U >= 0 && U < 1)) throw new ArgumentException($"{what}: u must be in [0, 1) (got {U}).");
    }

    /// <summary>
    /// The token this pick gives for <paramref name="logits"/> on the CPU: -1 when no logit is above -inf (NaN counts
    /// as -inf); the first +inf token when there is one.
    /// </summary>
    public static int Pick(ReadOnlySpan<float> logits, RowSampling s)
    {
        if (logits.IsEmpty) throw new ArgumentException("logits are empty.", nameof(logits));
        if (s.Temperature == 0 || float.IsInfinity(1f / s.Temperature)) return Sampler.GreedyOrNone(logits);   // T -> 0: the argmax
        int n = logits.Length;
        float max = float.NegativeInfinity;
        foreach (float x in logits) if (x > max) max = x;   // NaN never compares greater
        if (max == float.NegativeInfinity) return -1;
        if (max == float.PositiveInfinity) return logits.IndexOf(float.PositiveInfinity);
        double invT = 1f / s.Temperature;   // the kernel's fp32 inverse
        var z = new double[n];
        for (int i = 0; i < n; i++) z[i] = float.IsNaN(logits[i]) ? double.NegativeInfinity : (logits[i] - max) * invT;

        var sorted = z.Where(v => v > double.NegativeInfinity).ToArray();
        Array.Sort(sorted);
        Array.Reverse(sorted);   // most likely first
        double threshold = double.NegativeInfinity;
        int kept = sorted.Length;
        if (s.TopK > 0 && s.TopK < kept)
        {
            threshold = sorted[s.TopK - 1];
            while (kept > 0 && sorted[kept - 1] < threshold) kept--;
        }
        if (s.TopP < 1)
        {
            double mass = 0;
            for (int i = 0; i < kept; i++) mass += Math.Exp(sorted[i]);
            double goal = s.TopP * mass, run = 0;
            for (int i = 0; i < kept; i++)
            {
                run += Math.Exp(sorted[i]);
                // Ties at a threshold are kept together: the cut falls after the last token of this value.
                if (run >= goal && (i + 1 == kept || sorted[i + 1] < sorted[i]))
                {
                    threshold = sorted[i];
                    break;
                }
            }
        }
        double total = 0;
        for (int i = 0; i < n; i++) if (z[i] >= threshold && z[i] > double.NegativeInfinity) total += Math.Exp(z[i]);
        double target = s.U * total, acc = 0;
        int last = -1;
        for (int i = 0; i < n; i++)
        {
            if (!(z[i] >= threshold) || z[i] == double.NegativeInfinity) continue;
            last = i;
            acc += Math.Exp(z[i]);
            if (acc > target) return i;
        }
        return last;
    }
}
