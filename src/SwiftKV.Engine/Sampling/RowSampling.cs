// One logits row's token pick on a batched backend (IGreedyBatchedBackend.ForwardBatchSample), so a sampled decode
// step copies one id per sequence back instead of a 512 KB logits row (Llama 3) and a sort of it on the host.
// A mask (a logits constraint's allowed tokens) and a bias (frequency / presence penalties: the request's own token
// counts) are applied to the row first, on whichever side picks, so constrained and penalised requests need not bring
// their rows to the host either.
// The rule is the GPU sampler's (native-kernels/sampling.cu): z = (logit - max) / T; top-k keeps every z at or above
// the k-th largest (ties kept); top-p then keeps every z at or above the largest threshold whose mass reaches top_p of
// the top-k mass; the token is the first, in vocabulary order, whose running kept mass exceeds U times the kept mass.
// The Sampler picks with it too, so a request's tokens follow one rule whichever side picks them. Pick is the rule on
// the CPU, in double (the Sampler, CpuBackend, and the GPU tests' reference); the kernel's fp32 sums may put a draw
// on the other side of a bucket edge, rarely.
using System.Buffers;
using System.Diagnostics;
using System.Runtime.Intrinsics;

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

    /// <summary>Added to the row before it is picked from (greedy too); null = none.</summary>
    public LogitBias? Bias { get; init; }

    /// <summary>The tokens that may be picked (the others count as -inf), greedy too; null = all.</summary>
    public LogitMask? Mask { get; init; }

    /// <summary>
    /// Throws <see cref="ArgumentException"/> naming <paramref name="what"/> when a field is out of range (a bias token
    /// at or past <paramref name="vocab"/> among them).
    /// </summary>
    public void Validate(string what, int vocab = int.MaxValue)
    {
        if (!(Temperature >= 0) || float.IsInfinity(Temperature) || (Temperature > 0 && float.IsInfinity(1f / Temperature)))
            throw new ArgumentException($"{what}: temperature must be finite, >= 0, and 0 or with a finite inverse (got {Temperature}).");
        if (TopK < 0) throw new ArgumentException($"{what}: top_k must be >= 0 (got {TopK}).");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"{what}: top_p must be in (0, 1] (got {TopP}).");
        if (!(U >= 0 && U < 1)) throw new ArgumentException($"{what}: u must be in [0, 1) (got {U}).");
        Bias?.Validate(what, vocab);
    }

    /// <summary>
    /// The token this pick gives for <paramref name="logits"/> on the CPU: -1 when no logit is above -inf (NaN counts
    /// as -inf); the first +inf token when there is one.
    /// </summary>
    public static int Pick(ReadOnlySpan<float> logits, RowSampling s)
    {
        if (logits.IsEmpty) throw new ArgumentException("logits are empty.", nameof(logits));
        if (s.Mask is { } mask)
        {
            var allowed = mask.WaitBits();
            if (allowed is null) return Pick(logits, s with { Mask = null });
            if (allowed.Length != logits.Length)
                throw new ArgumentException($"row sampling: a mask of {allowed.Length} tokens for a row of {logits.Length}.", nameof(s));
            var floats = ArrayPool<float>.Shared;
            var masked = floats.Rent(logits.Length);
            try
            {
                var words = allowed.Words;
                for (int i = 0; i < logits.Length; i++)
                    masked[i] = ((words[i >> 5] >> (i & 31)) & 1) != 0 ? logits[i] : float.NegativeInfinity;
                return Pick(masked.AsSpan(0, logits.Length), s with { Mask = null });
            }
            finally
            {
                floats.Return(masked);
            }
        }
        if (s.Bias is { } bias)
        {
            bias.Validate("row sampling", logits.Length);
            var floats = ArrayPool<float>.Shared;
            var biased = floats.Rent(logits.Length);
            try
            {
                logits.CopyTo(biased);
                bias.AddTo(biased.AsSpan(0, logits.Length));
                return Pick(biased.AsSpan(0, logits.Length), s with { Bias = null });
            }
            finally
            {
                floats.Return(biased);
            }
        }
        if (s.Temperature == 0 || float.IsInfinity(1f / s.Temperature)) return Sampler.GreedyOrNone(logits);   // T -> 0: the argmax
        int n = logits.Length;
        float max = float.NegativeInfinity;
        foreach (float x in logits) if (x > max) max = x;   // NaN never compares greater
        if (max == float.NegativeInfinity) return -1;
        if (max == float.PositiveInfinity) return logits.IndexOf(float.PositiveInfinity);
        double invT = 1f / s.Temperature;   // the kernel's fp32 inverse
        var pool = ArrayPool<double>.Shared;
        double[] z = pool.Rent(n), e = pool.Rent(n);
        try
        {
            int finite = 0;
            for (int i = 0; i < n; i++)
            {
                double v = float.IsNaN(logits[i]) ? double.NegativeInfinity : (logits[i] - max) * invT;
                z[i] = v;
                e[i] = Math.Exp(v);   // once: every later pass sums these
                if (v > double.NegativeInfinity) finite++;
            }
            double threshold = double.NegativeInfinity;
            if (s.TopK > 0 && s.TopK < finite) threshold = KthLargest(z, n, s.TopK);
            if (s.TopP < 1) threshold = NucleusThreshold(z, e, n, threshold, s.TopP);

            double total = 0;
            for (int i = 0; i < n; i++) if (z[i] >= threshold && z[i] > double.NegativeInfinity) total += e[i];
            double target = s.U * total, acc = 0;
            int last = -1;
            for (int i = 0; i < n; i++)
            {
                if (!(z[i] >= threshold) || z[i] == double.NegativeInfinity) continue;
                last = i;
                acc += e[i];
                if (acc > target) return i;
            }
            return last;
        }
        finally
        {
            pool.Return(z);
            pool.Return(e);
        }
    }

    /// <summary>The k-th largest finite value of z[0..n) (quickselect over a copy; ties count once each).</summary>
    static double KthLargest(double[] z, int n, int k)
    {
        var pool = ArrayPool<double>.Shared;
        var a = pool.Rent(n);
        try
        {
            int m = 0;
            for (int i = 0; i < n; i++) if (z[i] > double.NegativeInfinity) a[m++] = z[i];
            int lo = 0, hi = m - 1, target = k - 1;
            while (lo < hi)
            {
                // Hoare partition, descending: a[lo..j] >= pivot >= a[i..hi], and what lies between equals the pivot.
                double pivot = a[(lo + hi) >>> 1];
                int i = lo, j = hi;
                while (i <= j)
                {
                    while (a[i] > pivot) i++;
                    while (a[j] < pivot) j--;
                    if (i <= j)
                    {
                        (a[i], a[j]) = (a[j], a[i]);
                        i++;
                        j--;
                    }
                }
                if (target <= j) hi = j;
                else if (target >= i) lo = i;
                else break;
            }
            return a[target];
        }
        finally
        {
            pool.Return(a);
        }
    }

    /// <summary>
    /// The nucleus cut among the values of z at or above <paramref name="floor"/>: the largest value v such that the
    /// mass of {z >= v} reaches topP of the kept mass, ties at v kept together. A histogram of the kept mass over
    /// [lowest, 0] finds the bin where the running mass (from the top) crosses the goal; only that bin's values are
    /// sorted. Values below -745 have no mass in double (exp underflows) and are kept only when the goal is never
    /// reached, as by a walk over every value sorted.
    /// </summary>
    static double NucleusThreshold(double[] z, double[] e, int n, double floor, float topP)
    {
        const int Bins = 4096;
        double mass = 0, lowest = 0;
        for (int i = 0; i < n; i++)
        {
            double v = z[i];
            if (!(v >= floor) || v == double.NegativeInfinity) continue;
            mass += e[i];
            if (v < lowest) lowest = v;
        }
        double lo = Math.Max(lowest, -745.0), width = -lo / Bins;
        if (!(width > 0)) return 0;   // every kept value is the maximum
        var pool = ArrayPool<double>.Shared;
        var bins = pool.Rent(Bins);
        try
        {
            Array.Clear(bins, 0, Bins);
            for (int i = 0; i < n; i++)
            {
                double v = z[i];
                if (!(v >= floor) || v < lo) continue;
                bins[Math.Min(Bins - 1, (int)((v - lo) / width))] += e[i];
            }
            double goal = topP * mass, run = 0;
            int c = Bins - 1;
            for (; c >= 0; c--)
            {
                if (run + bins[c] >= goal) break;
                run += bins[c];
            }
            if (c < 0) return floor;   // rounding kept the goal out of reach: keep everything, as the full walk would
            var values = new List<double>();
            for (int i = 0; i < n; i++)
            {
                double v = z[i];
                if (v >= floor && v >= lo && Math.Min(Bins - 1, (int)((v - lo) / width)) == c) values.Add(v);
            }
            values.Sort((x, y) => y.CompareTo(x));   // most likely first
            for (int i = 0; i < values.Count; i++)
            {
                run += Math.Exp(values[i]);
                // Ties at a threshold are kept together: the cut falls after the last token of this value.
                if (run >= goal && (i + 1 == values.Count || values[i + 1] < values[i])) return values[i];
            }
            return values[^1];   // the bin's own sum reached the goal but this order of summing fell just short
        }
        finally
        {
            pool.Return(bins);
        }
    }
}

/// <summary>
/// Additive changes to some logits of a row before its token is picked: logit[Tokens[i]] += Deltas[i], each token at
/// most once (a request's frequency / presence penalties over the tokens it generated).
/// </summary>
public sealed record LogitBias(int[] Tokens, float[] Deltas)
{
    /// <summary>Throws <see cref="ArgumentException"/> naming <paramref name="what"/> for mismatched lengths, a token outside [0, vocab) (when given), a repeated token or a non-finite delta.</summary>
    public void Validate(string what, int vocab = int.MaxValue)
    {
        if (Tokens is null || Deltas is null || Tokens.Length != Deltas.Length)
            throw new ArgumentException($"{what}: a logit bias needs one delta per token (got {Tokens?.Length} tokens, {Deltas?.Length} deltas).");
        var seen = new HashSet<int>(Tokens.Length);
        for (int i = 0; i < Tokens.Length; i++)
        {
            if ((uint)Tokens[i] >= (uint)vocab) throw new ArgumentException($"{what}: logit bias token {Tokens[i]} is outside the vocabulary [0, {vocab}).");
            if (!seen.Add(Tokens[i])) throw new ArgumentException($"{what}: logit bias token {Tokens[i]} appears twice.");
            if (!float.IsFinite(Deltas[i])) throw new ArgumentException($"{what}: logit bias delta {Deltas[i]} for token {Tokens[i]} is not finite.");
        }
    }

    /// <summary>Adds the deltas to <paramref name="logits"/> in place (tokens already validated against its length).</summary>
    public void AddTo(Span<float> logits)
    {
        for (int i = 0; i < Tokens.Length; i++) logits[Tokens[i]] += Deltas[i];
    }
}

/// <summary>
/// The tokens a logits constraint allows next, computed off the picking thread (the serving engine starts it while the
/// step runs): <see cref="WaitBits"/> gives them as bits (token i is bit i % 32 of word i / 32, the layout the GPU's
/// mask kernel reads), or null when every token is allowed or the computation failed (the engine then fails that
/// request from the task itself, not from the pick).
/// A computation still running when a wait for it has lasted its timeout counts as failed (<see cref="TimedOut"/>), so
/// a constraint that blocks fails its own request instead of stalling every other one.
/// </summary>
/// <remarks>
/// Bits, not flags: at Llama 3's vocabulary a mask is 16 KB instead of a 128 KB array on the large-object heap, made in
/// its own task rather than packed on the step's thread. Every consumer reads the bits (the GPU upload copies them, the
/// CPU pick tests them); none turns them back into flags: doing that on the step's thread for every wait made the step
/// 20-25% slower (docs/BENCHMARKS.md, "Masks as bits: measured slower, reverted"). <see cref="AllowedBits.ToFlags"/> is
/// for tests and diagnostics only.
/// </remarks>
public sealed class LogitMask
{
    long _deadline;   // Stopwatch timestamp, set by the first wait; 0: not waited for yet
    readonly Task<AllowedBits?> _bits;

    /// <summary>A mask's tokens as bits: <see cref="Length"/> tokens in <see cref="Words"/>, bits past the end clear.</summary>
    public sealed class AllowedBits
    {
        /// <param name="words">At least <see cref="SwiftKV.Cuda.Kernels.SamplingKernel.MaskWords"/>(length) words.</param>
        /// <param name="length">The tokens the mask covers (the vocabulary).</param>
        public AllowedBits(uint[] words, int length)
        {
            ArgumentNullException.ThrowIfNull(words);
            ArgumentOutOfRangeException.ThrowIfNegative(length);
            if (words.Length < SwiftKV.Cuda.Kernels.SamplingKernel.MaskWords(length))
                throw new ArgumentException($"a mask of {length} tokens needs {SwiftKV.Cuda.Kernels.SamplingKernel.MaskWords(length)} words; got {words.Length}.", nameof(words));
            Words = words;
            Length = length;
        }

        /// <summary>The bits; the first <see cref="SwiftKV.Cuda.Kernels.SamplingKernel.MaskWords"/>(Length) words are the mask's.</summary>
        public uint[] Words { get; }

        /// <summary>The tokens the mask covers.</summary>
        public int Length { get; }

        /// <summary>Whether token <paramref name="id"/> is allowed.</summary>
        public bool this[int id] => (uint)id < (uint)Length ? ((Words[id >> 5] >> (id & 31)) & 1) != 0
            : throw new ArgumentOutOfRangeException(nameof(id), id, $"a mask of {Length} tokens.");

        /// <summary>One flag per token. For tests and diagnostics: a 128 KB array at Llama 3's vocabulary, never on a step's path.</summary>
        public bool[] ToFlags()
        {
            var flags = new bool[Length];
            for (int i = 0; i < flags.Length; i++) flags[i] = this[i];
            return flags;
        }
    }

    /// <param name="allowed">The computation, as one flag per token (packed to bits in its own task when it ends); its
    /// fault is the request's failure.</param>
    /// <param name="timeout">How long <see cref="WaitBits"/> waits for it at most, counted from the first wait (null:
    /// without limit). Counted from the first wait, not from the start, so a long step (a CPU prefill) beside it costs it
    /// nothing.</param>
    public LogitMask(Task<bool[]?> allowed, TimeSpan? timeout = null)
        : this(Packed(allowed ?? throw new ArgumentNullException(nameof(allowed))), timeout)
    {
    }

    /// <param name="bits">The computation, as bits; its fault is the request's failure.</param>
    /// <param name="timeout">As for the flags' constructor.</param>
    public LogitMask(Task<AllowedBits?> bits, TimeSpan? timeout = null)
    {
        _bits = bits ?? throw new ArgumentNullException(nameof(bits));
        if (timeout is { } t && (t <= TimeSpan.Zero || t > MaxTimeout))
            throw new ArgumentOutOfRangeException(nameof(timeout), t, $"a mask's timeout must be positive and at most {MaxTimeout} (null: none).");
        Timeout = timeout;
    }

    static async Task<AllowedBits?> Packed(Task<bool[]?> flags)
    {
        if (await flags.ConfigureAwait(false) is not { } allowed) return null;
        var words = new uint[SwiftKV.Cuda.Kernels.SamplingKernel.MaskWords(allowed.Length)];
        SwiftKV.Cuda.Kernels.SamplingKernel.PackMask(allowed, words);
        return new AllowedBits(words, allowed.Length);
    }

    /// <summary>Whether the computation has ended (in time or not, well or not); does not wait.</summary>
    public bool IsCompleted => _bits.IsCompleted;

    /// <summary>The longest <see cref="WaitBits"/> waits, from the first wait (null: without limit).</summary>
    public TimeSpan? Timeout { get; }

    /// <summary>
    /// True once a wait found the computation unfinished at its deadline (the first wait plus the timeout). It stays
    /// true even if the computation ends later, because a pick may already have gone ahead without the mask.
    /// </summary>
    public bool TimedOut => Volatile.Read(ref _late);
    bool _late;

    /// <summary>
    /// Waits (until the deadline at most) for the bits; null when all are allowed, or the computation failed or is late.
    /// Costs nothing once the computation has ended: it returns the bits the task made, unchanged.
    /// </summary>
    public AllowedBits? WaitBits()
    {
        if (Timeout is { } limit && !_bits.IsCompleted && !TimedOut)
        {
            if (Volatile.Read(ref _deadline) == 0)
                Interlocked.CompareExchange(ref _deadline, Stopwatch.GetTimestamp() + (long)(limit.TotalSeconds * Stopwatch.Frequency), 0);
            long left = Volatile.Read(ref _deadline) - Stopwatch.GetTimestamp();
            // Task.Wait ends early on a fault too; its exception is read below. (The timeout is at most MaxTimeout.)
            if (left <= 0 || !((IAsyncResult)_bits).AsyncWaitHandle.WaitOne(TimeSpan.FromSeconds((double)left / Stopwatch.Frequency)))
                Volatile.Write(ref _late, true);
        }
        if (TimedOut) return null;
        try
        {
            return _bits.GetAwaiter().GetResult();
        }
        catch (Exception)
        {
            return null;   // the computation's own failure: the picker rethrows it (ThrowIfFailed)
        }
    }

    /// <summary>The longest timeout a mask takes: a wait handle counts in int milliseconds (~24.8 days).</summary>
    public static readonly TimeSpan MaxTimeout = TimeSpan.FromMilliseconds(int.MaxValue);

    /// <summary>
    /// For the picker: throws the computation's own exception when it failed, or a <see cref="TimeoutException"/> when
    /// it was late (<see cref="TimedOut"/>); returns when it finished in time. Waits up to the deadline.
    /// </summary>
    public void ThrowIfFailed()
    {
        WaitBits();
        if (TimedOut)
            throw new TimeoutException($"the request's logits constraint did not give its mask within {Timeout?.TotalSeconds:0.###} s (ServingOptions.ConstraintTimeout): the request fails, the others go on.");
        _bits.GetAwaiter().GetResult();
    }

    /// <summary>
    /// Starts <paramref name="constraint"/>'s mask for its next token on the thread pool: its Apply on a row of zeros;
    /// the tokens it sets to -inf are the masked ones (its contract: it only masks). Null bits when nothing is masked.
    /// The bits go into <c>words</c> when given (else new words): the caller's to own, so nothing may still read a mask
    /// made in them before, nor write them, until this mask is no longer read.
    /// </summary>
    public static LogitMask Of(ILogitsConstraint constraint, int vocab, TimeSpan? timeout = null, uint[]? words = null)
    {
        ArgumentNullException.ThrowIfNull(constraint);
        if (words is not null && words.Length < SwiftKV.Cuda.Kernels.SamplingKernel.MaskWords(vocab))
            throw new ArgumentException($"a mask of {vocab} tokens needs {SwiftKV.Cuda.Kernels.SamplingKernel.MaskWords(vocab)} words; got {words.Length}.", nameof(words));
        return new LogitMask(Task.Run(() =>
        {
            var floats = ArrayPool<float>.Shared;
            var probe = floats.Rent(vocab);   // 512 KB a step at Llama 3's vocabulary: pooled, not a new large object
            try
            {
                var row = probe.AsSpan(0, vocab);
                row.Clear();
                constraint.Apply(row);
                var bits = words ?? new uint[SwiftKV.Cuda.Kernels.SamplingKernel.MaskWords(vocab)];
                return PackAllowed(row, bits) ? new AllowedBits(bits, vocab) : null;
            }
            finally
            {
                floats.Return(probe);
            }
        }), timeout);
    }

    /// <summary>
    /// Sets bit i of <paramref name="words"/> where row[i] is not -inf (NaN counts as allowed, as `!=` reads it), bits
    /// past the row clear; true when some token is masked.
    /// </summary>
    internal static bool PackAllowed(ReadOnlySpan<float> row, Span<uint> words)
    {
        bool masked = false;
        var ninf = Vector256.Create(float.NegativeInfinity);
        for (int w = 0; w < SwiftKV.Cuda.Kernels.SamplingKernel.MaskWords(row.Length); w++)
        {
            var block = row.Slice(32 * w, Math.Min(32, row.Length - 32 * w));
            uint bits = 0;
            if (block.Length == 32 && Vector256.IsHardwareAccelerated)
            {
                for (int q = 0; q < 4; q++)
                    bits |= Vector256.Equals(Vector256.Create(block.Slice(8 * q, 8)), ninf).ExtractMostSignificantBits() << (8 * q);
                bits = ~bits;
            }
            else
                for (int i = 0; i < block.Length; i++)
                    if (block[i] != float.NegativeInfinity) bits |= 1u << i;
            words[w] = bits;
            masked |= bits != (block.Length == 32 ? uint.MaxValue : (1u << block.Length) - 1);
        }
        return masked;
    }
}
