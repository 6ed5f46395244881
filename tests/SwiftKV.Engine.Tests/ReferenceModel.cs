// An obviously-correct forward pass to check CpuBackend against: plain loops in double precision, no cache, no
// parallelism, the whole sequence recomputed on every call, every token through every layer. It shares no code
// with the engine (its own RMSNorm, RoPE with its own llama3 frequency formula, attention, MLP).
// SwiftKV: layers j >= l take K/V from norm_swiftkv(x_l) through the group leader's *_swiftkv projections and Q
// from their own q_proj_swiftkv; since every token runs every layer here, there is no "last token" shortcut at all.
using SwiftKV.Model;

namespace SwiftKV.Engine.Tests;

public static class ReferenceModel
{
    /// <summary>Logits (num_tokens, vocab_size) for every position of <paramref name="tokens"/>.</summary>
    public static double[][] Forward(LlamaWeights w, int[] tokens)
    {
        var c = w.Config;
        int n = tokens.Length, hidden = c.HiddenSize, hd = c.HeadDim;
        bool swiftKv = w.SwiftKvEnabled;
        int l = c.NumKeyValueLayers, g = c.KeyValueGroupSize;

        var x = new double[n][];
        for (int t = 0; t < n; t++)
        {
            x[t] = new double[hidden];
            for (int i = 0; i < hidden; i++) x[t][i] = w.EmbedTokens[tokens[t] * hidden + i];
        }

        double[][]? s = null;
        for (int layer = 0; layer < c.NumHiddenLayers; layer++)
        {
            var lw = w.Layers[layer];
            bool later = swiftKv && layer >= l;
            if (later && layer == l) s = x.Select(r => RmsNorm(r, w.NormSwiftKv!, c.RmsNormEps)).ToArray();

            var h = x.Select(r => RmsNorm(r, lw.InputLayernorm, c.RmsNormEps)).ToArray();
            double[][] q, k, v;
            if (!later)
            {
                q = h.Select(r => MatVec(lw.QProj!, lw.QBias, r, c.QueryDim)).ToArray();
                k = h.Select(r => MatVec(lw.KProj!, lw.KBias, r, c.KeyValueDim)).ToArray();
                v = h.Select(r => MatVec(lw.VProj!, lw.VBias, r, c.KeyValueDim)).ToArray();
            }
            else
            {
                var leader = w.Layers[l + (layer - l) / g * g];
                q = h.Select(r => MatVec(lw.QProjSwiftKv!, lw.QBiasSwiftKv, r, c.QueryDim)).ToArray();
                k = s!.Select(r => MatVec(leader.KProjSwiftKv!, leader.KBiasSwiftKv, r, c.KeyValueDim)).ToArray();
                v = s!.Select(r => MatVec(leader.VProjSwiftKv!, leader.VBiasSwiftKv, r, c.KeyValueDim)).ToArray();
            }
            for (int t = 0; t < n; t++)
            {
                Rope(q[t], c.NumAttentionHeads, t, c);
                Rope(k[t], c.NumKeyValueHeads, t, c);
            }

            for (int t = 0; t < n; t++)
            {
                var attn = new double[c.QueryDim];
                for (int head = 0; head < c.NumAttentionHeads; head++)
                {
                    int kvHead = head / (c.NumAttentionHeads / c.NumKeyValueHeads);
                    var scores = new double[t + 1];
                    for (int u = 0; u <= t; u++)
                    {
                        double dot = 0;
                        for (int d = 0; d < hd; d++) dot += q[t][head * hd + d] * k[u][kvHead * hd + d];
                        scores[u] = dot / Math.Sqrt(hd);
                    }
                    double max = scores.Max(), sum = 0;
                    for (int u = 0; u <= t; u++) sum += scores[u] = Math.Exp(scores[u] - max);
                    for (int u = 0; u <= t; u++)
                        for (int d = 0; d < hd; d++)
                            attn[head * hd + d] += scores[u] / sum * v[u][kvHead * hd + d];
                }
                var o = MatVec(lw.OProj, lw.OBias, attn, hidden);
                for (int i = 0; i < hidden; i++) x[t][i] += o[i];

                var h2 = RmsNorm(x[t], lw.PostAttentionLayernorm, c.RmsNormEps);
                var gate = MatVec(lw.GateProj, null, h2, c.IntermediateSize);
                var up = MatVec(lw.UpProj, null, h2, c.IntermediateSize);
                var act = new double[c.IntermediateSize];
                for (int i = 0; i < act.Length; i++) act[i] = gate[i] / (1 + Math.Exp(-gate[i])) * up[i];
                var down = MatVec(lw.DownProj, null, act, hidden);
                for (int i = 0; i < hidden; i++) x[t][i] += down[i];
            }
        }
        return x.Select(r => MatVec(w.LmHead, null, RmsNorm(r, w.Norm, c.RmsNormEps), c.VocabSize)).ToArray();
    }

    /// <summary>inv_freq_i = theta^(-2i/d) with the llama3 rule of SWIFTKV.md written out directly.</summary>
    public static double InvFreq(int i, LlamaConfig c)
    {
        double inv = Math.Pow(c.RopeTheta, -2.0 * i / c.HeadDim);
        if (c.RopeScaling is not { } rs) return inv;
        double wavelength = 2 * Math.PI / inv;
        if (wavelength > rs.OriginalMaxPositionEmbeddings / rs.LowFreqFactor) return inv / rs.Factor;
        if (wavelength < rs.OriginalMaxPositionEmbeddings / rs.HighFreqFactor) return inv;
        double smooth = (rs.OriginalMaxPositionEmbeddings / wavelength - rs.LowFreqFactor) / (rs.HighFreqFactor - rs.LowFreqFactor);
        return (1 - smooth) * inv / rs.Factor + smooth * inv;
    }

    static void Rope(double[] vec, int heads, int position, LlamaConfig c)
    {
        int half = c.HeadDim / 2;
        for (int head = 0; head < heads; head++)
        {
            int b = head * c.HeadDim;
            for (int i = 0; i < half; i++)
            {
                double angle = position * InvFreq(i, c);
                double x1 = vec[b + i], x2 = vec[b + i + half];
                vec[b + i] = x1 * Math.Cos(angle) - x2 * Math.Sin(angle);
                vec[b + i + half] = x2 * Math.Cos(angle) + x1 * Math.Sin(angle);
            }
        }
    }

    static double[] RmsNorm(double[] x, float[] w, double eps)
    {
        double ms = x.Sum(v => v * v) / x.Length;
        double r = 1 / Math.Sqrt(ms + eps);
        return x.Select((v, i) => v * r * w[i]).ToArray();
    }

    static double[] MatVec(float[] m, float[]? bias, double[] x, int rows)
    {
        var y = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            double acc = bias?[r] ?? 0;
            for (int col = 0; col < x.Length; col++) acc += m[(long)r * x.Length + col] * x[col];
            y[r] = acc;
        }
        return y;
    }
}
