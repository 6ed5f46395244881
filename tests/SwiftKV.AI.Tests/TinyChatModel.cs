// One small random-weight SwiftKV checkpoint (with the demo tokenizer) made once per test run and shared by
// every chat-client test; it is deleted when the run ends.
using Xunit;
using SwiftKV.AI;
using SwiftKV.Engine;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;
using SwiftKV.Model.Tokenization;

[assembly: AssemblyFixture(typeof(SwiftKV.AI.Tests.TinyChatModel))]

namespace SwiftKV.AI.Tests;

public sealed class TinyChatModel : IDisposable
{
    public string Directory { get; }
    public LocalModel Model { get; }

    public TinyChatModel()
    {
        Directory = Path.Combine(Path.GetTempPath(), "swiftkv-ai-tests-" + Guid.NewGuid().ToString("N"));
        var config = ModelPresets.Get("tiny") with
        {
            SwiftKv = true, ModelType = "llama_swiftkv", NumKeyValueLayers = 2, KeyValueGroupSize = 2,
        };
        ModelMaker.Write(Directory, config.Validate(), new ModelMakerOptions { Seed = 7, Dtype = TensorDtype.BF16, InitStd = 0.1f });
        LlamaTokenizer.CreateDemo().Save(Directory);
        Model = LocalModel.Load(Directory, BackendKind.Cpu, swiftKv: true);
    }

    public SwiftKvChatClient Client(int contextLength = 2048) =>
        new(Model, new SwiftKvOptions { ModelPath = Directory, ContextLength = contextLength, DefaultMaxOutputTokens = 16 }, ownsModel: false,
            today: () => new DateOnly(2026, 11, 26));

    public void Dispose()
    {
        Model.Dispose();
        try { System.IO.Directory.Delete(Directory, recursive: true); } catch (IOException) { }
    }
}
