// A checkpoint loaded for inference: config, tokenizer, a compute backend chosen by BackendKind (Auto: CUDA when
// usable, else the CPU, with the reason), and the serving engine every client of the model feeds.
using SwiftKV.Model;
using SwiftKV.Model.Tokenization;
using SwiftKV.Model.Checkpoint;
using SwiftKV.Cuda;
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Cuda;
using SwiftKV.Engine.Serving;

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
    /// <summary>
    /// Why the backend is the one it is, and what of the asked set-up does not apply there: logged by the
    /// IChatClient registration when logging is registered, printed by the CLI's demo, generate and logits.
    /// </summary>
    public required string BackendReason { get; init; }

    /// <summary>
    /// Tensors in the checkpoint that its config.json gives no place, so they are not read
    /// (<see cref="LlamaCheckpointLoader.UnusedTensors"/>): often a config that does not match how the checkpoint was
    /// saved. Logged as a warning by the IChatClient registration, printed by the CLI's generate.
    /// </summary>
    public IReadOnlyList<string> UnreadTensors { get; init; } = [];

    /// <summary>Which Llama 3 chat template the checkpoint's own template is (<see cref="CheckpointChatTemplate.Kind"/>): chats are written in it.</summary>
    public LlamaChatTemplate ChatTemplate { get; init; }

    /// <summary>
    /// The continuous-batching engine every client of this model feeds (null when the backend has no batched step).
    /// </summary>
    public ServingEngine? Serving { get; init; }

    /// <summary>
    /// Serialises forward passes for backends without a batched step (<see cref="Serving"/> is null).
    /// </summary>
    public SemaphoreSlim ExecutionGate { get; } = new(1, 1);

    /// <summary>Cancelled when <see cref="Dispose"/> starts: work on the one-at-a-time path stops at its next pass
    /// boundary, and waits for the gate end.</summary>
    public CancellationToken Stopping => _stopping.Token;

    readonly CancellationTokenSource _stopping = new();
    int _disposed;

    /// <summary>True once <see cref="Dispose"/> ran (its engine stopped, its weights freed).</summary>
    public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>
    /// Loads a checkpoint directory. <paramref name="swiftKv"/> is honoured only when the checkpoint has SwiftKV.
    /// With <paramref name="startServing"/> false no serving engine starts (<see cref="Serving"/> is null), for callers
    /// that run the backend directly: an engine whose options leave the KV budget open takes most of a GPU's memory.
    /// <paramref name="fp8Weights"/> says how the CUDA backend holds an FP8 checkpoint's e4m3 weights. The CPU backend
    /// holds them in fp32 either way; under <see cref="Fp8Weights.KeepW8A8"/> it quantizes their inputs per token too.
    /// </summary>
    public static LocalModel Load(string path, BackendKind backend = BackendKind.Auto, bool swiftKv = true, ServingOptions? serving = null,
        bool startServing = true, Fp8Weights fp8Weights = Fp8Weights.Auto)
    {
        var config = LlamaConfig.Load(path);
        var tokenizer = LlamaTokenizer.Load(path).ForModel(config, path);
        var (compute, reason) = OpenBackend(path, config, backend, swiftKv, fp8Weights);
        try
        {
            return new LocalModel
            {
                Path = path, Config = config, Tokenizer = tokenizer, Backend = compute, BackendReason = reason,
                UnreadTensors = LlamaCheckpointLoader.UnusedTensors(path),
                ChatTemplate = CheckpointChatTemplate.Kind(path),
                Serving = startServing && compute is IBatchedBackend { SupportsBatchedStep: true } ? new ServingEngine(compute, serving) : null,
            };
        }
        catch
        {
            // Invalid serving options or a KV pool that does not fit: free the weights now (GPU memory), not at finalization.
            compute.Dispose();
            throw;
        }
    }

    /// <summary>Loads only the weights onto a backend (no tokenizer needed), e.g. for logits dumps.</summary>
    public static (IModelBackend Backend, string Reason) OpenBackend(string path, LlamaConfig config, BackendKind backend, bool swiftKv,
        Fp8Weights fp8Weights = Fp8Weights.Auto)
    {
        if (!Enum.IsDefined(fp8Weights)) throw new ArgumentOutOfRangeException(nameof(fp8Weights), fp8Weights, "Fp8Weights is Auto, Dequantize, Keep or KeepW8A8.");
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
        bool swift = swiftKv && config.SwiftKv;
        // CUDA streams the checkpoint straight to the GPU: no fp32 copy of the model on the host.
        if (useCuda)
        {
            try
            {
                var cuda = CudaBackend.Load(path, swift, fp8Weights);
                if (cuda.E4m3WeightMatrices > 0) reason += $"; {cuda.E4m3WeightMatrices} FP8 weight matrices kept as e4m3 ({cuda.WeightBytes / 1e9:F1} GB of weights)";
                return (cuda, reason);
            }
            catch (CudaException e) when (backend == BackendKind.Auto)
            {
                // The driver answered but the GPU cannot run this model (a driver too old for this NVRTC or cuBLAS, an
                // architecture NVRTC does not target, weights larger than the GPU): Auto's promise is the CPU then.
                reason = $"Auto: CPU (CUDA found but the model did not start there: {e.Message})";
            }
        }
        // The headers first (no weights read): a config that disagrees with its weights is that problem, not a memory one.
        LlamaCheckpointLoader.Verify(path, swift);
        RefuseCpuWeightsPastMemory(path, config, swift, reason);
        var cpu = new CpuBackend(LlamaCheckpointLoader.Load(path, swift));
        // What of an Fp8Weights choice holds on the CPU, said here so that it does not pass unnoticed: weights kept as
        // e4m3 are a CUDA route; W8A8's quantized activations the CPU computes too.
        if (cpu.Float8Weights > 0 && fp8Weights == Fp8Weights.Keep)
            reason += "; Fp8Weights.Keep applies to the CUDA backend only: the CPU backend dequantizes the e4m3 weights to fp32";
        if (cpu.Float8Weights > 0 && fp8Weights == Fp8Weights.KeepW8A8)
        {
            cpu.UseW8A8 = true;
            reason += "; Fp8Weights.KeepW8A8 on the CPU backend: the e4m3 weights dequantized to fp32, and the inputs of their Linears quantized to e4m3 per token at every step";
        }
        return (cpu, reason);
    }

    /// <summary>
    /// The CPU backend keeps every weight in fp32 (twice a bf16 checkpoint's size). Linux overcommits, so a model larger
    /// than the memory this process may use is not an OutOfMemoryException but a process the kernel kills part-way
    /// through the load, with no message: refuse it before reading a byte.
    /// </summary>
    static void RefuseCpuWeightsPastMemory(string path, LlamaConfig config, bool swiftKv, string reason)
    {
        long bytes = ShapeManifest.ParameterCount(config, swiftKv) * sizeof(float);
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (bytes > available)
            throw new NotSupportedException(
                $"{path}: the CPU backend holds the weights in fp32, {bytes / 1e9:F1} GB for this model, more than the {available / 1e9:F1} GB " +
                $"this process may use. Run it on a CUDA GPU, or use a smaller model. (Backend choice: {reason})");
    }

    public void Dispose()
    {
        // The engine stops its loop and fails in-flight requests before the weights go away. Without an engine, the
        // pass in flight (a cancelled call no longer waits for it) ends first: the gate is taken and kept, so
        // nothing runs on the freed backend. A second, concurrent call returns only once the first is done.
        lock (_stopping)
        {
            if (_disposed != 0) return;
            try
            {
                _stopping.Cancel();
                if (Serving is null) ExecutionGate.Wait();
                // From the engine's own thread (a step observer or constraint disposing the model), the engine's Dispose
                // returns before the step in flight ends: the weights go once its loop has stopped, not under it.
                bool fromLoop = Serving?.IsLoopThread == true;
                Serving?.Dispose();
                if (fromLoop) Serving!.Stopped.ContinueWith(_ => Backend.Dispose(), CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
                else Backend.Dispose();
            }
            finally
            {
                Volatile.Write(ref _disposed, 1);
            }
        }
    }
}
