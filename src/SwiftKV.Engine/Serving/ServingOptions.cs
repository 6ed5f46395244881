// Runtime knobs of one serving engine (kept apart from the model's config.json facts).
using SwiftKV.Engine.Sampling;

namespace SwiftKV.Engine.Serving;

/// <summary>Element type of the paged KV pool.</summary>
public enum KvCacheDtype
{
    /// <summary>bf16 keys and values (the CUDA default; the CPU backend always stores fp32).</summary>
    Bf16,
    /// <summary>
    /// fp8 e4m3 keys and values with one fp32 scale per (token, KV head): about half the bytes of bf16 per token,
    /// so the same memory holds ~2x the sequences. CUDA only; the CPU backend ignores it (it stays fp32).
    /// </summary>
    Fp8E4M3,
}

/// <summary>How a <see cref="ServingEngine"/> batches and how much KV memory it takes.</summary>
public sealed record ServingOptions
{
    /// <summary>
    /// Positions per KV block. Null: the backend's choice (<see cref="IBatchedBackend.PreferredBlockSize"/>: 64 for bf16
    /// pools on Hopper, whose fastest prefill attention reads whole 64-position blocks, else 16).
    /// </summary>
    public int? BlockSize { get; init; }

    /// <summary>KV blocks in the pool. Null: derived from <see cref="KvCacheBytes"/>.</summary>
    public int? NumKvBlocks { get; init; }

    /// <summary>
    /// KV memory budget when <see cref="NumKvBlocks"/> is null. The same bytes buy more blocks with SwiftKV's
    /// AcrossKV (fewer caches per block). Capped at what <see cref="MaxRunningSequences"/> full-length sequences use
    /// beside the admission reserve (<see cref="AdmissionReserveBlocks"/>).
    /// Null: the backend's choice (<see cref="IBatchedBackend.PreferredKvCacheBytes"/>: on a GPU 90% of the memory
    /// still free once the weights, a step's workspace and a reserve are set aside; 1 GiB on the CPU). Set it when other models or
    /// processes must fit on the same GPU after this engine starts.
    /// </summary>
    public long? KvCacheBytes { get; init; }

    /// <summary>
    /// Most tokens one step computes (decode tokens plus prefill chunks): a long prompt prefills in chunks of this many
    /// tokens. Null: the backend's choice (<see cref="IBatchedBackend.PreferredMaxBatchTokens"/>: 8192 on GPUs with
    /// >= 64 GiB and >= 32 GiB beyond the weights, 2048 on other GPUs, 512 on the CPU). Larger chunks stream the weights once per chunk and run the
    /// GEMMs at full size (H100, 8B, SwiftKV 50%, block size 16: a 32K-token prompt's first token after 651 ms at 8192
    /// vs 1015 ms at 512; 569 ms at 8192 with blocks of 64); smaller ones shorten the pause that running requests'
    /// decoding sees while a long prompt prefills.
    /// </summary>
    public int? MaxBatchTokens { get; init; }

    /// <summary>Most sequences admitted at once.</summary>
    /// <remarks>
    /// Null: the backend's choice (<see cref="IBatchedBackend.PreferredMaxRunningSequences"/>: 128 on the GPU, 64 on
    /// the CPU). More running sequences make bigger decode steps (more tokens per second in all, a slower pace for each).
    /// </remarks>
    public int? MaxRunningSequences { get; init; }

    /// <summary>Longest sequence (prompt + output); null = the model's max_position_embeddings.</summary>
    public int? MaxSequenceLength { get; init; }

    /// <summary>Blocks admission keeps free for running sequences' decode growth (fewer preemptions). Null: 1% of the pool, at least 1 (0 with <see cref="ReserveOutputBlocks"/>).</summary>
    public int? AdmissionReserveBlocks { get; init; }

    /// <summary>
    /// Admit a request only while the blocks for its whole length (prompt + maxTokens) fit beside every running
    /// request's whole length: decodes then never run out of blocks and nobody is preempted (no recompute). Off:
    /// admission counts known tokens only and a decode that finds no block preempts the latest admission.
    /// Suits workloads whose maxTokens is close to what requests generate (a large maxTokens that stops early holds
    /// blocks nobody uses, so fewer requests run at once).
    /// </summary>
    public bool ReserveOutputBlocks { get; init; }

    /// <summary>Called on the engine's loop thread after every step (host timing; keep it cheap).</summary>
    public Action<ServingStepTrace>? StepObserver { get; init; }

    /// <summary>
    /// Element type of the paged KV pool (<see cref="KvCacheDtype.Bf16"/> default). The pool's block count follows
    /// the backend's bytes per token for it. Backends that store only one type (the CPU backend: fp32) ignore it.
    /// </summary>
    public KvCacheDtype KvCacheDtype { get; init; } = KvCacheDtype.Bf16;

    /// <summary>Share full blocks of identical prefixes across requests (and across time, until evicted).</summary>
    public bool EnablePrefixCaching { get; init; } = true;

    /// <summary>
    /// How long a step waits for a request's logits constraint (e.g. JSON mode) to give its next mask, counted from when
    /// the step first needs it (the mask is computed beside the step's work). A constraint still running then fails its
    /// own request with a TimeoutException; the step and the other requests go on. A JSON mask takes milliseconds.
    /// Until then the step (and, on the GPU, the backend it runs on) waits: keep it short where engines share a backend.
    /// </summary>
    public TimeSpan ConstraintTimeout { get; init; } = TimeSpan.FromSeconds(10);

    internal void Validate()
    {
        if (BlockSize is < 1) throw new ArgumentOutOfRangeException(nameof(BlockSize), BlockSize, "BlockSize must be >= 1 (or null).");
        if (NumKvBlocks is < 1) throw new ArgumentOutOfRangeException(nameof(NumKvBlocks), NumKvBlocks, "NumKvBlocks must be >= 1 (or null).");
        if (KvCacheBytes is < 1) throw new ArgumentOutOfRangeException(nameof(KvCacheBytes), KvCacheBytes, "KvCacheBytes must be > 0 (or null).");
        if (MaxBatchTokens is < 1) throw new ArgumentOutOfRangeException(nameof(MaxBatchTokens), MaxBatchTokens, "MaxBatchTokens must be >= 1 (or null).");
        if (MaxRunningSequences is < 1) throw new ArgumentOutOfRangeException(nameof(MaxRunningSequences), MaxRunningSequences, "MaxRunningSequences must be >= 1 (or null).");
        if (MaxSequenceLength is < 2) throw new ArgumentOutOfRangeException(nameof(MaxSequenceLength), MaxSequenceLength, "MaxSequenceLength must be >= 2 (or null).");
        if (!Enum.IsDefined(KvCacheDtype)) throw new ArgumentOutOfRangeException(nameof(KvCacheDtype), KvCacheDtype, "KvCacheDtype must be Bf16 or Fp8E4M3.");
        if (ConstraintTimeout <= TimeSpan.Zero || ConstraintTimeout > LogitMask.MaxTimeout)
            throw new ArgumentOutOfRangeException(nameof(ConstraintTimeout), ConstraintTimeout, $"ConstraintTimeout must be positive and at most {LogitMask.MaxTimeout}.");
        if (AdmissionReserveBlocks is < 0) throw new ArgumentOutOfRangeException(nameof(AdmissionReserveBlocks), AdmissionReserveBlocks, "AdmissionReserveBlocks must be >= 0 (or null).");
    }
}
