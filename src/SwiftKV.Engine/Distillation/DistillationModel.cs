// One sequence of SwiftKV distillation (SWIFTKV.md, "Distillation"), in fp32 on the CPU: the teacher is the checkpoint
// with SwiftKV off, the student the same weights with SwiftKV on, and the loss T²·KL(p_teacher || p_student) at
// temperature T over the positions the caller selects (those that predict assistant tokens).
//
// The student runs EVERY token through every layer, as the SwiftKV engine computes the logits of any one position:
//   x_l from layers 0..l-1 (frozen, shared with the teacher);  s = norm_swiftkv(x_l);
//   K/V of each later cache from s (AcrossKV: one per group leader);  every token continues through layers l..L-1
//   with q_proj_swiftkv. Only norm_swiftkv and the *_swiftkv projections train, so the backward pass runs through
//   layers l..L-1 only and stops at x_l.
// Memory: the later layers' activations for the sequence (about (L - l)·T·(3·hidden + q_dim + 2·intermediate)
// floats) and a chunk of logit rows at a time, never (T, vocab_size) at once.
using System.Numerics.Tensors;
using SwiftKV.Engine.Cpu;
using SwiftKV.Model;

namespace SwiftKV.Engine.Distillation;

/// <summary>The distillation forward and backward of a teacher (SwiftKV off) and its student (SwiftKV on).</summary>
public sealed class DistillationModel
{
    const int LogitRowsPerChunk = 32;

    readonly LlamaWeights _teacher, _student;
    readonly LlamaConfig _cfg;
    readonly RotaryEmbedding _rope;
    readonly float _eps;

    /// <param name="teacher">The checkpoint loaded with SwiftKV off.</param>
    /// <param name="student">The same checkpoint with SwiftKV on; its SwiftKV arrays are what <see cref="Parameters"/> exposes.</param>
    /// <param name="temperature">T of the loss (the paper: 2).</param>
    /// <param name="hiddenLossWeight">
    /// The weight of SWIFTKV.md's optional second term: the mean squared difference between the teacher's and the
    /// student's hidden states at the second-to-last layer (the last layer's input), per scored position and averaged
    /// over hidden_size. 0 (the default) leaves it out.
    /// </param>
    public DistillationModel(LlamaWeights teacher, LlamaWeights student, float temperature, float hiddenLossWeight = 0f)
    {
        CheckArguments(teacher, student, temperature, hiddenLossWeight);
        _teacher = teacher;
        _student = student;
        HiddenLossWeight = hiddenLossWeight;
        _cfg = student.Config;
        _rope = new RotaryEmbedding(_cfg);
        _eps = (float)_cfg.RmsNormEps;
        Temperature = temperature;
        Parameters = SwiftKvTensors.Of(student);
    }

    /// <summary>What every trainer requires of its teacher, student and loss settings (the CPU's and the GPU's).</summary>
    internal static void CheckArguments(LlamaWeights teacher, LlamaWeights student, float temperature, float hiddenLossWeight)
    {
        ArgumentNullException.ThrowIfNull(teacher);
        ArgumentNullException.ThrowIfNull(student);
        if (teacher.SwiftKvEnabled) throw new ArgumentException("the teacher must be loaded with SwiftKV off.", nameof(teacher));
        if (!student.SwiftKvEnabled) throw new ArgumentException("the student must be loaded with SwiftKV on.", nameof(student));
        if (!ReferenceEquals(teacher.Config, student.Config) && teacher.Config != student.Config)
            throw new ArgumentException("the teacher and the student must come from one config.json.", nameof(student));
        if (!(temperature > 0) || !float.IsFinite(temperature))
            throw new ArgumentOutOfRangeException(nameof(temperature), temperature, "the distillation temperature must be a positive number.");
        if (!(hiddenLossWeight >= 0) || !float.IsFinite(hiddenLossWeight))
            throw new ArgumentOutOfRangeException(nameof(hiddenLossWeight), hiddenLossWeight, "the hidden-state loss weight must be a number >= 0.");
    }

    public LlamaConfig Config => _cfg;
    public float Temperature { get; }
    /// <summary>The weight of the hidden-state MSE term (0: none).</summary>
    public float HiddenLossWeight { get; }
    /// <summary>The trainable tensors, aliasing the student's arrays.</summary>
    public SwiftKvTensors Parameters { get; }

    /// <summary>
    /// Scores <paramref name="tokens"/> at the positions where <paramref name="lossMask"/> is true (position t predicts
    /// token t + 1) and, when <paramref name="gradients"/> is given, adds the gradient of
    /// <paramref name="gradientScale"/> × (the loss summed over those positions) to it.
    /// </summary>
    public DistillationScore Run(ReadOnlySpan<int> tokens, ReadOnlySpan<bool> lossMask, SwiftKvTensors? gradients = null, float gradientScale = 1f)
    {
        int rows = tokens.Length, hidden = _cfg.HiddenSize, l = _cfg.NumKeyValueLayers, layers = _cfg.NumHiddenLayers;
        if (rows == 0) throw new ArgumentException("the sequence is empty.", nameof(tokens));
        if (lossMask.Length != rows) throw new ArgumentException($"the loss mask has {lossMask.Length} entries for {rows} tokens.", nameof(lossMask));
        if (rows > _cfg.MaxPositionEmbeddings)
            throw new ArgumentException($"the sequence has {rows} tokens, more than max_position_embeddings ({_cfg.MaxPositionEmbeddings}).", nameof(tokens));
        foreach (int id in tokens)
            if ((uint)id >= (uint)_cfg.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(tokens), id, $"token id outside the vocabulary (vocab_size {_cfg.VocabSize}).");
        if (gradients is not null && !ReferenceEquals(gradients.Config, _cfg) && gradients.Config != _cfg)
            throw new ArgumentException("the gradients were made for another model.", nameof(gradients));

        var x = new float[rows * hidden];
        for (int t = 0; t < rows; t++)
            Array.Copy(_student.EmbedTokens, (long)tokens[t] * hidden, x, (long)t * hidden, hidden);
        for (int i = 0; i < l; i++)
            FullLayer(x, rows, _student.Layers[i], _student.Layers[i].QProj!, _student.Layers[i].QBias);
        var xl = (float[])x.Clone();

        // The teacher: the later layers as plain Llama, nothing kept for a backward pass.
        var xTeacher = (float[])xl.Clone();
        float[]? teacherBeforeLast = null;
        for (int j = l; j < layers; j++)
        {
            if (j == layers - 1 && HiddenLossWeight > 0) teacherBeforeLast = (float[])xTeacher.Clone();
            FullLayer(xTeacher, rows, _teacher.Layers[j], _teacher.Layers[j].QProj!, _teacher.Layers[j].QBias);
        }

        var student = StudentForward(xl, rows, keepActivations: gradients is not null);
        var dx = gradients is null ? null : new float[rows * hidden];
        var score = Loss(xTeacher, student.Output, rows, lossMask, dx, gradientScale);
        float[]? dBeforeLast = null;
        if (teacherBeforeLast is not null)
        {
            dBeforeLast = gradients is null ? null : new float[rows * hidden];
            score += HiddenLoss(teacherBeforeLast, student.BeforeLast!, rows, lossMask, dBeforeLast, gradientScale);
        }
        if (gradients is not null && score.Positions > 0)
            StudentBackward(student, xl, rows, dx!, dBeforeLast, gradients);
        return score;
    }

    /// <summary>A plain Llama layer over the whole sequence, in place on x (the frozen layers and the teacher's).</summary>
    void FullLayer(float[] x, int rows, LlamaLayerWeights layer, float[] qW, float[]? qB)
    {
        int hidden = _cfg.HiddenSize, kvDim = _cfg.KeyValueDim;
        var h = Norm(x, rows, layer.InputLayernorm);
        var k = new float[rows * kvDim];
        var v = new float[rows * kvDim];
        CpuKernels.Linear(h, rows, hidden, layer.KProj!, layer.KBias, kvDim, k);
        CpuKernels.Linear(h, rows, hidden, layer.VProj!, layer.VBias, kvDim, v);
        Rope(k, rows, _cfg.NumKeyValueHeads);
        var q = Query(h, rows, qW, qB);
        var attn = Attend(q, rows, k, v);
        PostAttention.Run(_cfg, _eps, x, rows, layer, attn);
    }

    sealed class LayerActivations
    {
        public required float[] Input, H1, Q;
        public readonly PostAttentionActivations Tail = new();
    }

    sealed record StudentActivations(float[] S, Dictionary<int, (float[] K, float[] V)> Caches, LayerActivations[] Layers, float[] Output, float[]? BeforeLast);

    StudentActivations StudentForward(float[] xl, int rows, bool keepActivations)
    {
        int hidden = _cfg.HiddenSize, kvDim = _cfg.KeyValueDim, l = _cfg.NumKeyValueLayers, layers = _cfg.NumHiddenLayers;
        var s = Norm(xl, rows, _student.NormSwiftKv!);
        var caches = new Dictionary<int, (float[], float[])>();
        for (int j = l; j < layers; j++)
        {
            if (!_cfg.IsKvGroupLeader(j)) continue;
            var layer = _student.Layers[j];
            var k = new float[rows * kvDim];
            var v = new float[rows * kvDim];
            CpuKernels.Linear(s, rows, hidden, layer.KProjSwiftKv!, layer.KBiasSwiftKv, kvDim, k);
            CpuKernels.Linear(s, rows, hidden, layer.VProjSwiftKv!, layer.VBiasSwiftKv, kvDim, v);
            Rope(k, rows, _cfg.NumKeyValueHeads);
            caches[j] = (k, v);
        }
        var x = (float[])xl.Clone();
        var saved = new LayerActivations[layers];
        float[]? beforeLast = null;
        for (int j = l; j < layers; j++)
        {
            if (j == layers - 1 && HiddenLossWeight > 0) beforeLast = (float[])x.Clone();
            var layer = _student.Layers[j];
            var input = keepActivations ? (float[])x.Clone() : [];
            var h1 = Norm(x, rows, layer.InputLayernorm);
            var q = Query(h1, rows, layer.QProjSwiftKv!, layer.QBiasSwiftKv);
            var (k, v) = caches[Leader(j)];
            var attn = Attend(q, rows, k, v);
            var a = keepActivations ? new LayerActivations { Input = input, H1 = h1, Q = q } : null;
            PostAttention.Run(_cfg, _eps, x, rows, layer, attn, a?.Tail);
            if (a is not null) saved[j] = a;
        }
        return new StudentActivations(s, caches, saved, x, beforeLast);
    }

    int Leader(int j) => _cfg.NumKeyValueLayers + (j - _cfg.NumKeyValueLayers) / _cfg.KeyValueGroupSize * _cfg.KeyValueGroupSize;

    /// <summary>
    /// T²·KL(softmax(z_t / T) || softmax(z_s / T)) summed over the selected rows; its gradient with respect to the
    /// student's last hidden state (before model.norm), times <paramref name="scale"/>, is added to <paramref name="dx"/>.
    /// d/dz_s = T·(p_s − p_t).
    /// </summary>
    DistillationScore Loss(float[] xTeacher, float[] xStudent, int rows, ReadOnlySpan<bool> mask, float[]? dx, float scale)
    {
        int hidden = _cfg.HiddenSize, vocab = _cfg.VocabSize;
        var selected = new List<int>();
        for (int t = 0; t < rows; t++) if (mask[t]) selected.Add(t);
        double lossSum = 0;
        int agree = 0;
        float invT = 1f / Temperature;
        var ratio = new float[vocab];
        for (int c0 = 0; c0 < selected.Count; c0 += LogitRowsPerChunk)
        {
            int n = Math.Min(LogitRowsPerChunk, selected.Count - c0);
            var teacherRows = Gather(xTeacher, selected, c0, n);
            var studentRows = Gather(xStudent, selected, c0, n);
            var zt = Logits(Norm(teacherRows, n, _teacher.Norm), n, _teacher.LmHead);
            var zs = Logits(Norm(studentRows, n, _student.Norm), n, _student.LmHead);
            var dz = dx is null ? null : new float[n * vocab];
            // Rows in parallel (one 128K-entry pass each adds up over a chunk), each with its own scratch; the sums are
            // taken in row order afterwards, so the loss does not depend on the threads' timing.
            var rowLoss = new double[n];
            var rowAgrees = new bool[n];
            void Row(int r, float[] ratio)
            {
                var pt = zt.AsSpan(r * vocab, vocab);
                var ps = zs.AsSpan(r * vocab, vocab);
                rowAgrees[r] = TensorPrimitives.IndexOfMax(pt) == TensorPrimitives.IndexOfMax(ps);
                TensorPrimitives.Multiply(pt, invT, pt);
                TensorPrimitives.Multiply(ps, invT, ps);
                CpuKernels.Softmax(pt);
                CpuKernels.Softmax(ps);
                // KL = Σ p_t·log(p_t / p_s): the ratio of two softmax outputs keeps their relative precision, and one
                // vectorized log per row replaces a scalar one per entry. A p_s that underflowed is held at the
                // smallest normal float, so the ratio stays finite (and 0 · finite = 0 where p_t underflowed too).
                TensorPrimitives.Max(ps, 1.17549435e-38f, ratio);   // the smallest normal float
                TensorPrimitives.Divide(pt, ratio, ratio);
                TensorPrimitives.Log(ratio, ratio);
                rowLoss[r] = Temperature * Temperature * (double)TensorPrimitives.Dot(pt, ratio);
                if (dz is not null)
                {
                    var d = dz.AsSpan(r * vocab, vocab);
                    TensorPrimitives.Subtract(ps, pt, d);
                    TensorPrimitives.Multiply(d, Temperature * scale, d);
                }
            }
            if (n == 1 || Environment.ProcessorCount == 1) { for (int r = 0; r < n; r++) Row(r, ratio); }
            else Parallel.For(0, n, () => new float[vocab], (r, _, scratch) => { Row(r, scratch); return scratch; }, _ => { });
            for (int r = 0; r < n; r++)
            {
                lossSum += rowLoss[r];
                if (rowAgrees[r]) agree++;
            }
            if (dx is null) continue;
            var dFinal = new float[n * hidden];
            TrainingKernels.LinearInputGrad(dz!, n, vocab, _student.LmHead, hidden, dFinal);
            var dRows = new float[n * hidden];
            TrainingKernels.RmsNormBackward(studentRows, n, hidden, _student.Norm, _eps, dFinal, dRows, dw: null);
            for (int r = 0; r < n; r++)
                Array.Copy(dRows, r * hidden, dx, selected[c0 + r] * hidden, hidden);
        }
        return new DistillationScore(lossSum, selected.Count, agree);
    }

    /// <summary>
    /// W · Σ over selected rows of mean_i (h_s − h_t)², as a score with no positions of its own (they are the KL's);
    /// its gradient W·2·(h_s − h_t)/hidden_size, times <paramref name="scale"/>, goes into <paramref name="d"/>.
    /// </summary>
    DistillationScore HiddenLoss(float[] teacher, float[] student, int rows, ReadOnlySpan<bool> mask, float[]? d, float scale)
    {
        int hidden = _cfg.HiddenSize;
        double sum = 0;
        var diff = new float[hidden];
        for (int t = 0; t < rows; t++)
        {
            if (!mask[t]) continue;
            TensorPrimitives.Subtract(new ReadOnlySpan<float>(student, t * hidden, hidden), new ReadOnlySpan<float>(teacher, t * hidden, hidden), diff);
            sum += TensorPrimitives.SumOfSquares(diff) / hidden;
            if (d is not null) TensorPrimitives.Multiply(diff, 2f * HiddenLossWeight * scale / hidden, new Span<float>(d, t * hidden, hidden));
        }
        return new DistillationScore(HiddenLossWeight * sum, 0, 0);
    }

    void StudentBackward(StudentActivations a, float[] xl, int rows, float[] dx, float[]? dBeforeLast, SwiftKvTensors g)
    {
        int hidden = _cfg.HiddenSize, qDim = _cfg.QueryDim, kvDim = _cfg.KeyValueDim, inter = _cfg.IntermediateSize;
        int l = _cfg.NumKeyValueLayers;
        var dCaches = a.Caches.ToDictionary(c => c.Key, _ => (K: new float[rows * kvDim], V: new float[rows * kvDim]));
        for (int j = _cfg.NumHiddenLayers - 1; j >= l; j--)
        {
            var layer = _student.Layers[j];
            var s = a.Layers[j];

            // MLP: x_out = mid + down(silu(gate) ⊙ up), gate/up = W·post_norm(mid).
            var dm = new float[rows * inter];
            TrainingKernels.LinearInputGrad(dx, rows, hidden, layer.DownProj, inter, dm);
            var dGate = new float[rows * inter];
            var dUp = new float[rows * inter];
            TrainingKernels.SwiGluBackward(s.Tail.Gate, s.Tail.Up, dm, dGate, dUp);
            var dh2 = new float[rows * hidden];
            TrainingKernels.LinearInputGrad(dGate, rows, inter, layer.GateProj, hidden, dh2);
            TrainingKernels.LinearInputGrad(dUp, rows, inter, layer.UpProj, hidden, dh2);
            var dMid = (float[])dx.Clone();
            TrainingKernels.RmsNormBackward(s.Tail.Mid, rows, hidden, layer.PostAttentionLayernorm, _eps, dh2, dMid, dw: null);

            // Attention: mid = input + o_proj(attn(q, K, V)), q = RoPE(q_proj_swiftkv · input_norm(input)).
            var dAttn = new float[rows * qDim];
            TrainingKernels.LinearInputGrad(dMid, rows, hidden, layer.OProj, qDim, dAttn);
            var dq = new float[rows * qDim];
            var (dK, dV) = dCaches[Leader(j)];
            var (k, v) = a.Caches[Leader(j)];
            TrainingKernels.AttentionBackward(s.Q, dAttn, rows, _cfg.NumAttentionHeads, _cfg.NumKeyValueHeads, _cfg.HeadDim, k, v, dq, dK, dV);
            _rope.RotateRows(dq, _cfg.NumAttentionHeads, Positions(rows), inverse: true);
            TrainingKernels.LinearWeightGrad(dq, s.H1, rows, qDim, hidden, g.QProj[j]!, g.QBias[j]);
            var dh1 = new float[rows * hidden];
            TrainingKernels.LinearInputGrad(dq, rows, qDim, layer.QProjSwiftKv!, hidden, dh1);
            TrainingKernels.RmsNormBackward(s.Input, rows, hidden, layer.InputLayernorm, _eps, dh1, dMid, dw: null);
            dx = dMid;
            // The hidden-state term enters at the last layer's input.
            if (j == _cfg.NumHiddenLayers - 1 && dBeforeLast is not null) TensorPrimitives.Add(dx, dBeforeLast, dx);
        }

        // SingleInputKV: every later cache came from s = norm_swiftkv(x_l).
        var ds = new float[rows * hidden];
        foreach (var (leader, (dK, dV)) in dCaches)
        {
            var layer = _student.Layers[leader];
            _rope.RotateRows(dK, _cfg.NumKeyValueHeads, Positions(rows), inverse: true);
            TrainingKernels.LinearWeightGrad(dK, a.S, rows, kvDim, hidden, g.KProj[leader]!, g.KBias[leader]);
            TrainingKernels.LinearWeightGrad(dV, a.S, rows, kvDim, hidden, g.VProj[leader]!, g.VBias[leader]);
            TrainingKernels.LinearInputGrad(dK, rows, kvDim, layer.KProjSwiftKv!, hidden, ds);
            TrainingKernels.LinearInputGrad(dV, rows, kvDim, layer.VProjSwiftKv!, hidden, ds);
        }
        TrainingKernels.RmsNormBackward(xl, rows, hidden, _student.NormSwiftKv!, _eps, ds, dx: null, g.NormSwiftKv);
    }

    float[] Norm(float[] x, int rows, float[] weight)
    {
        var y = new float[x.Length];
        CpuKernels.RmsNorm(x, rows, _cfg.HiddenSize, weight, _eps, y);
        return y;
    }

    float[] Query(float[] h, int rows, float[] qW, float[]? qB)
    {
        var q = new float[rows * _cfg.QueryDim];
        CpuKernels.Linear(h, rows, _cfg.HiddenSize, qW, qB, _cfg.QueryDim, q);
        Rope(q, rows, _cfg.NumAttentionHeads);
        return q;
    }

    void Rope(float[] m, int rows, int heads) => _rope.RotateRows(m, heads, Positions(rows));

    /// <summary>0, 1, ..., rows - 1: training sequences start at position 0.</summary>
    static int[] Positions(int rows) => Enumerable.Range(0, rows).ToArray();

    float[] Attend(float[] q, int rows, float[] k, float[] v)
    {
        var attn = new float[rows * _cfg.QueryDim];
        CpuKernels.Attention(q, rows, Positions(rows), _cfg.NumAttentionHeads, _cfg.NumKeyValueHeads, _cfg.HeadDim, k, v, attn);
        return attn;
    }

    float[] Gather(float[] x, List<int> rows, int first, int count)
    {
        int hidden = _cfg.HiddenSize;
        var y = new float[count * hidden];
        for (int r = 0; r < count; r++) Array.Copy(x, rows[first + r] * hidden, y, r * hidden, hidden);
        return y;
    }

    float[] Logits(float[] h, int rows, float[] lmHead)
    {
        var z = new float[rows * _cfg.VocabSize];
        CpuKernels.Linear(h, rows, _cfg.HiddenSize, lmHead, null, _cfg.VocabSize, z);
        return z;
    }
}
