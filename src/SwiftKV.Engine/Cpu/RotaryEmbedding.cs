// Rotary position embedding in Hugging Face's rotate-half layout, with Llama 3 "llama3" frequency scaling.
// Frequencies follow transformers' _compute_llama3_parameters, but in double, cast to fp32 once (transformers works
// in fp32 throughout, so a frequency may differ from its by 1 ulp). The angle for a position is one fp32 multiply
// (inv_freq fp32 * position fp32), as PyTorch does, so given equal frequencies far positions round alike.
using SwiftKV.Model;

namespace SwiftKV.Engine.Cpu;

/// <summary>RoPE for one model: inverse frequencies plus the rotation of (num_heads, head_dim) vectors.</summary>
public sealed class RotaryEmbedding
{
    readonly float[] _invFreq;

    public RotaryEmbedding(LlamaConfig config)
    {
        HeadDim = config.HeadDim;
        _invFreq = ComputeInvFreq(config.HeadDim, config.RopeTheta, config.RopeScaling);
    }

    public int HeadDim { get; }

    /// <summary>(head_dim / 2) inverse frequencies after rope scaling.</summary>
    public ReadOnlySpan<float> InvFreq => _invFreq;

    /// <summary>
    /// inv_freq_i = theta^(-2i/d), then llama3 scaling: low frequencies (wavelength above
    /// original_max / low_freq_factor) are divided by factor, high frequencies kept, the band between blended.
    /// </summary>
    public static float[] ComputeInvFreq(int headDim, double theta, Llama3RopeScaling? scaling)
    {
        var inv = new float[headDim / 2];
        for (int i = 0; i < inv.Length; i++)
        {
            double f = 1.0 / Math.Pow(theta, 2.0 * i / headDim);
            if (scaling is { } s)
            {
                double lowFreqWavelen = s.OriginalMaxPositionEmbeddings / s.LowFreqFactor;
                double highFreqWavelen = s.OriginalMaxPositionEmbeddings / s.HighFreqFactor;
                double wavelen = 2 * Math.PI / f;
                if (wavelen > lowFreqWavelen)
                {
                    f /= s.Factor;
                }
                else if (wavelen >= highFreqWavelen)
                {
                    double smooth = (s.OriginalMaxPositionEmbeddings / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                    f = (1 - smooth) * f / s.Factor + smooth * f;
                }
            }
            inv[i] = (float)f;
        }
        return inv;
    }

    /// <summary>Fills (head_dim / 2) cos and sin values for one position.</summary>
    public void Angles(int position, Span<float> cos, Span<float> sin)
    {
        float p = position;
        for (int i = 0; i < _invFreq.Length; i++)
        {
            float angle = _invFreq[i] * p;
            cos[i] = (float)Math.Cos(angle);
            sin[i] = (float)Math.Sin(angle);
        }
    }

    /// <summary>
    /// Rotates row t of <paramref name="rows"/> ((positions.Length, num_heads * head_dim)) to position
    /// <paramref name="positions"/>[t], in place. <paramref name="inverse"/> rotates by the opposite angles: a rotation's
    /// transpose, so RoPE's gradient (distillation's backward pass).
    /// </summary>
    public void RotateRows(Span<float> rows, int numHeads, ReadOnlySpan<int> positions, bool inverse = false)
    {
        int width = numHeads * HeadDim;
        Span<float> cos = stackalloc float[HeadDim / 2];
        Span<float> sin = stackalloc float[HeadDim / 2];
        for (int t = 0; t < positions.Length; t++)
        {
            Angles(positions[t], cos, sin);
            if (inverse)
                for (int i = 0; i < sin.Length; i++) sin[i] = -sin[i];
            Rotate(rows.Slice(t * width, width), numHeads, cos, sin);
        }
    }

    /// <summary>
    /// Rotates every head of <paramref name="vec"/> (num_heads, head_dim) in place:
    /// out[i] = x[i]·cos - x[i+d/2]·sin, out[i+d/2] = x[i+d/2]·cos + x[i]·sin.
    /// </summary>
    public static void Rotate(Span<float> vec, int numHeads, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        int half = cos.Length;
        for (int h = 0; h < numHeads; h++)
        {
            var head = vec.Slice(h * 2 * half, 2 * half);
            for (int i = 0; i < half; i++)
            {
                float a = head[i], b = head[i + half];
                head[i] = a * cos[i] - b * sin[i];
                head[i + half] = b * cos[i] + a * sin[i];
            }
        }
    }
}
