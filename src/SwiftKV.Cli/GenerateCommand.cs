// generate: one prompt (raw text or a chat turn) through the engine, streaming text to stdout.
using System.Diagnostics;
using SwiftKV.Engine;
using SwiftKV.Engine.Generation;
using SwiftKV.Engine.Sampling;
using SwiftKV.Model.Tokenization;

namespace SwiftKV.Cli;

internal static class GenerateCommand
{
    public static int Run(CliArgs a)
    {
        string dir = a.Required("model");
        string? prompt = a.String("prompt"), chat = a.String("chat"), system = a.String("system");
        if ((prompt is null) == (chat is null)) throw new UsageException("give exactly one of --prompt TEXT or --chat TEXT");
        if (system is not null && chat is null) throw new UsageException("--system goes with --chat (a raw --prompt has no system turn)");
        int maxTokens = a.Int("max-tokens") ?? 64;
        if (maxTokens <= 0) throw new UsageException($"--max-tokens must be > 0 (got {maxTokens})");
        var sampling = new SamplingParams
        {
            Temperature = a.Float("temperature") ?? 0f,
            TopK = a.Int("top-k") ?? 0,
            TopP = a.Float("top-p") ?? 1f,
            Seed = a.ULong("seed"),
        };
        bool swiftKv = !a.Flag("no-swiftkv");
        bool showSpecial = a.Flag("show-special");
        var backend = LogitsCommand.ParseBackend(a.String("backend"));
        a.RejectUnknown();

        // Generation runs on the backend directly (one sequence, its own cache): no serving engine, no KV pool.
        using var model = LocalModel.Load(dir, backend, swiftKv, startServing: false);
        var tok = model.Tokenizer;
        IReadOnlyList<int> ids;
        if (chat is not null)
        {
            var turns = new List<ChatTurn>();
            if (system is not null) turns.Add(new ChatTurn("system", system));
            turns.Add(new ChatTurn("user", chat));
            ids = Llama31ChatFormat.Encode(tok, turns, addGenerationPrompt: true);
        }
        else
        {
            ids = tok.BosTokenId is int bos ? [bos, .. tok.Encode(prompt!)] : tok.Encode(prompt!);
        }
        int context = model.Config.MaxPositionEmbeddings;
        if (ids.Count >= context)
            throw new ArgumentException($"the prompt of {ids.Count} tokens does not fit the context of {context} tokens (max_position_embeddings).");
        if ((long)ids.Count + maxTokens > context)
            throw new UsageException($"--max-tokens {maxTokens} after a prompt of {ids.Count} tokens exceeds the context of {context} tokens (max_position_embeddings): at most {context - ids.Count}.");
        var stats = new GenerationStats();
        using var cache = model.Backend.CreateCache(ids.Count + maxTokens);
        var detok = new StreamingDetokenizer(tok);
        // Special tokens are markup, not text: skipped as the chat client (and Hugging Face's decode) skip them, unless
        // asked for when looking at what a model emits.
        HashSet<int> hidden = showSpecial ? [] : [.. tok.SpecialTokens.Values];
        foreach (int id in Generator.Generate(model.Backend, cache, ids, sampling, maxTokens, tok.StopTokenIds.ToHashSet(), stats))
            if (!hidden.Contains(id)) Console.Write(detok.Append(id));
        Console.WriteLine(detok.Flush());
        Console.Error.WriteLine(
            $"[{model.Backend.Name}, SwiftKV {(model.Backend.SwiftKvEnabled ? "on" : "off")}] prompt {stats.PromptTokens} tokens, prefill {stats.PrefillTime.TotalMilliseconds:F0} ms; "
            + $"{stats.OutputTokens} tokens at {stats.DecodeTokensPerSecond:F1} tokens/s; finish {stats.FinishReason}");
        return 0;
    }
}
