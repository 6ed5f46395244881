// Launchers for native-kernels/distillation.cu: the fp32 passes of SwiftKV distillation on the GPU. Shapes are checked
// against the spans before every launch; indices (tokens, gathered rows) must already be checked by the caller.
namespace SwiftKV.Cuda.Kernels;

/// <summary>The fp32 training kernels (norms and their gradients, RoPE, SwiGLU, causal softmax, the KL loss, Adam).</summary>
public sealed unsafe class DistillationKernels(KernelLibrary library)
{
    const string File = "distillation.cu";
    const int MaxGridY = 65535;
    readonly CudaKernel _norm = library.Get(File, "rms_norm_fwd_f32"),
        _normDx = library.Get(File, "rms_norm_bwd_dx_f32"), _colPartial = library.Get(File, "column_partial_f32"),
        _colFinish = library.Get(File, "column_finish_f32"), _addBias = library.Get(File, "add_bias_f32"), _add = library.Get(File, "add_f32"),
        _rope = library.Get(File, "rope_f32"), _siluFwd = library.Get(File, "silu_mul_fwd_f32"), _siluBwd = library.Get(File, "silu_mul_bwd_f32"),
        _softmax = library.Get(File, "causal_softmax_f32"), _softmaxBwd = library.Get(File, "causal_softmax_bwd_f32"),
        _scatterAdd = library.Get(File, "scatter_add_rows_f32"), _kl = library.Get(File, "kl_rows_f32"),
        _mse = library.Get(File, "mse_rows_f32"), _adam = library.Get(File, "adam_f32"), _nonFinite = library.Get(File, "find_nonfinite_f32"),
        _widen = library.Get(File, "widen_bf16_f32");

    static uint Blocks(long n, int per = 256) => (uint)((n + per - 1) / per);

    static void Rows(int rows, string kernel)
    {
        KernelGuard.Positive(rows, kernel, nameof(rows));
        if (rows > int.MaxValue / 2) throw new ArgumentOutOfRangeException(nameof(rows), rows, $"{kernel}: too many rows.");
    }

    /// <summary>y = RMSNorm(x)·w per row; the rows' 1/rms into <paramref name="rstd"/> when given.</summary>
    public void RmsNorm(CudaStream s, DeviceSpan<float> x, DeviceSpan<float> w, DeviceSpan<float> y, DeviceSpan<float>? rstd, int rows, int dim, float eps)
    {
        const string n = "rms_norm_fwd_f32";
        Rows(rows, n);
        KernelGuard.Fits(x, (long)rows * dim, n, nameof(x), $"({rows}, {dim})");
        KernelGuard.Fits(w, dim, n, nameof(w), $"({dim})");
        KernelGuard.Fits(y, (long)rows * dim, n, nameof(y), $"({rows}, {dim})");
        KernelGuard.FitsOptional(rstd, rows, n, nameof(rstd), $"({rows})");
        ulong px = x.Address, pw = w.Address, py = y.Address, pr = KernelGuard.Address(rstd);
        void** args = stackalloc void*[] { &px, &pw, &py, &pr, &dim, &eps };
        _norm.Launch(s, ((uint)rows, 1, 1), 256, 0, args);
    }

    /// <summary>dx += the input's gradient of y = RMSNorm(x)·w given dy.</summary>
    public void RmsNormBackwardInput(CudaStream s, DeviceSpan<float> x, DeviceSpan<float> w, DeviceSpan<float> dy, DeviceSpan<float> dx, int rows, int dim, float eps)
    {
        const string n = "rms_norm_bwd_dx_f32";
        Rows(rows, n);
        foreach (var (span, what) in new[] { (x, "x"), (dy, "dy"), (dx, "dx") })
            KernelGuard.Fits(span, (long)rows * dim, n, what, $"({rows}, {dim})");
        KernelGuard.Fits(w, dim, n, nameof(w), $"({dim})");
        ulong px = x.Address, pw = w.Address, pdy = dy.Address, pdx = dx.Address;
        void** args = stackalloc void*[] { &px, &pw, &pdy, &pdx, &dim, &eps };
        _normDx.Launch(s, ((uint)rows, 1, 1), 256, 0, args);
    }

    /// <summary>Rows summed per partial (column sums): enough chunks to fill the GPU, few enough to add up quickly.</summary>
    const int ColumnChunkRows = 64;

    /// <summary>Floats of scratch <see cref="ColumnSums"/> needs for (rows, dim).</summary>
    public static long ColumnScratch(int rows, int dim) => (long)((rows + ColumnChunkRows - 1) / ColumnChunkRows) * dim;

    /// <summary>
    /// output (dim) += Σ_t a[t, :] ⊙ b[t, :] · scale[t] (b and scale optional: a bias's gradient is Σ_t a), summed in a
    /// fixed order through <paramref name="scratch"/> (<see cref="ColumnScratch"/> floats).
    /// </summary>
    public void ColumnSums(CudaStream s, DeviceSpan<float> a, DeviceSpan<float>? b, DeviceSpan<float>? scale, int rows, int dim,
        DeviceSpan<float> scratch, DeviceSpan<float> output)
    {
        const string n = "column_partial_f32";
        Rows(rows, n);
        KernelGuard.Fits(a, (long)rows * dim, n, nameof(a), $"({rows}, {dim})");
        KernelGuard.FitsOptional(b, (long)rows * dim, n, nameof(b), $"({rows}, {dim})");
        KernelGuard.FitsOptional(scale, rows, n, nameof(scale), $"({rows})");
        KernelGuard.Fits(scratch, ColumnScratch(rows, dim), n, nameof(scratch), "the partial sums");
        KernelGuard.Fits(output, dim, n, nameof(output), $"({dim})");
        int chunk = ColumnChunkRows, chunks = (rows + chunk - 1) / chunk;
        ulong pa = a.Address, pb = KernelGuard.Address(b), ps = KernelGuard.Address(scale), pp = scratch.Address, po = output.Address;
        void** args = stackalloc void*[] { &pa, &pb, &ps, &rows, &dim, &chunk, &pp };
        _colPartial.Launch(s, (Blocks(dim), (uint)chunks, 1), 256, 0, args);
        void** finish = stackalloc void*[] { &pp, &chunks, &dim, &po };
        _colFinish.Launch(s, (Blocks(dim), 1, 1), 256, 0, finish);
    }

    /// <summary>y (rows, dim) += bias (dim).</summary>
    public void AddBias(CudaStream s, DeviceSpan<float> y, DeviceSpan<float> bias, int rows, int dim)
    {
        const string n = "add_bias_f32";
        Rows(rows, n);
        KernelGuard.Fits(y, (long)rows * dim, n, nameof(y), $"({rows}, {dim})");
        KernelGuard.Fits(bias, dim, n, nameof(bias), $"({dim})");
        ulong py = 0, pb = bias.Address;
        void** args = stackalloc void*[] { &py, &pb, &dim };
        for (int r0 = 0; r0 < rows; r0 += MaxGridY)
        {
            py = y.Address + (ulong)((long)r0 * dim * 4);
            _addBias.Launch(s, (Blocks(dim), (uint)Math.Min(MaxGridY, rows - r0), 1), 256, 0, args);
        }
    }

    /// <summary>w = b widened from bf16 to fp32 (exact), over b's length.</summary>
    public void Widen(CudaStream s, DeviceSpan<Bf16> b, DeviceSpan<float> w)
    {
        long count = b.Length;
        if (count < 1) throw new ArgumentOutOfRangeException(nameof(b), count, "widen_bf16_f32: b must hold >= 1 value.");
        KernelGuard.Fits(w, count, "widen_bf16_f32", nameof(w), $"({count})");
        ulong pb = b.Address, pw = w.Address;
        void** args = stackalloc void*[] { &pb, &pw, &count };
        _widen.Launch(s, (Blocks(count, 8 * 256), 1, 1), 256, 0, args);
    }

    /// <summary>y += x over <paramref name="count"/> values.</summary>
    public void Add(CudaStream s, DeviceSpan<float> y, DeviceSpan<float> x, long count)
    {
        KernelGuard.Fits(y, count, "add_f32", nameof(y), $"({count})");
        KernelGuard.Fits(x, count, "add_f32", nameof(x), $"({count})");
        ulong py = y.Address, px = x.Address;
        void** args = stackalloc void*[] { &py, &px, &count };
        _add.Launch(s, (Blocks(count), 1, 1), 256, 0, args);
    }

    /// <summary>
    /// RoPE on x (rows, heads·headDim), row t at position positions[t], from
    /// (tableRows, headDim/2) cos/sin tables; inverse rotates back (RoPE's gradient). Positions must be below
    /// <paramref name="tableRows"/> (the caller made them).
    /// </summary>
    public void Rope(CudaStream s, DeviceSpan<float> x, int rows, int heads, int headDim, DeviceSpan<float> cos, DeviceSpan<float> sin, int tableRows,
        bool inverse, DeviceSpan<int> positions)
    {
        const string n = "rope_f32";
        Rows(rows, n);
        KernelGuard.Positive(heads, n, nameof(heads));
        if (headDim < 2 || headDim % 2 != 0 || headDim > 2048) throw new ArgumentOutOfRangeException(nameof(headDim), headDim, $"{n}: head_dim must be even, 2..2048.");
        KernelGuard.Fits(x, (long)rows * heads * headDim, n, nameof(x), $"({rows}, {heads * headDim})");
        KernelGuard.Fits(positions, rows, n, nameof(positions), $"({rows})");
        KernelGuard.Fits(cos, (long)tableRows * headDim / 2, n, nameof(cos), $"({tableRows}, {headDim / 2})");
        KernelGuard.Fits(sin, (long)tableRows * headDim / 2, n, nameof(sin), $"({tableRows}, {headDim / 2})");
        if (heads > MaxGridY) throw new ArgumentOutOfRangeException(nameof(heads), heads, $"{n}: too many heads.");
        ulong px = x.Address, pc = cos.Address, ps = sin.Address, pp = positions.Address;
        int inv = inverse ? 1 : 0;
        void** args = stackalloc void*[] { &px, &heads, &headDim, &pc, &ps, &inv, &pp };
        _rope.Launch(s, ((uint)rows, (uint)heads, 1), (uint)Math.Max(32, headDim / 2), 0, args);
    }

    /// <summary>m = silu(gate) ⊙ up over <paramref name="count"/> values.</summary>
    public void SiluMul(CudaStream s, DeviceSpan<float> gate, DeviceSpan<float> up, DeviceSpan<float> m, long count)
    {
        foreach (var (span, what) in new[] { (gate, "gate"), (up, "up"), (m, "m") })
            KernelGuard.Fits(span, count, "silu_mul_fwd_f32", what, $"({count})");
        ulong pg = gate.Address, pu = up.Address, pm = m.Address;
        void** args = stackalloc void*[] { &pg, &pu, &pm, &count };
        _siluFwd.Launch(s, (Blocks(count), 1, 1), 256, 0, args);
    }

    /// <summary>dGate, dUp (written) from dm, the gradients of m = silu(gate) ⊙ up.</summary>
    public void SiluMulBackward(CudaStream s, DeviceSpan<float> gate, DeviceSpan<float> up, DeviceSpan<float> dm, DeviceSpan<float> dGate, DeviceSpan<float> dUp, long count)
    {
        foreach (var (span, what) in new[] { (gate, "gate"), (up, "up"), (dm, "dm"), (dGate, "dGate"), (dUp, "dUp") })
            KernelGuard.Fits(span, count, "silu_mul_bwd_f32", what, $"({count})");
        ulong pg = gate.Address, pu = up.Address, pd = dm.Address, pdg = dGate.Address, pdu = dUp.Address;
        void** args = stackalloc void*[] { &pg, &pu, &pd, &pdg, &pdu, &count };
        _siluBwd.Launch(s, (Blocks(count), 1, 1), 256, 0, args);
    }

    static void Scores(int rows, int heads, DeviceSpan<float> span, string kernel, string what)
    {
        Rows(rows, kernel);
        KernelGuard.Positive(heads, kernel, nameof(heads));
        if (heads > MaxGridY) throw new ArgumentOutOfRangeException(nameof(heads), heads, $"{kernel}: too many heads.");
        KernelGuard.Fits(span, (long)heads * rows * rows, kernel, what, $"({heads}, {rows}, {rows})");
    }

    /// <summary>scores (heads, rows, rows), in place: the causal softmax of scores·scale (0 above the diagonal).</summary>
    public void CausalSoftmax(CudaStream s, DeviceSpan<float> scores, int rows, int heads, float scale)
    {
        Scores(rows, heads, scores, "causal_softmax_f32", nameof(scores));
        ulong p = scores.Address;
        void** args = stackalloc void*[] { &p, &rows, &scale };
        _softmax.Launch(s, ((uint)rows, (uint)heads, 1), 256, 0, args);
    }

    /// <summary>dp (heads, rows, rows) = dO·Vᵀ on entry, the scores' gradient (before scaling) on return.</summary>
    public void CausalSoftmaxBackward(CudaStream s, DeviceSpan<float> p, DeviceSpan<float> dp, int rows, int heads, float scale)
    {
        Scores(rows, heads, p, "causal_softmax_bwd_f32", nameof(p));
        Scores(rows, heads, dp, "causal_softmax_bwd_f32", nameof(dp));
        ulong pp = p.Address, pd = dp.Address;
        void** args = stackalloc void*[] { &pp, &pd, &rows, &scale };
        _softmaxBwd.Launch(s, ((uint)rows, (uint)heads, 1), 256, 0, args);
    }

    /// <summary>x rows at index[0..count) += y (count, dim); the indices must be distinct.</summary>
    public void ScatterAddRows(CudaStream s, DeviceSpan<float> y, DeviceSpan<int> index, int count, int dim, DeviceSpan<float> x)
    {
        Rows(count, "scatter_add_rows_f32");
        KernelGuard.Fits(index, count, "scatter_add_rows_f32", nameof(index), $"({count})");
        KernelGuard.Fits(y, (long)count * dim, "scatter_add_rows_f32", nameof(y), $"({count}, {dim})");
        ulong py = y.Address, pi = index.Address, px = x.Address;
        void** args = stackalloc void*[] { &py, &pi, &dim, &px };
        _scatterAdd.Launch(s, ((uint)count, 1, 1), 256, 0, args);
    }

    /// <summary>
    /// Per row: loss = T²·KL(softmax(zt/T) || softmax(zs/T)) and whether the argmaxes agree; when
    /// <paramref name="gradScale"/> != 0, zs becomes the gradient of gradScale·loss with respect to zs.
    /// </summary>
    public void KlRows(CudaStream s, DeviceSpan<float> zt, DeviceSpan<float> zs, int rows, int vocab, float temperature, float gradScale,
        DeviceSpan<double> loss, DeviceSpan<int> agree)
    {
        const string n = "kl_rows_f32";
        Rows(rows, n);
        KernelGuard.Fits(zt, (long)rows * vocab, n, nameof(zt), $"({rows}, {vocab})");
        KernelGuard.Fits(zs, (long)rows * vocab, n, nameof(zs), $"({rows}, {vocab})");
        KernelGuard.Fits(loss, rows, n, nameof(loss), $"({rows})");
        KernelGuard.Fits(agree, rows, n, nameof(agree), $"({rows})");
        ulong pt = zt.Address, ps = zs.Address, pl = loss.Address, pa = agree.Address;
        void** args = stackalloc void*[] { &pt, &ps, &vocab, &temperature, &gradScale, &pl, &pa };
        _kl.Launch(s, ((uint)rows, 1, 1), 1024, 0, args);
    }

    /// <summary>Per row: loss = weight·mean (hs − ht)²; d (written when given) = its gradient times gradScale.</summary>
    public void MseRows(CudaStream s, DeviceSpan<float> ht, DeviceSpan<float> hs, int rows, int dim, float weight, float gradScale,
        DeviceSpan<float>? d, DeviceSpan<double> loss)
    {
        const string n = "mse_rows_f32";
        Rows(rows, n);
        KernelGuard.Fits(ht, (long)rows * dim, n, nameof(ht), $"({rows}, {dim})");
        KernelGuard.Fits(hs, (long)rows * dim, n, nameof(hs), $"({rows}, {dim})");
        KernelGuard.FitsOptional(d, (long)rows * dim, n, nameof(d), $"({rows}, {dim})");
        KernelGuard.Fits(loss, rows, n, nameof(loss), $"({rows})");
        ulong pt = ht.Address, ps = hs.Address, pd = KernelGuard.Address(d), pl = loss.Address;
        void** args = stackalloc void*[] { &pt, &ps, &dim, &weight, &gradScale, &pd, &pl };
        _mse.Launch(s, ((uint)rows, 1, 1), 256, 0, args);
    }

    /// <summary>One Adam update of p from g (torch.optim.Adam, no weight decay) at step <paramref name="step"/> (1-based).</summary>
    public void Adam(CudaStream s, DeviceSpan<float> p, DeviceSpan<float> g, DeviceSpan<float> m, DeviceSpan<float> v, long count,
        float beta1, float beta2, float epsilon, double learningRate, int step)
    {
        foreach (var (span, what) in new[] { (p, "p"), (g, "g"), (m, "m"), (v, "v") })
            KernelGuard.Fits(span, count, "adam_f32", what, $"({count})");
        KernelGuard.Positive(step, "adam_f32", nameof(step));
        double lrC1 = learningRate / (1 - Math.Pow(beta1, step)), c2Sqrt = Math.Sqrt(1 - Math.Pow(beta2, step));
        ulong pp = p.Address, pg = g.Address, pm = m.Address, pv = v.Address;
        void** args = stackalloc void*[] { &pp, &pg, &pm, &pv, &count, &beta1, &beta2, &epsilon, &lrC1, &c2Sqrt };
        _adam.Launch(s, (Blocks(count), 1, 1), 256, 0, args);
    }

    /// <summary>flags[slot] = 1 when x (count) holds a NaN or an infinity; flags are zeroed by the caller.</summary>
    public void FindNonFinite(CudaStream s, DeviceSpan<float> x, long count, DeviceSpan<int> flags, int slot)
    {
        KernelGuard.Fits(x, count, "find_nonfinite_f32", nameof(x), $"({count})");
        KernelGuard.Fits(flags, slot + 1L, "find_nonfinite_f32", nameof(flags), $"({slot + 1})");
        ulong px = x.Address, pf = flags.Address;
        void** args = stackalloc void*[] { &px, &count, &pf, &slot };
        _nonFinite.Launch(s, (Blocks(count), 1, 1), 256, 0, args);
    }
}
