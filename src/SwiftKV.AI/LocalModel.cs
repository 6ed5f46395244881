// A checkpoint loaded for inference: config, tokenizer, stop tokens and a compute backend.
// NOTE: lives here until the engine project grows its own model-loading entry point; it only composes
// Model (loading) and Engine (backends).
using SwiftKV.Model;
using SwiftKV.Model.Tokenization;
using SwiftKV.Model.Checkpoint;
using SwiftKV.Cuda;
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Cuda;

namespace SwiftKV.Engine;

/// <summary>Which compute backend runs a model.</summary>
public enum BackendKind
{
    /// <summary>CUDA when a usable GPU is present, else the CPU.</summary>
    Auto,
    Cpu,
    Cuda,
}

/// <summary>A loaded model: everything a request needs besides its own KV cache.</summary>
public sealed class LocalModel : IDisposable
{
    public required string Path { get; init; }
    public required LlamaConfig Config { get; init; }
    public required LlamaTokenizer Tokenizer { get; init; }
    public required IModelBackend Backend { get; init; }
    /// <summary>Why Auto picked the backend it did (shown in logs and by the CLI).</summary>
    public required string BackendReason { get; init; }

    /// <summary>
    /// Serialises forward passes on this model across every client that shares it.
    /// NOTE: one request at a time until the batching engine (issue 4) replaces this.
    /// </summary>
    public SemaphoreSlim ExecutionGate { get; } = new(1, 1);

    /// <summary>Loads a checkpoint directory. <paramref name="swiftKv"/> is honoured only when the checkpoint has SwiftKV.</summary>
    public static LocalModel Load(string path, BackendKind backend = BackendKind.Auto, bool swiftKv = true)
    {
        var config = LlamaConfig.Load(path);
        var tokenizer = LlamaTokenizer.Load(path);
        if (tokenizer.VocabularySize > config.VocabSize)
            throw new InvalidModelException($"{path}: the tokenizer has ids up to {tokenizer.VocabularySize - 1} but the model's vocab_size is {config.VocabSize}.");
        var (compute, reason) = OpenBackend(path, config, backend, swiftKv);
        return new LocalModel { Path = path, Config = config, Tokenizer = tokenizer, Backend = compute, BackendReason = reason };
    }

    /// <summary>Loads only the weights onto a backend (no tokenizer needed), e.g. for logits dumps.</summary>
    public static (IModelBackend Backend, string Reason) OpenBackend(string path, LlamaConfig config, BackendKind backend, bool swiftKv)
    {
        bool useCuda;
        string reason;
        switch (backend)
        {
            case BackendKind.Cuda:
                if (!CudaRuntime.TryInitialize(out var why))
                    throw new NotSupportedException("Backend = Cuda was requested but CUDA is not usable: " + why);
                (useCuda, reason) = (true, $"CUDA requested: {CudaRuntime.Device}");
                break;
            case BackendKind.Auto:
                useCuda = CudaRuntime.TryInitialize(out var missing);
                reason = useCuda ? $"Auto: CUDA on {CudaRuntime.Device}" : $"Auto: CPU ({missing})";
                break;
            default:
                (useCuda, reason) = (false, "CPU requested");
                break;
        }
        var weights = LlamaCheckpointLoader.Load(path, swiftKv && config.SwiftKv);
        return (useCuda ? new CudaBackend(weights) : new CpuBackend(weights), reason);
    }

    public void Dispose() => Backend.Dispose();
}
