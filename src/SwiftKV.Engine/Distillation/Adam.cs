// Adam (Kingma & Ba) without weight decay, as torch.optim.Adam computes it: bias-corrected moments and
// p -= lr / (1 - β1^t) · m / (sqrt(v) / sqrt(1 - β2^t) + ε). The paper's distillation uses β = (0.9, 0.999).
namespace SwiftKV.Engine.Distillation;

/// <summary>Adam over one set of SwiftKV tensors.</summary>
public sealed class Adam
{
    readonly SwiftKvTensors _parameters, _m, _v;

    public Adam(SwiftKvTensors parameters, float beta1 = 0.9f, float beta2 = 0.999f, float epsilon = 1e-8f)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (!(beta1 >= 0 && beta1 < 1)) throw new ArgumentOutOfRangeException(nameof(beta1), beta1, "must be in [0, 1).");
        if (!(beta2 >= 0 && beta2 < 1)) throw new ArgumentOutOfRangeException(nameof(beta2), beta2, "must be in [0, 1).");
        if (!(epsilon > 0)) throw new ArgumentOutOfRangeException(nameof(epsilon), epsilon, "must be positive.");
        _parameters = parameters;
        _m = parameters.ZerosLike();
        _v = parameters.ZerosLike();
        Beta1 = beta1;
        Beta2 = beta2;
        Epsilon = epsilon;
    }

    public float Beta1 { get; }
    public float Beta2 { get; }
    public float Epsilon { get; }
    /// <summary>Steps taken so far.</summary>
    public int Steps { get; private set; }

    /// <summary>One update of every parameter from <paramref name="gradients"/> (same shapes) at <paramref name="learningRate"/>.</summary>
    public void Step(SwiftKvTensors gradients, double learningRate)
    {
        ArgumentNullException.ThrowIfNull(gradients);
        if (!(learningRate >= 0) || !double.IsFinite(learningRate))
            throw new ArgumentOutOfRangeException(nameof(learningRate), learningRate, "must be a finite number >= 0.");
        Steps++;
        double c1 = 1 - Math.Pow(Beta1, Steps), c2Sqrt = Math.Sqrt(1 - Math.Pow(Beta2, Steps));
        var p = _parameters.Named();
        var g = gradients.Named();
        var m = _m.Named();
        var v = _v.Named();
        if (g.Count != p.Count) throw new ArgumentException("the gradients do not match the parameters.", nameof(gradients));
        for (int i = 0; i < p.Count; i++)
        {
            float[] pi = p[i].Values, gi = g[i].Values, mi = m[i].Values, vi = v[i].Values;
            if (gi.Length != pi.Length) throw new ArgumentException($"gradient '{g[i].Name}' has {gi.Length} values for {pi.Length}.", nameof(gradients));
            for (int k = 0; k < pi.Length; k++)
            {
                float gk = gi[k];
                mi[k] = Beta1 * mi[k] + (1 - Beta1) * gk;
                vi[k] = Beta2 * vi[k] + (1 - Beta2) * gk * gk;
                pi[k] -= (float)(learningRate / c1 * mi[k] / (Math.Sqrt(vi[k]) / c2Sqrt + Epsilon));
            }
        }
    }
}
