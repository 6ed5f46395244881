// One small random-weight SwiftKV checkpoint with the demo tokenizer, made once per test run and shared by every
// sample test (the samples take it through --model, exactly as a user passes a real checkpoint); deleted at the end.
using SwiftKV.Model.Checkpoint;
using SwiftKV.Model.Tokenization;
using Xunit;

[assembly: AssemblyFixture(typeof(SwiftKV.Samples.Tests.TinySampleModel))]

namespace SwiftKV.Samples.Tests;

public sealed class TinySampleModel : IDisposable
{
    public string Directory { get; }

    public TinySampleModel()
    {
        Directory = Path.Combine(Path.GetTempPath(), "swiftkv-samples-tests-" + Guid.NewGuid().ToString("N"));
        var config = ModelPresets.Get("tiny") with { SwiftKv = true, ModelType = "llama_swiftkv", NumKeyValueLayers = 2, KeyValueGroupSize = 2 };
        ModelMaker.Write(Directory, config.Validate(), new ModelMakerOptions { Seed = 11, InitStd = 0.1f });
        LlamaTokenizer.CreateDemo().Save(Directory);
    }

    /// <summary>
    /// Another tiny checkpoint under the model's folder (removed with it): the plain Llama "tiny" preset with
    /// <paramref name="maxPositions"/> positions, for the cases the shared SwiftKV model cannot show (a short context, no
    /// SwiftKV layers).
    /// </summary>
    public string Plain(string name, int? maxPositions = null)
    {
        string dir = TempFile(name);
        var config = ModelPresets.Get("tiny");
        if (maxPositions is int n) config = config with { MaxPositionEmbeddings = n };
        ModelMaker.Write(dir, config.Validate(), new ModelMakerOptions { Seed = 3 });
        LlamaTokenizer.CreateDemo().Save(dir);
        return dir;
    }

    /// <summary>A fresh temporary file path under the model's folder (removed with it).</summary>
    public string TempFile(string name) => Path.Combine(Directory, Guid.NewGuid().ToString("N") + "-" + name);

    public void Dispose()
    {
        try { System.IO.Directory.Delete(Directory, recursive: true); } catch (IOException) { }
    }
}
