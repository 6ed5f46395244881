// The IChatClient conformance suite on the CUDA backend, over a tiny random-weight SwiftKV checkpoint made once per
// run. Every test skips cleanly when this machine has no usable GPU (CI); on the GPU machine they all run.
using Microsoft.Extensions.AI;
using SwiftKV.AI.Conformance;
using SwiftKV.Cuda;
using SwiftKV.Engine;
using SwiftKV.Model.Checkpoint;
using SwiftKV.Model.Tokenization;
using Xunit;

[assembly: AssemblyFixture(typeof(SwiftKV.AI.Cuda.Tests.TinyCudaModel))]
[assembly: CollectionBehavior(DisableTestParallelization = true)] // one GPU

namespace SwiftKV.AI.Cuda.Tests;

public sealed class TinyCudaModel : IDisposable
{
    readonly Lazy<LocalModel> _model;

    public string Directory { get; } = Path.Combine(Path.GetTempPath(), "swiftkv-cuda-conformance-" + Guid.NewGuid().ToString("N"));

    public TinyCudaModel()
    {
        _model = new Lazy<LocalModel>(() =>
        {
            var config = ModelPresets.Get("tiny") with { SwiftKv = true, ModelType = "llama_swiftkv", NumKeyValueLayers = 2, KeyValueGroupSize = 2 };
            ModelMaker.Write(Directory, config.Validate(), new ModelMakerOptions { Seed = 7, Dtype = TensorDtype.BF16, InitStd = 0.1f });
            LlamaTokenizer.CreateDemo().Save(Directory);
            return LocalModel.Load(Directory, BackendKind.Cuda, swiftKv: true);
        });
    }

    /// <summary>The model on the GPU; skips the calling test when CUDA is not usable here.</summary>
    public LocalModel Model
    {
        get
        {
            Assert.SkipUnless(CudaRuntime.TryInitialize(out var reason), "no usable CUDA: " + reason);
            return _model.Value;
        }
    }

    public void Dispose()
    {
        if (_model.IsValueCreated) _model.Value.Dispose();
        if (System.IO.Directory.Exists(Directory)) System.IO.Directory.Delete(Directory, recursive: true);
    }
}

public sealed class CudaConformanceTests(TinyCudaModel tiny) : ChatClientConformanceTests
{
    protected override IChatClient CreateClient()
    {
        var model = tiny.Model;
        Assert.StartsWith("cuda", model.Backend.Name);
        return new SwiftKvChatClient(model, new SwiftKvOptions { ModelPath = tiny.Directory, ContextLength = 2048, DefaultMaxOutputTokens = 16 },
            ownsModel: false, today: () => new DateOnly(2026, 11, 26));
    }
}
