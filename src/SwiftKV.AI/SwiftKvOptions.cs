// Runtime options of the in-process chat client: where the checkpoint is and how to run it. Bound from
// configuration ("SwiftKV" section) or set in code; validated before the model loads.
using SwiftKV.Engine;

namespace SwiftKV.AI;

/// <summary>Options for <see cref="SwiftKvChatClient"/> and <c>AddSwiftKvChatClient</c>.</summary>
public sealed class SwiftKvOptions
{
    /// <summary>Directory of a Hugging Face-format Llama 3.x or SwiftKV checkpoint (config.json, safetensors, tokenizer).</summary>
    public string ModelPath { get; set; } = "";

    /// <summary>Model id reported in responses and metadata; defaults to the checkpoint directory's name.</summary>
    public string? ModelId { get; set; }

    /// <summary>Which compute backend runs the model.</summary>
    public BackendKind Backend { get; set; } = BackendKind.Auto;

    /// <summary>Run the SwiftKV path when the checkpoint has it; false runs the same checkpoint as the original Llama.</summary>
    public bool SwiftKv { get; set; } = true;

    /// <summary>Most tokens (prompt + answer) one request may hold in its KV cache.</summary>
    public int ContextLength { get; set; } = 8192;

    /// <summary>
    /// Bytes of KV cache the serving engine allocates for all concurrent requests together (paged blocks). Null
    /// (default): on a GPU, 90% of the memory still free once the weights, a step's workspace and a 2 GiB reserve
    /// are set aside, but no more than MaxConcurrentRequests requests of ContextLength need; on the
    /// CPU, 1 GiB. Set it when several models (say, SwiftKV on and off side by side) or other processes share the GPU:
    /// the first engine to start would otherwise take what the next one's weights need.
    /// </summary>
    public long? KvCacheBytes { get; set; }

    /// <summary>Reuse the KV of identical prompt prefixes (whole blocks) across requests, e.g. a shared system prompt or a resent chat history.</summary>
    public bool EnablePrefixCaching { get; set; } = true;

    /// <summary>
    /// Storage of the serving engine's KV blocks on the GPU: Bf16 (default) or Fp8E4M3 (half the bytes, so about twice
    /// the concurrent sequences, at a small accuracy cost). The CPU backend always keeps fp32 and ignores this.
    /// </summary>
    public SwiftKV.Engine.Serving.KvCacheDtype KvCacheDtype { get; set; } = SwiftKV.Engine.Serving.KvCacheDtype.Bf16;

    /// <summary>
    /// Most tokens one serving step computes: a long prompt prefills in chunks of this many tokens, beside the other
    /// requests' decoding. Null (default): the backend's choice, 8192 on GPUs with >= 64 GiB that keep >= 32 GiB beyond the
    /// weights, 2048 on other GPUs (70B on one H200), 512 on the CPU. Lower it to shorten the pauses streaming answers see while a long prompt prefills; raise it for
    /// throughput (docs/BENCHMARKS.md has the measured trade-off).
    /// </summary>
    public int? MaxBatchTokens { get; set; }

    /// <summary>
    /// Most requests decoding at once (more wait for a slot): bigger decode steps give more tokens per second in all
    /// and a slower pace for each request. Null (default): the backend's choice, 128 on the GPU, 64 on the CPU.
    /// </summary>
    public int? MaxConcurrentRequests { get; set; }

    /// <summary>
    /// Positions per paged KV block (a power of two on the GPU). Null (default): the backend's choice, 64 for bf16 KV on
    /// Hopper (its fastest prefill attention reads whole blocks), else 16. Prefix caching shares whole blocks.
    /// </summary>
    public int? KvBlockSize { get; set; }

    /// <summary>
    /// How the GPU holds an FP8 checkpoint's e4m3 weights. Auto (default): kept as e4m3 only when the dequantized bf16
    /// weights would not fit the GPU beside a 2 GiB reserve (70B FP8 on an 80 GB card), else dequantized. Keep: always
    /// e4m3 (half the weight memory and a faster single-request decode; slower prefill and batched decode, which dequantize
    /// each matrix before its GEMM: docs/BENCHMARKS.md has the figures). KeepW8A8: kept, and prefill and batched decode
    /// quantize each GEMM's input per token to e4m3 and run the GEMMs on fp8 tensor cores (faster than bf16, the numerics
    /// the published FP8 checkpoints were calibrated for; Hopper GPUs only). Dequantize: always bf16. Ignored for other
    /// checkpoints. On the CPU the weights are fp32 whatever this says, and KeepW8A8 quantizes the fp8 Linears' inputs
    /// per token at every step, by the same rule.
    /// </summary>
    public SwiftKV.Engine.Cuda.Fp8Weights Fp8Weights { get; set; } = SwiftKV.Engine.Cuda.Fp8Weights.Auto;

    /// <summary>Answer length when a request sets no MaxOutputTokens.</summary>
    public int DefaultMaxOutputTokens { get; set; } = 512;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid option.</summary>
    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(ModelPath))
            throw new ArgumentException("SwiftKvOptions.ModelPath is required: the directory of a Hugging Face Llama or SwiftKV checkpoint.", nameof(ModelPath));
        if (!Directory.Exists(ModelPath))
            throw new ArgumentException(File.Exists(ModelPath)
                ? $"SwiftKvOptions.ModelPath '{ModelPath}' is a file; give the checkpoint directory that holds it ({Path.GetDirectoryName(Path.GetFullPath(ModelPath))})."
                : $"SwiftKvOptions.ModelPath '{ModelPath}': no such directory (expected a Hugging Face checkpoint: config.json, *.safetensors, tokenizer).",
                nameof(ModelPath));
        ValidateSettings();
    }

    /// <summary>
    /// Checks every option but <see cref="ModelPath"/>: for an app that fills the path in later (a model it downloads or
    /// makes on first run) and wants a bad setting to stop it before that work.
    /// </summary>
    public void ValidateSettings()
    {
        ValidateRequestOptions();
        if (KvCacheBytes is <= 0)
            throw new ArgumentOutOfRangeException(nameof(KvCacheBytes), KvCacheBytes, "SwiftKvOptions.KvCacheBytes must be > 0 (or null for the backend's default).");
        if (!Enum.IsDefined(KvCacheDtype))
            throw new ArgumentOutOfRangeException(nameof(KvCacheDtype), KvCacheDtype, "SwiftKvOptions.KvCacheDtype must be Bf16 or Fp8E4M3.");
        if (MaxBatchTokens is <= 0)
            throw new ArgumentOutOfRangeException(nameof(MaxBatchTokens), MaxBatchTokens, "SwiftKvOptions.MaxBatchTokens must be > 0 (or null for the backend's default).");
        if (MaxConcurrentRequests is <= 0)
            throw new ArgumentOutOfRangeException(nameof(MaxConcurrentRequests), MaxConcurrentRequests, "SwiftKvOptions.MaxConcurrentRequests must be > 0 (or null for the backend's default).");
        if (KvBlockSize is <= 0 or > 4096)
            throw new ArgumentOutOfRangeException(nameof(KvBlockSize), KvBlockSize, "SwiftKvOptions.KvBlockSize must be in 1..4096 (or null for the backend's default).");
        if (!Enum.IsDefined(Fp8Weights))
            throw new ArgumentOutOfRangeException(nameof(Fp8Weights), Fp8Weights, "SwiftKvOptions.Fp8Weights must be Auto, Dequantize, Keep or KeepW8A8.");
        if (!Enum.IsDefined(Backend))
            throw new ArgumentOutOfRangeException(nameof(Backend), Backend, "SwiftKvOptions.Backend must be Auto, Cpu or Cuda.");
    }

    /// <summary>The options every request reads, which a client of an already loaded model checks too.</summary>
    internal void ValidateRequestOptions()
    {
        if (ModelId is not null && string.IsNullOrWhiteSpace(ModelId))
            throw new ArgumentException("SwiftKvOptions.ModelId must be null (the directory's name) or a non-empty id.", nameof(ModelId));
        if (ContextLength <= 0)
            throw new ArgumentOutOfRangeException(nameof(ContextLength), ContextLength, "SwiftKvOptions.ContextLength (SwiftKV:ContextLength in configuration) must be > 0.");
        if (DefaultMaxOutputTokens <= 0)
            throw new ArgumentOutOfRangeException(nameof(DefaultMaxOutputTokens), DefaultMaxOutputTokens, "SwiftKvOptions.DefaultMaxOutputTokens (SwiftKV:DefaultMaxOutputTokens in configuration) must be > 0.");
    }

    internal SwiftKvOptions Clone() => (SwiftKvOptions)MemberwiseClone();

    /// <summary>
    /// Options bound from a configuration section (keys as the property names, any case), not yet validated. A key that
    /// is no option, a value its option cannot take, or sub-keys under an option are an <see cref="ArgumentException"/>
    /// naming the key, rather than being ignored.
    /// </summary>
    public static SwiftKvOptions FromConfiguration(Microsoft.Extensions.Configuration.IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        var options = new SwiftKvOptions();
        SwiftKvConfigurationBinder.Bind(configuration, options);
        return options;
    }

    /// <summary>Validates, then loads the checkpoint with the serving engine sized by these options.</summary>
    internal LocalModel LoadModel()
    {
        Validate();
        return LocalModel.Load(ModelPath, Backend, SwiftKv, new SwiftKV.Engine.Serving.ServingOptions
        {
            KvCacheBytes = KvCacheBytes, EnablePrefixCaching = EnablePrefixCaching, KvCacheDtype = KvCacheDtype,
            MaxBatchTokens = MaxBatchTokens, BlockSize = KvBlockSize, MaxRunningSequences = MaxConcurrentRequests,
            // No request holds more than ContextLength positions, so the pool need not either (ChatPromptBuilder checks prompts against it).
            MaxSequenceLength = Math.Max(2, ContextLength),
        }, fp8Weights: Fp8Weights);
    }
}
