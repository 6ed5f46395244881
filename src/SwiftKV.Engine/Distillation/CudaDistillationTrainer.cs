// SwiftKV distillation on one GPU: the same computation as the CPU trainer (DistillationModel + Adam), in fp32 on the
// device. The teacher (SwiftKV off) and the student (SwiftKV on) share every frozen weight, uploaded once: as fp32, or a
// layer matrix whose values are all exact bf16 values (a BF16 checkpoint's) as bf16, widened exactly to fp32 before each
// GEMM, which halves what 8B's frozen weights take (28 GB -> 14 GB) at no change in the arithmetic. The
// trainable tensors keep their fp32 master values, gradients and Adam moments on the GPU, so a step moves no weights
// over PCIe. GEMMs are cuBLAS fp32, on TF32 tensor cores unless exact fp32 is asked for. Attention materialises the
// (heads, T, T) scores of one key/value head's query heads at a time instead of running a flash kernel: simple to
// check against the CPU's, and one group's scores stay small beside the weights (4 heads x 8192² fp32 = 1 GiB, twice
// in the backward pass). The backward pass recomputes the scores rather than keeping them per layer. Short sequences are packed
// into one pass of up to PackRows rows (each keeps its own positions and its own causal attention), so the GEMMs see
// thousands of rows and the weights stream once per pack rather than once per sequence.
//
// The backward pass mirrors DistillationModel.StudentBackward step for step; the comments there say why each step is
// what it is. Checked against the CPU trainer and against PyTorch autograd (SwiftKV.Cuda.Tests, DistillationGpuTests).
using SwiftKV.Cuda;
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Cpu;
using SwiftKV.Model;

namespace SwiftKV.Engine.Distillation;

/// <summary>Distillation's forward, backward and Adam on the GPU, in fp32 (GEMMs optionally TF32).</summary>
public sealed class CudaDistillationTrainer : IDistillationTrainer
{
    const long LogitBudgetFloats = 128L << 20;   // teacher + student logit rows per chunk: 2 x 256 MiB

    sealed record Layer(DeviceSpan<float> InputNorm, Frozen? QW, DeviceSpan<float>? QB, Frozen? KW, DeviceSpan<float>? KB,
        Frozen? VW, DeviceSpan<float>? VB, Frozen OW, DeviceSpan<float>? OB, DeviceSpan<float> PostNorm,
        Frozen Gate, Frozen Up, Frozen Down,
        DeviceSpan<float>? QSkv, DeviceSpan<float>? QSkvB, DeviceSpan<float>? KSkv, DeviceSpan<float>? KSkvB, DeviceSpan<float>? VSkv, DeviceSpan<float>? VSkvB);

    /// <summary>
    /// A frozen layer matrix on the device. A bf16 checkpoint's weights are exact bf16 values, so such a matrix is held
    /// in bf16 (half the bytes: 14 GB less at 8B) and widened, exactly, into one shared fp32 scratch right before each
    /// GEMM that reads it; a matrix with a value bf16 cannot hold (an fp32 checkpoint's) stays fp32. Either way the
    /// GEMMs see the same fp32 values.
    /// </summary>
    readonly record struct Frozen(DeviceSpan<float> F32, DeviceSpan<Bf16> B16)
    {
        public bool IsBf16 => B16.Length > 0;
    }

    /// <summary>One trainable tensor: its value (the forward's own buffer), gradient and Adam moments.</summary>
    sealed record Slot(string Name, float[] Host, DeviceSpan<float> Value, DeviceBuffer<float> Grad, DeviceBuffer<float> M, DeviceBuffer<float> V);

    readonly LlamaConfig _cfg;
    readonly float _eps, _temperature, _hiddenWeight;
    readonly bool _tf32, _frozenInBf16;
    readonly CudaStream _stream;
    readonly Cublas _blas;
    readonly KernelLibrary _library;
    readonly DistillationKernels _k;
    readonly GatherRowsKernel _gather;
    readonly RotaryEmbedding _rope;
    // Keyed by the host arrays while uploading (an array shared by teacher and student, or a tied lm_head, goes up once),
    // then emptied so the host copies can be collected: the trainer holds only the trainable tensors on the host.
    readonly Dictionary<float[], DeviceBuffer<float>> _uploaded = new(ReferenceEqualityComparer.Instance);
    readonly List<DeviceBuffer<float>> _weights = [];
    readonly List<DeviceBuffer<Bf16>> _bf16Weights = [];
    readonly Dictionary<float[], DeviceSpan<Bf16>> _frozenBf16 = new(ReferenceEqualityComparer.Instance);
    DeviceBuffer<float>? _widened;   // the fp32 scratch bf16 matrices are widened into, as long as the largest
    readonly Layer[] _layers;
    readonly DeviceSpan<float> _embed, _norm, _lmHead, _normSwiftKv;
    readonly SwiftKvTensors _host;
    readonly List<Slot> _slots = [];
    readonly Dictionary<float[], Slot> _slotOf = new(ReferenceEqualityComparer.Instance);
    readonly Scratch _ws;
    DeviceBuffer<float>? _cos, _sin;
    int _ropeRows, _steps;
    Pack _pack = Pack.Empty;   // the sequences of the pass in progress
    bool _disposed;

    /// <param name="teacher">The checkpoint with SwiftKV off.</param>
    /// <param name="student">The same checkpoint with SwiftKV on (sharing the frozen arrays with the teacher).</param>
    /// <param name="temperature">T of the loss (the paper: 2).</param>
    /// <param name="hiddenLossWeight">The weight of the optional hidden-state term (DistillationModel says what it is); 0: none.</param>
    /// <param name="tf32">GEMMs on TF32 tensor cores (fp32 sums); false: exact fp32 GEMMs, about 8x slower on Hopper (a whole step measured 4x).</param>
    /// <param name="packRows">
    /// Rows one pass may hold: sequences of a batch are packed together up to this many tokens (a longer sequence runs
    /// alone). 0: one sequence a pass. <see cref="MemoryNeeded"/> must be given the same value.
    /// </param>
    /// <param name="frozenInBf16">
    /// Hold a frozen layer matrix whose values are all exact bf16 values in bf16 (see <see cref="Frozen"/>): the same
    /// arithmetic in 29% less memory at 8B, for 4.6% more time a step at 8B and 3.7% at 1B on an H200 (the widening).
    /// false: every weight in fp32.
    /// </param>
    public CudaDistillationTrainer(LlamaWeights teacher, LlamaWeights student, float temperature, float hiddenLossWeight = 0f, bool tf32 = true, int packRows = 0,
        bool frozenInBf16 = true)
    {
        _frozenInBf16 = frozenInBf16;
        ArgumentOutOfRangeException.ThrowIfNegative(packRows);
        PackRows = packRows;
        DistillationModel.CheckArguments(teacher, student, temperature, hiddenLossWeight);
        _cfg = student.Config;
        _eps = (float)_cfg.RmsNormEps;
        _temperature = temperature;
        _hiddenWeight = hiddenLossWeight;
        _tf32 = tf32;
        _rope = new RotaryEmbedding(_cfg);
        _stream = new CudaStream();
        _ws = new Scratch(_stream);
        try
        {
            _blas = new Cublas(_stream);
            _library = new KernelLibrary();
            _k = new DistillationKernels(_library);
            _gather = new GatherRowsKernel(_library);
            _embed = Up(student.EmbedTokens);
            _norm = Up(student.Norm);
            _lmHead = Up(student.LmHead);
            _normSwiftKv = Up(student.NormSwiftKv!);
            _layers = new Layer[_cfg.NumHiddenLayers];
            for (int j = 0; j < _layers.Length; j++)
            {
                LlamaLayerWeights t = teacher.Layers[j], s = student.Layers[j];
                _layers[j] = new Layer(Up(s.InputLayernorm), UpFrozenOpt(t.QProj), UpOpt(t.QBias), UpFrozenOpt(t.KProj), UpOpt(t.KBias), UpFrozenOpt(t.VProj), UpOpt(t.VBias),
                    UpFrozen(s.OProj), UpOpt(s.OBias), Up(s.PostAttentionLayernorm), UpFrozen(s.GateProj), UpFrozen(s.UpProj), UpFrozen(s.DownProj),
                    UpOpt(s.QProjSwiftKv), UpOpt(s.QBiasSwiftKv), UpOpt(s.KProjSwiftKv), UpOpt(s.KBiasSwiftKv), UpOpt(s.VProjSwiftKv), UpOpt(s.VBiasSwiftKv));
            }
            long widest = _bf16Weights.Count == 0 ? 0 : _bf16Weights.Max(b => b.Length);
            if (widest > 0) _widened = new DeviceBuffer<float>(widest);
            _host = SwiftKvTensors.Of(student);
            foreach (var (name, values) in _host.Named())
            {
                DeviceBuffer<float>? g = null, m = null;
                try
                {
                    g = Zeros(values.Length);
                    m = Zeros(values.Length);
                    var slot = new Slot(name, values, _uploaded[values].Span, g, m, Zeros(values.Length));
                    _slots.Add(slot);
                    _slotOf[values] = slot;
                }
                catch
                {
                    g?.Dispose();
                    m?.Dispose();
                    throw;
                }
            }
            _stream.Synchronize();
            _weights.AddRange(_uploaded.Values);
            _uploaded.Clear();
            _frozenBf16.Clear();
        }
        catch
        {
            Dispose();
            throw;
        }
        // TF32 tensor cores came with sm_80; below, cuBLAS runs the same call in plain fp32.
        bool hasTf32 = CudaRuntime.Device.ComputeMajor >= 8;
        _device = $"{CudaRuntime.Device.Name}, fp32 with {(tf32 && hasTf32 ? "TF32" : "fp32")} GEMMs{(tf32 && !hasTf32 ? " (no TF32 before sm_80)" : "")}" +
            (Bf16Values > 0 ? ", the frozen layer matrices held in bf16 (exact: the checkpoint's own values)" : "") +
            (packRows > 0 ? $", sequences packed up to {packRows} tokens a pass" : "");
    }

    /// <summary>Tokens one pass may hold (0: one sequence a pass).</summary>
    public int PackRows { get; }

    readonly string _device;

    public string Device => _ranks is { } r ? $"{_device}; data parallel: {r.World} GPUs, one process each, gradients summed over NCCL" : _device;
    public long ParameterCount => _slots.Sum(s => (long)s.Host.Length);

    DeviceBuffer<float> Zeros(long n)
    {
        var b = new DeviceBuffer<float>(n);
        _stream.FillAsync(new DeviceSpan<int>(b.Address, n), 0);
        return b;
    }

    DeviceSpan<float> Up(float[] values)
    {
        if (!_uploaded.TryGetValue(values, out var b))
        {
            b = new DeviceBuffer<float>(values.Length);
            _uploaded[values] = b;
            b.CopyFrom(values);
        }
        return b.Span;
    }

    DeviceSpan<float>? UpOpt(float[]? values) => values is null ? null : Up(values);

    Frozen UpFrozen(float[] values)
    {
        if (_frozenBf16.TryGetValue(values, out var held)) return new Frozen(default, held);
        if (!_frozenInBf16 || _uploaded.ContainsKey(values) || !Chunks(values.Length, (at, n) => ExactInBf16(values.AsSpan(at, n)))) return new Frozen(Up(values), default);
        var bits = new Bf16[values.Length];
        Chunks(values.Length, (at, n) =>
        {
            var words = System.Runtime.InteropServices.MemoryMarshal.Cast<float, uint>(values.AsSpan(at, n));
            for (int i = 0; i < n; i++) bits[at + i] = new Bf16((ushort)(words[i] >> 16));
            return true;
        });
        var b = new DeviceBuffer<Bf16>(values.Length);
        _bf16Weights.Add(b);
        b.CopyFrom(bits);
        _frozenBf16[values] = b.Span;
        return new Frozen(default, b.Span);
    }

    Frozen? UpFrozenOpt(float[]? values) => values is null ? null : UpFrozen(values);

    /// <summary>work(start, count) over chunks of 1M values in parallel (8B's 7B frozen values: seconds, not tens of); false as soon as one is.</summary>
    static bool Chunks(int length, Func<int, int, bool> work)
    {
        const int chunk = 1 << 20;
        bool all = true;
        Parallel.For(0, (int)(((long)length + chunk - 1) / chunk), (c, state) =>
        {
            int at = c * chunk;
            if (!work(at, Math.Min(chunk, length - at)))
            {
                all = false;
                state.Stop();
            }
        });
        return all;
    }

    /// <summary>Whether every value is a bf16 value (its low 16 bits are zero), so bf16 holds it exactly.</summary>
    internal static bool ExactInBf16(ReadOnlySpan<float> values)
    {
        var words = System.Runtime.InteropServices.MemoryMarshal.Cast<float, uint>(values);
        int i = 0;
        if (System.Numerics.Vector.IsHardwareAccelerated)
        {
            var low = new System.Numerics.Vector<uint>(0xFFFFu);
            for (int n = System.Numerics.Vector<uint>.Count; i + n <= words.Length; i += n)
                if (!System.Numerics.Vector.EqualsAll(new System.Numerics.Vector<uint>(words[i..]) & low, System.Numerics.Vector<uint>.Zero)) return false;
        }
        for (; i < words.Length; i++)
            if ((words[i] & 0xFFFFu) != 0) return false;
        return true;
    }

    /// <summary>Values of frozen layer matrices held in bf16 (exact bf16 values, as a BF16 checkpoint's are; the rest are fp32).</summary>
    public long Bf16Values => _bf16Weights.Sum(b => b.Length);

    /// <summary>The matrix as fp32 on the device: itself, or its bf16 values widened into the shared scratch (stream-ordered, so the previous GEMM has read the scratch before it is overwritten).</summary>
    DeviceSpan<float> Fp32(Frozen w)
    {
        if (!w.IsBf16) return w.F32;
        var to = _widened!.Span.Slice(0, w.B16.Length);
        _k.Widen(_stream, w.B16, to);
        return to;
    }

    /// <summary>
    /// Bytes of GPU memory a trainer needs for <paramref name="config"/> with sequences up to <paramref name="longest"/>
    /// tokens: <see cref="EstimateBytes"/> plus 1 GiB for what it does not count (cuBLAS's workspace, the kernels, the
    /// allocator's granularity).
    /// </summary>
    public static long MemoryNeeded(LlamaConfig config, DistillationWeightCounts weights, int longest, float hiddenLossWeight, int packRows = 0) =>
        EstimateBytes(config, weights, longest, hiddenLossWeight, packRows) + (1L << 30);

    /// <summary>
    /// The device buffers a trainer allocates, counted one by one: the weights teacher and student read (each array once;
    /// fp32, or bf16 for the frozen matrices <paramref name="weights"/> counts so, with the fp32 scratch they are widened
    /// into), gradients and Adam moments of the trainable values, and the activations and scratch of one sequence of <paramref name="longest"/>
    /// tokens, and the cuBLAS handle's workspace (DistillationGpuTests checks it against what a step really holds).
    /// </summary>
    internal static long EstimateBytes(LlamaConfig config, DistillationWeightCounts weights, int longest, float hiddenLossWeight, int packRows = 0)
    {
        // T: the rows of a pass (a pack, or the longest sequence); S: the longest sequence (its scores, the RoPE tables).
        long T = Math.Max(longest, packRows), S = longest, h = config.HiddenSize, q = config.QueryDim, kv = config.KeyValueDim, i = config.IntermediateSize, v = config.VocabSize;
        int later = config.NumHiddenLayers - config.NumKeyValueLayers, leaders = (later + config.KeyValueGroupSize - 1) / config.KeyValueGroupSize;
        long groupHeads = config.NumAttentionHeads / config.NumKeyValueHeads;
        long kept = later * T * (3 * h + q + 2 * i);            // the student's activations per later layer
        long caches = leaders * 4 * T * kv;                     // K, V and their gradients
        // Per row: x, xl, xs, dx, h, s, dMid, dh, ds (+ the hidden term's five), q, attn, dAttn, dq, the teacher's k
        // and v, gate, up, m, dm, dGate, dUp, and a few words of rows' norms, positions, indices and losses; per
        // position of the longest sequence, the RoPE tables.
        long rows = T * ((9 + (hiddenLossWeight > 0 ? 5 : 0)) * h + 4 * q + 2 * kv + 6 * i + 9) + S * config.HeadDim
            + 2 * groupHeads * S * S;                           // one group's scores and their gradient
        long chunk = Math.Max(1, Math.Min(T, LogitBudgetFloats / (2 * v)));
        long loss = 2 * chunk * v + 5 * chunk * h;               // both logit chunks, the gathered rows and their gradients
        long columns = DistillationKernels.ColumnScratch((int)T, (int)Math.Max(h, Math.Max(q, kv)));
        const long small = 4096;                               // the non-finite flags (one per tensor) and the like
        return weights.GpuBytes + 4 * (3 * weights.Trainable + kept + caches + rows + loss + columns + small) + Cublas.WorkspaceBytes;
    }

    void Check(DistillationSequence sequence)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(sequence);
        int rows = sequence.Tokens.Length;
        if (rows == 0) throw new ArgumentException("the sequence is empty.", nameof(sequence));
        if (sequence.LossMask.Length != rows) throw new ArgumentException($"the loss mask has {sequence.LossMask.Length} entries for {rows} tokens.", nameof(sequence));
        if (rows > _cfg.MaxPositionEmbeddings)
            throw new ArgumentException($"the sequence has {rows} tokens, more than max_position_embeddings ({_cfg.MaxPositionEmbeddings}).", nameof(sequence));
        foreach (int id in sequence.Tokens)
            if ((uint)id >= (uint)_cfg.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(sequence), id, $"token id outside the vocabulary (vocab_size {_cfg.VocabSize}).");
    }

    public DistillationScore Score(IReadOnlyList<DistillationSequence> sequences, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(sequences);
        foreach (var s in sequences) Check(s);
        var total = default(DistillationScore);
        foreach (var pack in Pack.Of(Shard(sequences), PackRows))
        {
            cancellationToken.ThrowIfCancellationRequested();
            total += Run(pack, 0f);
        }
        return SumOverRanks(total);
    }

    NcclCommunicator? _ranks;

    /// <summary>
    /// Makes this trainer one rank of a data-parallel run, one process per GPU: every rank is given the same batches,
    /// trains on its share of each (every World-th sequence from its Rank), and the gradients and scores are summed over
    /// the ranks before Adam, so every rank takes the same step as one GPU would over the whole batch. The trainer
    /// disposes <paramref name="ranks"/> with itself.
    /// </summary>
    public void JoinDataParallel(NcclCommunicator ranks)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _ranks = ranks ?? throw new ArgumentNullException(nameof(ranks));
    }

    /// <summary>Every collective of the run is done (the last score): the ranks may now wait for each other to let go.</summary>
    public void FinishDataParallel() => _ranks?.Finish();

    /// <summary>This rank's share of <paramref name="sequences"/> (all of them without data parallelism).</summary>
    internal static IReadOnlyList<DistillationSequence> ShareOf(IReadOnlyList<DistillationSequence> sequences, int rank, int world) =>
        world == 1 ? sequences : sequences.Where((_, i) => i % world == rank).ToList();

    IReadOnlyList<DistillationSequence> Shard(IReadOnlyList<DistillationSequence> sequences) =>
        _ranks is { } r ? ShareOf(sequences, r.Rank, r.World) : sequences;

    DistillationScore SumOverRanks(DistillationScore mine)
    {
        if (_ranks is not { } r) return mine;
        var sums = _ws.Double("rank.score", 3);
        _stream.Upload<double>([mine.LossSum, mine.Positions, mine.Top1Agreements], sums);
        r.AllReduceSum(sums, _stream);
        var all = new double[3];
        _stream.Download(sums, all);
        return new DistillationScore(all[0], checked((int)all[1]), checked((int)all[2]));
    }

    public DistillationScore TrainStep(IReadOnlyList<DistillationSequence> batch, double learningRate, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(batch);
        if (!(learningRate >= 0) || !double.IsFinite(learningRate))
            throw new ArgumentOutOfRangeException(nameof(learningRate), learningRate, "must be a finite number >= 0.");
        foreach (var s in batch) Check(s);
        foreach (var slot in _slots) _stream.FillAsync(new DeviceSpan<int>(slot.Grad.Address, slot.Grad.Length), 0);
        long positions = batch.Sum(s => (long)s.LossPositions);
        var total = default(DistillationScore);
        if (positions == 0) return total;
        // Every rank scales by the whole batch's positions, so the sum over ranks is the batch's mean gradient.
        foreach (var pack in Pack.Of(Shard(batch), PackRows))
        {
            cancellationToken.ThrowIfCancellationRequested();
            total += Run(pack, 1f / positions);
        }
        if (_ranks is { } ranks)
        {
            using (NcclCommunicator.Group())
                foreach (var slot in _slots) ranks.AllReduceSum(slot.Grad.Span, _stream);
            total = SumOverRanks(total);
        }
        var flags = _ws.Int("nonfinite", _slots.Count);
        _stream.FillAsync(flags, 0);
        for (int i = 0; i < _slots.Count; i++) _k.FindNonFinite(_stream, _slots[i].Grad, _slots[i].Grad.Length, flags, i);
        var found = new int[_slots.Count];
        _stream.Download(flags, found);
        int bad = Array.IndexOf(found, 1);
        if (bad >= 0)
            throw new NotFiniteNumberException($"the gradient of {_slots[bad].Name} is not finite (batch loss {total.Loss}), so training stops and nothing is written: " +
                "lower the learning rate, or check the checkpoint for NaN/Inf weights (swiftkv logits reports them).");
        _steps++;
        foreach (var slot in _slots)
            _k.Adam(_stream, slot.Value, slot.Grad, slot.M, slot.V, slot.Host.Length, 0.9f, 0.999f, 1e-8f, learningRate, _steps);
        _stream.Synchronize();
        return total;
    }

    public SwiftKvTensors ReadParameters()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        foreach (var slot in _slots) _stream.Download(slot.Value, slot.Host);
        return _host;
    }

    /// <summary>The last step's gradients, copied to the host (tests compare them with the CPU trainer's and PyTorch's).</summary>
    internal SwiftKvTensors ReadGradients()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var copy = _host.ZerosLike();
        var named = copy.Named();
        for (int i = 0; i < _slots.Count; i++) _stream.Download(_slots[i].Grad.Span, named[i].Values);
        return copy;
    }

    public void WriteParameters(SwiftKvTensors values)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(values);
        var from = values.Named();
        if (from.Count != _slots.Count) throw new ArgumentException("the tensors do not match the trainer's.", nameof(values));
        for (int i = 0; i < from.Count; i++)
        {
            if (from[i].Name != _slots[i].Name || from[i].Values.Length != _slots[i].Host.Length)
                throw new ArgumentException($"tensor {from[i].Name} does not match the trainer's {_slots[i].Name}.", nameof(values));
            _stream.Upload<float>(from[i].Values, _slots[i].Value);
            if (!ReferenceEquals(from[i].Values, _slots[i].Host)) from[i].Values.CopyTo(_slots[i].Host, 0);
        }
    }

    // ---- one sequence: forward of teacher and student, the loss, and (gradScale != 0) the backward pass ----

    int H => _cfg.HiddenSize;
    int QDim => _cfg.QueryDim;
    int KvDim => _cfg.KeyValueDim;
    int Inter => _cfg.IntermediateSize;
    int L => _cfg.NumHiddenLayers;
    int Lkv => _cfg.NumKeyValueLayers;
    int Later => L - Lkv;
    int Leader(int j) => (j - Lkv) / _cfg.KeyValueGroupSize;   // the ordinal of layer j's AcrossKV cache
    int Leaders => (Later + _cfg.KeyValueGroupSize - 1) / _cfg.KeyValueGroupSize;

    DistillationScore Run(Pack pack, float gradScale)
    {
        int T = pack.Rows;
        bool train = gradScale != 0f;
        var selected = new List<int>();
        for (int t = 0; t < T; t++) if (pack.LossMask[t]) selected.Add(t);
        int n = selected.Count;
        if (n == 0) return default;   // nothing scored: no loss, no gradient
        EnsureRope(pack.Longest);
        _pack = pack;
        var tokens = _ws.Int("tokens", T);
        _stream.Upload<int>(pack.Tokens, tokens);
        _stream.Upload<int>(pack.Positions, _ws.Int("positions", T));

        // Layers 0..l-1: frozen, shared by teacher and student.
        var x = _ws.Float("x", (long)T * H);
        _gather.Launch(_stream, _embed, _cfg.VocabSize, tokens, T, H, x);
        for (int i = 0; i < Lkv; i++) FullLayer(x, T, _layers[i]);
        var xl = _ws.Float("xl", (long)T * H);
        Copy(xl, x, (long)T * H);

        // The teacher: the later layers as plain Llama.
        bool hidden = _hiddenWeight > 0;
        var teacherBeforeLast = hidden ? _ws.Float("teacherBeforeLast", (long)T * H) : default;
        for (int j = Lkv; j < L; j++)
        {
            if (j == L - 1 && hidden) Copy(teacherBeforeLast, x, (long)T * H);
            FullLayer(x, T, _layers[j]);
        }
        var xTeacher = x;

        // The student, keeping what the backward pass reads.
        var xs = _ws.Float("xs", (long)T * H);
        StudentForward(xl, xs, T);

        var index = _ws.Int("selected", n);
        _stream.Upload<int>(selected.ToArray(), index);
        var dx = _ws.Float("dx", (long)T * H);
        if (train) Zero(dx);
        var score = Loss(xTeacher, xs, T, index, n, train ? dx : null, gradScale);
        DeviceSpan<float>? dBeforeLast = null;
        if (hidden)
        {
            var studentBeforeLast = Act("act.input", L - 1, H, T);
            var ht = _ws.Float("mse.t", (long)n * H);
            var hs = _ws.Float("mse.s", (long)n * H);
            var d = _ws.Float("mse.d", (long)n * H);
            var rowLoss = _ws.Double("mse.loss", n);
            _gather.Launch(_stream, teacherBeforeLast, T, index, n, H, ht);
            _gather.Launch(_stream, studentBeforeLast, T, index, n, H, hs);
            _k.MseRows(_stream, ht, hs, n, H, _hiddenWeight, gradScale, train ? d : null, rowLoss);
            var losses = new double[n];
            _stream.Download(rowLoss, losses);
            double sum = 0;
            foreach (var v in losses) sum += v;
            score += new DistillationScore(sum, 0, 0);
            if (train)
            {
                var db = _ws.Float("dBeforeLast", (long)T * H);
                Zero(db);
                _k.ScatterAddRows(_stream, d, index, n, H, db);
                dBeforeLast = db;
            }
        }
        if (train) StudentBackward(xl, dx, dBeforeLast, T);
        _stream.Synchronize();
        return score;
    }

    /// <summary>A plain Llama layer over the sequence, in place on x (the frozen layers and the teacher's).</summary>
    void FullLayer(DeviceSpan<float> x, int T, Layer layer)
    {
        var h = _ws.Float("h", (long)T * H);
        _k.RmsNorm(_stream, x, layer.InputNorm, h, null, T, H, _eps);
        var k = _ws.Float("k", (long)T * KvDim);
        var v = _ws.Float("v", (long)T * KvDim);
        var q = _ws.Float("q", (long)T * QDim);
        Linear(h, T, H, layer.KW!.Value, layer.KB, KvDim, k);
        Linear(h, T, H, layer.VW!.Value, layer.VB, KvDim, v);
        Linear(h, T, H, layer.QW!.Value, layer.QB, QDim, q);
        Rope(k, T, _cfg.NumKeyValueHeads, inverse: false);
        Rope(q, T, _cfg.NumAttentionHeads, inverse: false);
        var attn = _ws.Float("attn", (long)T * QDim);
        Attend(q, k, v, T, attn);
        PostAttention(x, attn, T, layer, null);
    }

    /// <summary>o_proj and residual, post_attention_layernorm, SwiGLU MLP and residual, in place on x; keeps mid/gate/up when asked.</summary>
    void PostAttention(DeviceSpan<float> x, DeviceSpan<float> attn, int T, Layer layer, (DeviceSpan<float> Mid, DeviceSpan<float> Gate, DeviceSpan<float> Up)? keep)
    {
        Linear(attn, T, QDim, layer.OW, layer.OB, H, x, accumulate: true);
        if (keep is { } kept) Copy(kept.Mid, x, (long)T * H);
        var h2 = _ws.Float("h", (long)T * H);
        _k.RmsNorm(_stream, x, layer.PostNorm, h2, null, T, H, _eps);
        var gate = keep?.Gate ?? _ws.Float("gate", (long)T * Inter);
        var up = keep?.Up ?? _ws.Float("up", (long)T * Inter);
        Linear(h2, T, H, layer.Gate, null, Inter, gate);
        Linear(h2, T, H, layer.Up, null, Inter, up);
        var m = _ws.Float("m", (long)T * Inter);
        _k.SiluMul(_stream, gate, up, m, (long)T * Inter);
        Linear(m, T, Inter, layer.Down, null, H, x, accumulate: true);
    }

    /// <summary>Layer j's slice of a per-later-layer activation buffer.</summary>
    DeviceSpan<float> Act(string name, int j, int width, int T) =>
        _ws.Float(name, (long)Later * T * width).Slice((long)(j - Lkv) * T * width, (long)T * width);

    DeviceSpan<float> Cache(string name, int ordinal, int T) =>
        _ws.Float(name, (long)Leaders * T * KvDim).Slice((long)ordinal * T * KvDim, (long)T * KvDim);

    void StudentForward(DeviceSpan<float> xl, DeviceSpan<float> x, int T)
    {
        var s = _ws.Float("s", (long)T * H);
        _k.RmsNorm(_stream, xl, _normSwiftKv, s, _ws.Float("s.rstd", T), T, H, _eps);
        for (int j = Lkv; j < L; j++)
        {
            if (!_cfg.IsKvGroupLeader(j)) continue;
            var layer = _layers[j];
            var k = Cache("cache.k", Leader(j), T);
            var v = Cache("cache.v", Leader(j), T);
            Linear(s, T, H, layer.KSkv!.Value, layer.KSkvB, KvDim, k);
            Linear(s, T, H, layer.VSkv!.Value, layer.VSkvB, KvDim, v);
            Rope(k, T, _cfg.NumKeyValueHeads, inverse: false);
        }
        Copy(x, xl, (long)T * H);
        for (int j = Lkv; j < L; j++)
        {
            var layer = _layers[j];
            Copy(Act("act.input", j, H, T), x, (long)T * H);
            var h1 = Act("act.h1", j, H, T);
            _k.RmsNorm(_stream, x, layer.InputNorm, h1, null, T, H, _eps);
            var q = Act("act.q", j, QDim, T);
            Linear(h1, T, H, layer.QSkv!.Value, layer.QSkvB, QDim, q);
            Rope(q, T, _cfg.NumAttentionHeads, inverse: false);
            var attn = _ws.Float("attn", (long)T * QDim);
            Attend(q, Cache("cache.k", Leader(j), T), Cache("cache.v", Leader(j), T), T, attn);
            PostAttention(x, attn, T, layer, (Act("act.mid", j, H, T), Act("act.gate", j, Inter, T), Act("act.up", j, Inter, T)));
        }
    }

    /// <summary>T²·KL over the selected rows, in chunks of logit rows; the gradient of gradScale·loss goes into dx.</summary>
    DistillationScore Loss(DeviceSpan<float> xTeacher, DeviceSpan<float> xStudent, int T, DeviceSpan<int> index, int n, DeviceSpan<float>? dx, float gradScale)
    {
        int vocab = _cfg.VocabSize;
        int chunk = (int)Math.Clamp(LogitBudgetFloats / (2L * vocab), 1, n);
        var rowLoss = _ws.Double("kl.loss", n);
        var agree = _ws.Int("kl.agree", n);
        var zt = _ws.Float("kl.zt", (long)chunk * vocab);
        var zs = _ws.Float("kl.zs", (long)chunk * vocab);
        var rowsT = _ws.Float("kl.rowsT", (long)chunk * H);
        var rowsS = _ws.Float("kl.rowsS", (long)chunk * H);
        var normed = _ws.Float("kl.normed", (long)chunk * H);
        for (int c0 = 0; c0 < n; c0 += chunk)
        {
            int cn = Math.Min(chunk, n - c0);
            var idx = index.Slice(c0, cn);
            _gather.Launch(_stream, xTeacher, T, idx, cn, H, rowsT);
            _k.RmsNorm(_stream, rowsT, _norm, normed, null, cn, H, _eps);
            Linear(normed, cn, H, _lmHead, null, vocab, zt);
            _gather.Launch(_stream, xStudent, T, idx, cn, H, rowsS);
            _k.RmsNorm(_stream, rowsS, _norm, normed, null, cn, H, _eps);
            Linear(normed, cn, H, _lmHead, null, vocab, zs);
            _k.KlRows(_stream, zt, zs, cn, vocab, _temperature, dx is null ? 0f : gradScale, rowLoss.Slice(c0, cn), agree.Slice(c0, cn));
            if (dx is not { } d) continue;
            var dFinal = _ws.Float("kl.dFinal", (long)chunk * H);
            LinearInputGrad(zs, cn, vocab, _lmHead, H, dFinal, accumulate: false);
            var dRows = _ws.Float("kl.dRows", (long)chunk * H);
            Zero(dRows.Slice(0, (long)cn * H));
            _k.RmsNormBackwardInput(_stream, rowsS, _norm, dFinal, dRows, cn, H, _eps);
            _k.ScatterAddRows(_stream, dRows, idx, cn, H, d);
        }
        var losses = new double[n];
        var agrees = new int[n];
        _stream.Download(rowLoss, losses);
        _stream.Download(agree, agrees);
        double sum = 0;
        int agreeing = 0;
        for (int r = 0; r < n; r++)
        {
            sum += losses[r];
            agreeing += agrees[r];
        }
        return new DistillationScore(sum, n, agreeing);
    }

    void StudentBackward(DeviceSpan<float> xl, DeviceSpan<float> dx, DeviceSpan<float>? dBeforeLast, int T)
    {
        long th = (long)T * H, ti = (long)T * Inter, tq = (long)T * QDim;
        var dk = _ws.Float("cache.dk", (long)Leaders * T * KvDim);
        var dv = _ws.Float("cache.dv", (long)Leaders * T * KvDim);
        Zero(dk);
        Zero(dv);
        var dMid = _ws.Float("dMid", th);
        var dm = _ws.Float("dm", ti);
        var dGate = _ws.Float("dGate", ti);
        var dUp = _ws.Float("dUp", ti);
        var dh = _ws.Float("dh", th);
        var dAttn = _ws.Float("dAttn", tq);
        var dq = _ws.Float("dq", tq);
        var student = _host;
        for (int j = L - 1; j >= Lkv; j--)
        {
            var layer = _layers[j];
            // MLP.
            LinearInputGrad(dx, T, H, layer.Down, Inter, dm, accumulate: false);
            _k.SiluMulBackward(_stream, Act("act.gate", j, Inter, T), Act("act.up", j, Inter, T), dm, dGate, dUp, ti);
            LinearInputGrad(dGate, T, Inter, layer.Gate, H, dh, accumulate: false);
            LinearInputGrad(dUp, T, Inter, layer.Up, H, dh, accumulate: true);
            Copy(dMid, dx, th);
            _k.RmsNormBackwardInput(_stream, Act("act.mid", j, H, T), layer.PostNorm, dh, dMid, T, H, _eps);

            // Attention.
            LinearInputGrad(dMid, T, H, layer.OW, QDim, dAttn, accumulate: false);
            int c = Leader(j);
            AttentionBackward(Act("act.q", j, QDim, T), dAttn, Cache("cache.k", c, T), Cache("cache.v", c, T), T, dq,
                dk.Slice((long)c * T * KvDim, (long)T * KvDim), dv.Slice((long)c * T * KvDim, (long)T * KvDim));
            Rope(dq, T, _cfg.NumAttentionHeads, inverse: true);
            LinearWeightGrad(dq, Act("act.h1", j, H, T), T, QDim, H, Grad(student.QProj[j]!), GradOpt(student.QBias[j]));
            LinearInputGrad(dq, T, QDim, layer.QSkv!.Value, H, dh, accumulate: false);
            _k.RmsNormBackwardInput(_stream, Act("act.input", j, H, T), layer.InputNorm, dh, dMid, T, H, _eps);
            Copy(dx, dMid, th);
            if (j == L - 1 && dBeforeLast is { } extra) _k.Add(_stream, dx, extra, th);
        }

        // SingleInputKV: every later cache came from s = norm_swiftkv(x_l).
        var s = _ws.Float("s", th);
        var ds = _ws.Float("ds", th);
        Zero(ds);
        for (int j = Lkv; j < L; j++)
        {
            if (!_cfg.IsKvGroupLeader(j)) continue;
            var layer = _layers[j];
            int c = Leader(j);
            var dK = dk.Slice((long)c * T * KvDim, (long)T * KvDim);
            var dV = dv.Slice((long)c * T * KvDim, (long)T * KvDim);
            Rope(dK, T, _cfg.NumKeyValueHeads, inverse: true);
            LinearWeightGrad(dK, s, T, KvDim, H, Grad(student.KProj[j]!), GradOpt(student.KBias[j]));
            LinearWeightGrad(dV, s, T, KvDim, H, Grad(student.VProj[j]!), GradOpt(student.VBias[j]));
            LinearInputGrad(dK, T, KvDim, layer.KSkv!.Value, H, ds, accumulate: true);
            LinearInputGrad(dV, T, KvDim, layer.VSkv!.Value, H, ds, accumulate: true);
        }
        _k.ColumnSums(_stream, ds, xl, _ws.Float("s.rstd", T), T, H, _ws.Float("colsum", DistillationKernels.ColumnScratch(T, H)), Grad(student.NormSwiftKv));
    }

    DeviceSpan<float> Grad(float[] parameter) => _slotOf[parameter].Grad.Span;
    DeviceSpan<float>? GradOpt(float[]? parameter) => parameter is null ? null : Grad(parameter);

    // ---- attention with materialised scores, one key/value head's group of query heads at a time ----

    float Scale => (float)(1.0 / Math.Sqrt(_cfg.HeadDim));

    /// <summary>Causal GQA attention over each sequence of the pass: out (rows, q_dim) from q (rows, q_dim) and k, v (rows, kv_dim).</summary>
    void Attend(DeviceSpan<float> q, DeviceSpan<float> k, DeviceSpan<float> v, int rows, DeviceSpan<float> output)
    {
        System.Diagnostics.Debug.Assert(rows == _pack.Rows, "attention runs over the pass in progress");
        foreach (var (start, length) in _pack.Sequences)
            AttendOne(q.Slice((long)start * QDim, (long)length * QDim), k.Slice((long)start * KvDim, (long)length * KvDim),
                v.Slice((long)start * KvDim, (long)length * KvDim), length, output.Slice((long)start * QDim, (long)length * QDim));
    }

    /// <summary>dq (written) and dk, dv (added) of <see cref="Attend"/>, sequence by sequence.</summary>
    void AttentionBackward(DeviceSpan<float> q, DeviceSpan<float> dOut, DeviceSpan<float> k, DeviceSpan<float> v, int rows,
        DeviceSpan<float> dq, DeviceSpan<float> dk, DeviceSpan<float> dv)
    {
        System.Diagnostics.Debug.Assert(rows == _pack.Rows, "attention runs over the pass in progress");
        foreach (var (start, length) in _pack.Sequences)
        {
            long qs = (long)start * QDim, ql = (long)length * QDim, ks = (long)start * KvDim, kl = (long)length * KvDim;
            AttentionBackwardOne(q.Slice(qs, ql), dOut.Slice(qs, ql), k.Slice(ks, kl), v.Slice(ks, kl), length, dq.Slice(qs, ql), dk.Slice(ks, kl), dv.Slice(ks, kl));
        }
    }

    /// <summary>Causal GQA attention of one sequence: out (T, q_dim) from q (T, q_dim) and k, v (T, kv_dim).</summary>
    void AttendOne(DeviceSpan<float> q, DeviceSpan<float> k, DeviceSpan<float> v, int T, DeviceSpan<float> output)
    {
        int d = _cfg.HeadDim, groups = _cfg.NumAttentionHeads / _cfg.NumKeyValueHeads;
        long tt = (long)T * T;
        var p = _ws.Float("scores.p", groups * tt);
        for (int g = 0; g < _cfg.NumKeyValueHeads; g++)
        {
            // Scores of the group's heads: S_h (T_q, T_k) row-major is (T_k, T_q) column-major = K_g · Q_hᵀ.
            _blas.GemmStridedBatchedF32(true, false, T, T, d, k.Slice((long)g * d), KvDim, 0, q.Slice((long)g * groups * d), QDim, d,
                p, T, tt, groups, 0f, _tf32);
            _k.CausalSoftmax(_stream, p, T, groups, Scale);
            // O_h (T_q, d) row-major = (d, T_q) column-major = V_gᵀ · P_hᵀ.
            _blas.GemmStridedBatchedF32(false, false, d, T, T, v.Slice((long)g * d), KvDim, 0, p, T, tt,
                output.Slice((long)g * groups * d), QDim, d, groups, 0f, _tf32);
        }
    }

    /// <summary>dq (written) and dk, dv (added) of one sequence's causal GQA attention, recomputing the scores.</summary>
    void AttentionBackwardOne(DeviceSpan<float> q, DeviceSpan<float> dOut, DeviceSpan<float> k, DeviceSpan<float> v, int T,
        DeviceSpan<float> dq, DeviceSpan<float> dk, DeviceSpan<float> dv)
    {
        int d = _cfg.HeadDim, groups = _cfg.NumAttentionHeads / _cfg.NumKeyValueHeads;
        long tt = (long)T * T;
        var p = _ws.Float("scores.p", groups * tt);
        var dp = _ws.Float("scores.dp", groups * tt);
        for (int g = 0; g < _cfg.NumKeyValueHeads; g++)
        {
            var qg = q.Slice((long)g * groups * d);
            var dOutG = dOut.Slice((long)g * groups * d);
            _blas.GemmStridedBatchedF32(true, false, T, T, d, k.Slice((long)g * d), KvDim, 0, qg, QDim, d, p, T, tt, groups, 0f, _tf32);
            _k.CausalSoftmax(_stream, p, T, groups, Scale);
            // dP_h = dO_h · V_gᵀ, the same product as the scores with dO for Q and V for K.
            _blas.GemmStridedBatchedF32(true, false, T, T, d, v.Slice((long)g * d), KvDim, 0, dOutG, QDim, d, dp, T, tt, groups, 0f, _tf32);
            _k.CausalSoftmaxBackward(_stream, p, dp, T, groups, Scale);
            // dQ_h = dS_h · K_g, as O = P · V.
            _blas.GemmStridedBatchedF32(false, false, d, T, T, k.Slice((long)g * d), KvDim, 0, dp, T, tt, dq.Slice((long)g * groups * d), QDim, d, groups, 0f, _tf32);
            // dK_g += Σ_h dS_hᵀ · Q_h and dV_g += Σ_h P_hᵀ · dO_h: (d, T_k) column-major = Q_hᵀ (d, T_q) · dS_h (T_q, T_k).
            for (int i = 0; i < groups; i++)
            {
                _blas.GemmF32(false, true, d, T, T, qg.Slice((long)i * d), QDim, dp.Slice(i * tt), T, dk.Slice((long)g * d), KvDim, 1f, _tf32);
                _blas.GemmF32(false, true, d, T, T, dOutG.Slice((long)i * d), QDim, p.Slice(i * tt), T, dv.Slice((long)g * d), KvDim, 1f, _tf32);
            }
        }
    }

    // ---- row-major linear layers on cuBLAS's column-major GEMM ----

    /// <summary>y (rows, outDim) = x (rows, inDim) · wᵀ (+ b) [+ y].</summary>
    void Linear(DeviceSpan<float> x, int rows, int inDim, DeviceSpan<float> w, DeviceSpan<float>? b, int outDim, DeviceSpan<float> y, bool accumulate = false)
    {
        _blas.GemmF32(true, false, outDim, rows, inDim, w, inDim, x, inDim, y, outDim, accumulate ? 1f : 0f, _tf32);
        if (b is { } bias) _k.AddBias(_stream, y, bias, rows, outDim);
    }

    void Linear(DeviceSpan<float> x, int rows, int inDim, Frozen w, DeviceSpan<float>? b, int outDim, DeviceSpan<float> y, bool accumulate = false) =>
        Linear(x, rows, inDim, Fp32(w), b, outDim, y, accumulate);

    void LinearInputGrad(DeviceSpan<float> dy, int rows, int outDim, Frozen w, int inDim, DeviceSpan<float> dx, bool accumulate) =>
        LinearInputGrad(dy, rows, outDim, Fp32(w), inDim, dx, accumulate);

    /// <summary>dx (rows, inDim) [+]= dy (rows, outDim) · w (outDim, inDim).</summary>
    void LinearInputGrad(DeviceSpan<float> dy, int rows, int outDim, DeviceSpan<float> w, int inDim, DeviceSpan<float> dx, bool accumulate) =>
        _blas.GemmF32(false, false, inDim, rows, outDim, w, inDim, dy, outDim, dx, inDim, accumulate ? 1f : 0f, _tf32);

    /// <summary>dw (outDim, inDim) += dyᵀ · x, and db (outDim) += the column sums of dy.</summary>
    void LinearWeightGrad(DeviceSpan<float> dy, DeviceSpan<float> x, int rows, int outDim, int inDim, DeviceSpan<float> dw, DeviceSpan<float>? db)
    {
        _blas.GemmF32(false, true, inDim, outDim, rows, x, inDim, dy, outDim, dw, inDim, 1f, _tf32);
        if (db is { } bias) _k.ColumnSums(_stream, dy, null, null, rows, outDim, _ws.Float("colsum", DistillationKernels.ColumnScratch(rows, outDim)), bias);
    }

    void Rope(DeviceSpan<float> x, int T, int heads, bool inverse) =>
        _k.Rope(_stream, x, T, heads, _cfg.HeadDim, _cos!.Span, _sin!.Span, _ropeRows, inverse, _ws.Int("positions", T));

    /// <summary>cos/sin tables for positions 0..rows-1, made on the host from the CPU's own angles.</summary>
    void EnsureRope(int rows)
    {
        if (rows <= _ropeRows) return;
        int half = _cfg.HeadDim / 2;
        var cos = new float[(long)rows * half];
        var sin = new float[(long)rows * half];
        for (int t = 0; t < rows; t++) _rope.Angles(t, cos.AsSpan(t * half, half), sin.AsSpan(t * half, half));
        // The old tables may still be read by queued work; and if an allocation below fails, no later call may take the
        // missing tables for valid ones.
        _stream.Synchronize();
        _ropeRows = 0;
        _cos?.Dispose();
        _sin?.Dispose();
        _cos = null;
        _sin = null;
        _cos = new DeviceBuffer<float>(cos);
        _sin = new DeviceBuffer<float>(sin);
        _ropeRows = rows;
    }

    void Copy(DeviceSpan<float> to, DeviceSpan<float> from, long count) => _stream.CopyDeviceAsync(to.Address, from.Address, count * 4);
    void Zero(DeviceSpan<float> span) => _stream.FillAsync(new DeviceSpan<int>(span.Address, span.Length), 0);

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        try { _stream?.Synchronize(); } catch (CudaException) { }   // a failed step: free what it held regardless
        _ws.Dispose();
        foreach (var slot in _slots)
        {
            slot.Grad.Dispose();
            slot.M.Dispose();
            slot.V.Dispose();
        }
        foreach (var b in _uploaded.Values) b.Dispose();
        foreach (var b in _weights) b.Dispose();
        foreach (var b in _bf16Weights) b.Dispose();
        _widened?.Dispose();
        _cos?.Dispose();
        _sin?.Dispose();
        _ranks?.Dispose();
        _library?.Dispose();
        _blas?.Dispose();
        _stream?.Dispose();
    }

    /// <summary>
    /// Sequences run in one pass: their tokens one after another, each with positions from 0 and its own causal
    /// attention (a block-diagonal mask, as if run apart).
    /// </summary>
    sealed class Pack
    {
        public static readonly Pack Empty = new([]);

        Pack(IReadOnlyList<DistillationSequence> sequences)
        {
            int rows = sequences.Sum(s => s.Tokens.Length);
            Tokens = new int[rows];
            Positions = new int[rows];
            LossMask = new bool[rows];
            var spans = new List<(int, int)>();
            int at = 0;
            foreach (var s in sequences)
            {
                int n = s.Tokens.Length;
                s.Tokens.CopyTo(Tokens, at);
                s.LossMask.CopyTo(LossMask, at);
                for (int t = 0; t < n; t++) Positions[at + t] = t;
                spans.Add((at, n));
                Longest = Math.Max(Longest, n);
                at += n;
            }
            Sequences = spans;
        }

        public int[] Tokens { get; }
        public int[] Positions { get; }
        public bool[] LossMask { get; }
        /// <summary>(first row, length) of each sequence.</summary>
        public IReadOnlyList<(int Start, int Length)> Sequences { get; }
        public int Rows => Tokens.Length;
        public int Longest { get; }

        /// <summary>The sequences in order, gathered into passes of at most <paramref name="packRows"/> rows (one each when 0).</summary>
        public static IEnumerable<Pack> Of(IReadOnlyList<DistillationSequence> sequences, int packRows)
        {
            var current = new List<DistillationSequence>();
            int rows = 0;
            foreach (var s in sequences)
            {
                if (current.Count > 0 && rows + s.Tokens.Length > packRows)
                {
                    yield return new Pack(current);
                    current = [];
                    rows = 0;
                }
                current.Add(s);
                rows += s.Tokens.Length;
            }
            if (current.Count > 0) yield return new Pack(current);
        }
    }

    /// <summary>Named device buffers reused from sequence to sequence, grown when a longer one comes.</summary>
    sealed class Scratch(CudaStream stream) : IDisposable
    {
        readonly Dictionary<string, DeviceBuffer<float>> _floats = [];
        readonly Dictionary<string, DeviceBuffer<int>> _ints = [];
        readonly Dictionary<string, DeviceBuffer<double>> _doubles = [];

        DeviceSpan<T> Get<T>(Dictionary<string, DeviceBuffer<T>> pool, string name, long length) where T : unmanaged
        {
            if (!pool.TryGetValue(name, out var b) || b.Length < length)
            {
                // Work queued on the stream may still read the old buffer.
                if (b is not null) stream.Synchronize();
                b?.Dispose();
                pool.Remove(name);
                b = new DeviceBuffer<T>(length);
                pool[name] = b;
            }
            return b.Span.Slice(0, length);
        }

        public DeviceSpan<float> Float(string name, long length) => Get(_floats, name, length);
        public DeviceSpan<int> Int(string name, long length) => Get(_ints, name, length);
        public DeviceSpan<double> Double(string name, long length) => Get(_doubles, name, length);

        public void Dispose()
        {
            foreach (var b in _floats.Values) b.Dispose();
            foreach (var b in _ints.Values) b.Dispose();
            foreach (var b in _doubles.Values) b.Dispose();
            _floats.Clear();
            _ints.Clear();
            _doubles.Clear();
        }
    }
}
