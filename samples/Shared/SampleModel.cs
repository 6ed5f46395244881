// Which checkpoint a sample runs: the one named by --model, else the demo checkpoint (made once in the cache).
namespace SwiftKV.Samples;

using SwiftKV.Model.Checkpoint;

/// <summary>Resolves the checkpoint a sample runs and says what to expect of it.</summary>
public static class SampleModel
{
    /// <summary>Printed when the demo model runs: its weights are random.</summary>
    public const string GibberishNote =
        "note: the demo model has random weights, so its text is gibberish by design; the point is the pipeline and the\n"
        + "prefill numbers. Pass --model DIR with a Hugging Face Llama 3.x or SwiftKV checkpoint (for example\n"
        + "Snowflake/Llama-3.1-SwiftKV-8B-Instruct) for real answers.";

    /// <summary><paramref name="modelPath"/> when given (it must exist), else the demo checkpoint.</summary>
    public static (string Path, bool IsDemo) Resolve(string? modelPath, TextWriter log)
    {
        ArgumentNullException.ThrowIfNull(log);
        if (modelPath is null) return (DemoModel.Ensure(log: log.WriteLine), true);
        if (!Directory.Exists(modelPath))
            throw new ArgumentException($"--model '{modelPath}' is not a directory (expected a Hugging Face checkpoint: config.json, *.safetensors, tokenizer)");
        // Headers and shapes (no weights read) and the tokenizer: a wrong folder fails now, before the sample ingests or
        // embeds anything (RAG spent its whole ingest before finding no tokenizer).
        LlamaCheckpointLoader.Verify(modelPath);
        SwiftKV.Model.Tokenization.LlamaTokenizer.Load(modelPath);
        return (modelPath, false);
    }
}
