// generate: one prompt (raw text or a chat turn) through the engine, streaming text to stdout.
using System.Diagnostics;
using SwiftKV.Engine;
using SwiftKV.Engine.Generation;
using SwiftKV.Engine.Sampling;
using SwiftKV.Model.Checkpoint;
using SwiftKV.Model.Tokenization;

namespace SwiftKV.Cli;

internal static class GenerateCommand
{
    const int DefaultMaxTokens = 64;

    public static int Run(CliArgs a)
    {
        string dir = a.Required("model");
        string? prompt = a.String("prompt"), chat = a.String("chat"), system = a.String("system");
        if ((prompt is null) == (chat is null))
            throw new UsageException("give exactly one of --prompt TEXT or --chat TEXT" + (prompt is null ? a.NearMisses("prompt", "chat") : ""));
        if (system is not null && chat is null) throw new UsageException("--system goes with --chat (a raw --prompt has no system turn)");
        int? maxTokensArg = a.Int("max-tokens");
        int maxTokens = maxTokensArg ?? DefaultMaxTokens;
        if (maxTokens <= 0) throw new UsageException($"--max-tokens must be > 0 (got {maxTokens})");
        float? temperature = a.Float("temperature"), topP = a.Float("top-p");
        int? topK = a.Int("top-k");
        ulong? seed = a.ULong("seed");
        SamplingParams sampling;
        try
        {
            sampling = new SamplingParams
            {
                // As in the chat client: --top-k / --top-p without --temperature sample at temperature 1.
                Temperature = SamplingParams.DefaultTemperature(temperature, topP, topK),
                TopK = topK ?? 0,
                TopP = topP ?? 1f,
                Seed = seed,
            };
        }
        catch (ArgumentOutOfRangeException e)
        {
            // The engine's message names its property (TopP); the user typed the option.
            string option = e.ParamName switch { "Temperature" => "--temperature", "TopK" => "--top-k", "TopP" => "--top-p", var p => p ?? "?" };
            throw new UsageException($"{option}: {SwiftKV.Model.ErrorText.ForConsole(e)}");
        }
        bool swiftKv = !a.Flag("no-swiftkv");
        bool showSpecial = a.Flag("show-special");
        var backend = LogitsCommand.ParseBackend(a.String("backend"));
        var fp8 = LogitsCommand.ParseFp8Weights(a.String("fp8-weights"));
        a.RejectUnknown();
        CliArgs.CheckModelDirectory(dir);

        // Generation runs on the backend directly (one sequence, its own cache): no serving engine, no KV pool.
        using var model = LocalModel.Load(dir, backend, swiftKv, startServing: false, fp8Weights: fp8);
        var tok = model.Tokenizer;
        IReadOnlyList<int> ids;
        if (chat is not null)
        {
            var turns = new List<ChatTurn>();
            if (system is not null) turns.Add(new ChatTurn("system", system));
            turns.Add(new ChatTurn("user", chat));
            ids = Llama31ChatFormat.Encode(tok, turns, addGenerationPrompt: true, template: model.ChatTemplate);
            if (CheckpointChatTemplate.Mismatch(dir) is { } warning) Console.Error.WriteLine("note: " + warning);
        }
        else
        {
            ids = tok.BosTokenId is int bos ? [bos, .. tok.Encode(prompt!)] : tok.Encode(prompt!);
        }
        int context = model.Config.MaxPositionEmbeddings;
        if (ids.Count >= context)
            throw new ArgumentException($"the prompt of {ids.Count} tokens does not fit the context of {context} tokens (max_position_embeddings).");
        // The default answer length gives way to a short context; a typed --max-tokens is refused instead, since the
        // user asked for that many.
        if (maxTokensArg is null && ids.Count + maxTokens > context)
        {
            maxTokens = context - ids.Count;
            Console.Error.WriteLine($"note: --max-tokens defaults to {DefaultMaxTokens}; the context of {context} tokens leaves {maxTokens} after the prompt of {ids.Count}.");
        }
        if ((long)ids.Count + maxTokens > context)
            throw new UsageException($"--max-tokens {maxTokens} after a prompt of {ids.Count} tokens exceeds the context of {context} tokens (max_position_embeddings): at most {context - ids.Count}.");
        var stats = new GenerationStats();
        int compiledBefore = SwiftKV.Cuda.NvrtcCompiler.CompileCount;
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
            // One token comes out of the prefill: no decode step ran, so there is no decode rate to give.
            + $"{(stats.OutputTokens <= 1 ? $"{stats.OutputTokens} token{(stats.OutputTokens == 1 ? "" : "s")} (from the prefill, no decode step)" : $"{stats.OutputTokens} tokens at {stats.DecodeTokensPerSecond:F1} tokens/s")}; finish {stats.FinishReason}");
        Console.Error.WriteLine($"backend: {model.BackendReason}");
        if (model.UnreadTensors.Count > 0)
            Console.Error.WriteLine("note: " + LlamaCheckpointLoader.UnreadNote(model.UnreadTensors));   // why this backend (Auto's fallback, an Fp8Weights choice that does not apply)
        // On a GPU's first run the kernels compile when first used, inside the prefill's time: say so, or the figure
        // above reads as the model's speed.
        int compiled = SwiftKV.Cuda.NvrtcCompiler.CompileCount - compiledBefore;
        if (compiled > 0)
            Console.Error.WriteLine($"note: that includes compiling {compiled} GPU kernel file{(compiled == 1 ? "" : "s")} (first run on this GPU; " +
                $"cached in {SwiftKV.Cuda.NvrtcCompiler.CacheDirectory}, so later runs skip it).");
        return 0;
    }
}
