// logits: dump the logits of given token ids as raw little-endian float32 (rows, vocab_size), for parity
// checks against other implementations (tests/reference/ compares them with PyTorch).
using SwiftKV.Engine;

namespace SwiftKV.Cli;

internal static class LogitsCommand
{
    public static int Run(CliArgs a)
    {
        string dir = a.Required("model"), outFile = CliArgs.CheckOutputFile("out", a.Required("out"));
        int[] tokens = ParseTokens(a.Required("tokens"));
        var backend = ParseBackend(a.String("backend"));
        bool swiftKv = !a.Flag("no-swiftkv");
        var selection = a.Flag("last-only") ? LogitsSelection.LastToken : LogitsSelection.AllTokens;
        var fp8 = ParseFp8Weights(a.String("fp8-weights"));
        a.RejectUnknown();
        CliArgs.CheckModelDirectory(dir);

        var config = SwiftKV.Model.LlamaConfig.Load(dir);
        // Checked here, in the words generate uses, rather than as the cache's capacity error.
        if (tokens.Length > config.MaxPositionEmbeddings)
            throw new UsageException($"--tokens: {tokens.Length} tokens do not fit the context of {config.MaxPositionEmbeddings} tokens (max_position_embeddings).");
        var (compute, reason) = LocalModel.OpenBackend(dir, config, backend, swiftKv, fp8);
        using var model = compute;
        using var cache = model.CreateCache(tokens.Length);
        float[] logits = model.Forward(cache, tokens, selection);
        using (var f = File.Create(outFile))
            f.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(logits.AsSpan()));
        int rows = logits.Length / config.VocabSize;
        Console.WriteLine($"wrote {outFile}: {rows} x {config.VocabSize} float32 ({model.Name}, SwiftKV {(model.SwiftKvEnabled ? "on" : "off")})");
        Console.Error.WriteLine($"backend: {reason}");   // which numerics these are: Auto's choice, what of --fp8-weights applied
        // Written all the same (they are what the model computed, for comparing), but not passed off as a good run.
        int bad = logits.Count(x => !float.IsFinite(x));
        if (bad == 0) return 0;
        int first = Array.FindIndex(logits, x => !float.IsFinite(x));
        Console.Error.WriteLine($"swiftkv logits: {bad} of {logits.Length} logits are NaN or infinite (the first: row {first / config.VocabSize}, " +
                                $"token id {first % config.VocabSize}): the checkpoint's weights may hold NaN or Inf values, or the computation overflowed.");
        return 1;
    }

    internal static int[] ParseTokens(string s)
    {
        var parts = s.Split(',', StringSplitOptions.TrimEntries);
        var ids = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            // Every entry counts: "1,,2" is a typo to report, not the two tokens 1 and 2.
            if (!int.TryParse(parts[i], System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out ids[i]))
                throw new UsageException(parts[i].Length == 0
                    ? $"--tokens: entry {i + 1} of '{s}' is empty"
                    : $"--tokens must be comma-separated 32-bit integers; entry {i + 1} is '{parts[i]}'");
        }
        return ids;
    }

    internal static SwiftKV.Engine.Cuda.Fp8Weights ParseFp8Weights(string? s) => s?.ToLowerInvariant() switch
    {
        null or "auto" => SwiftKV.Engine.Cuda.Fp8Weights.Auto,
        "dequantize" => SwiftKV.Engine.Cuda.Fp8Weights.Dequantize,
        "keep" => SwiftKV.Engine.Cuda.Fp8Weights.Keep,
        "keep-w8a8" => SwiftKV.Engine.Cuda.Fp8Weights.KeepW8A8,
        _ => throw new UsageException($"--fp8-weights must be auto, dequantize, keep or keep-w8a8 (got '{s}')"),
    };

    internal static BackendKind ParseBackend(string? s) => s?.ToLowerInvariant() switch
    {
        null or "auto" => BackendKind.Auto,
        "cpu" => BackendKind.Cpu,
        "cuda" => BackendKind.Cuda,
        _ => throw new UsageException($"--backend must be auto, cpu or cuda (got '{s}')"),
    };
}
