// logits: dump the logits of given token ids as raw little-endian float32 (rows, vocab_size), for parity
// checks against other implementations (tests/reference/ compares them with PyTorch).
using SwiftKV.Engine;

namespace SwiftKV.Cli;

internal static class LogitsCommand
{
    public static int Run(CliArgs a)
    {
        string dir = a.Required("model"), outFile = a.Required("out");
        int[] tokens = ParseTokens(a.Required("tokens"));
        var backend = ParseBackend(a.String("backend"));
        bool swiftKv = !a.Flag("no-swiftkv");
        var selection = a.Flag("last-only") ? LogitsSelection.LastToken : LogitsSelection.AllTokens;
        a.RejectUnknown();

        var config = SwiftKV.Model.LlamaConfig.Load(dir);
        var (compute, _) = LocalModel.OpenBackend(dir, config, backend, swiftKv);
        using var model = compute;
        using var cache = model.CreateCache(tokens.Length);
        float[] logits = model.Forward(cache, tokens, selection);
        using (var f = File.Create(outFile))
            f.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(logits.AsSpan()));
        int rows = logits.Length / config.VocabSize;
        Console.WriteLine($"wrote {outFile}: {rows} x {config.VocabSize} float32 ({model.Name}, SwiftKV {(model.SwiftKvEnabled ? "on" : "off")})");
        return 0;
    }

    static int[] ParseTokens(string s)
    {
        try
        {
            var ids = s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(int.Parse).ToArray();
            return ids.Length > 0 ? ids : throw new UsageException("--tokens is empty");
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            throw new UsageException($"--tokens must be comma-separated 32-bit integers (got '{s}')");
        }
    }

    internal static BackendKind ParseBackend(string? s) => s?.ToLowerInvariant() switch
    {
        null or "auto" => BackendKind.Auto,
        "cpu" => BackendKind.Cpu,
        "cuda" => BackendKind.Cuda,
        _ => throw new UsageException($"--backend must be auto, cpu or cuda (got '{s}')"),
    };
}
