// make-model, transform and info: the commands that write or describe checkpoints.
using System.Diagnostics;
using SwiftKV.Engine;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;
using SwiftKV.Model.Tokenization;

namespace SwiftKV.Cli;

internal static class ModelCommands
{
    public static int MakeModel(CliArgs a)
    {
        string outDir = a.Required("out");
        var config = ConfigFromArgs(a);
        var options = new ModelMakerOptions
        {
            Seed = a.ULong("seed") ?? 0,
            Dtype = ParseDtype(a.String("dtype") ?? "bf16"),
            InitStd = a.Float("init-std") ?? 0.02f,
        };
        bool tokenizer = !a.Flag("no-tokenizer");
        bool force = a.Flag("force");
        a.RejectUnknown();
        // The options' own check, in the words of the option typed.
        try { options.Validate(); }
        catch (ArgumentException e) { throw new UsageException(e.Message.Replace("ModelMakerOptions.InitStd", "--init-std", StringComparison.Ordinal)); }
        RefuseExistingCheckpoint(outDir, force);
        var sw = Stopwatch.StartNew();
        bool existed = Directory.Exists(outDir);
        using var interrupt = new Interrupt();
        try
        {
            MakeModelDirectory(outDir, config, options, tokenizer, interrupt.Token);
        }
        catch (OperationCanceledException e) when (interrupt.Caused(e))
        {
            Interrupt.RemoveIfLeftEmpty(outDir, existed);
            return Interrupt.Report("make-model", outDir);
        }
        Console.WriteLine($"wrote {outDir}: {Describe(config)}, {options.Dtype}, seed {options.Seed} in {sw.Elapsed.TotalSeconds:F1} s");
        return 0;
    }



    /// <summary>Writes weights, config and (unless told not to) the demo tokenizer.</summary>
    public static void MakeModelDirectory(string outDir, LlamaConfig config, ModelMakerOptions options, bool tokenizer,
        CancellationToken cancellationToken = default)
    {
        // Checked before anything is written, so a refused option or vocabulary leaves no half-made checkpoint (or
        // empty folder) behind.
        options.Validate();
        var tok = tokenizer ? LlamaTokenizer.CreateDemo() : null;
        if (tok is not null && tok.VocabularySize > config.VocabSize)
            throw new ArgumentException($"the demo tokenizer needs vocab_size >= {tok.VocabularySize} (got {config.VocabSize}); pass --no-tokenizer for smaller vocabularies.");
        CreateOutDirectory(outDir);
        ModelMaker.Write(outDir, config, options, companions: staging => tok?.Save(staging), cancellationToken: cancellationToken);
    }

    /// <summary>Creates --out, naming the option and the path when that is not possible (a read-only or virtual file
    /// system reports it as a missing file, which reads like the wrong problem).</summary>
    internal static void CreateOutDirectory(string outDir)
    {
        try { Directory.CreateDirectory(outDir); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UsageException($"--out {outDir}: cannot create that directory ({e.Message}).");
        }
    }

    /// <summary>Whether two paths name one directory: links resolved, case ignored where the file system ignores it.</summary>
    internal static bool SameDirectory(string a, string b)
    {
        static string Resolve(string p)
        {
            var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(p));
            var info = new DirectoryInfo(full);
            return info.Exists && info.ResolveLinkTarget(returnFinalTarget: true) is { } target ? Path.TrimEndingDirectorySeparator(target.FullName) : full;
        }
        var comparison = OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
        if (string.Equals(Resolve(a), Resolve(b), comparison)) return true;
        // A link above the directory (or a bind mount): the same config.json file seen from both sides.
        string ca = Path.Combine(a, "config.json"), cb = Path.Combine(b, "config.json");
        if (!File.Exists(ca) || !File.Exists(cb)) return false;
        string probe = Path.Combine(a, ".swiftkv-same-dir-" + Guid.NewGuid().ToString("N"));
        try
        {
            File.WriteAllText(probe, "");
            return File.Exists(Path.Combine(b, Path.GetFileName(probe)));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;   // cannot write into --model: then transform cannot overwrite it either
        }
        finally
        {
            try { File.Delete(probe); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>
    /// Writing a checkpoint replaces the weights files in its folder, so an --out that already holds one (a downloaded
    /// model, the demo's cache) is refused unless --force says to replace it.
    /// </summary>
    internal static void RefuseExistingCheckpoint(string outDir, bool force)
    {
        if (File.Exists(outDir)) throw new UsageException($"--out {outDir} is a file; give a directory.");
        if (force || !Directory.Exists(outDir)) return;
        var found = Directory.EnumerateFiles(outDir, "*.safetensors").Concat(Directory.EnumerateFiles(outDir, "*.safetensors.index.json"))
            .Concat(Directory.EnumerateFiles(outDir, "config.json")).Select(Path.GetFileName).Take(3).ToList();
        if (found.Count > 0)
            throw new UsageException($"--out {outDir} already holds a checkpoint ({string.Join(", ", found)}); writing would replace its weights. Give another directory, or pass --force to replace it.");
    }

    /// <summary>A preset with the command line's overrides applied, validated.</summary>
    internal static LlamaConfig ConfigFromArgs(CliArgs a)
    {
        var c = ModelPresets.Get(a.String("preset") ?? "tiny");
        c = c with
        {
            VocabSize = a.Int("vocab-size") ?? c.VocabSize,
            NumHiddenLayers = a.Int("layers") ?? c.NumHiddenLayers,
            HiddenSize = a.Int("hidden") ?? c.HiddenSize,
            NumAttentionHeads = a.Int("heads") ?? c.NumAttentionHeads,
            NumKeyValueHeads = a.Int("kv-heads") ?? c.NumKeyValueHeads,
            HeadDim = a.Int("head-dim") ?? c.HeadDim,
            IntermediateSize = a.Int("ffn") ?? c.IntermediateSize,
            MaxPositionEmbeddings = a.Int("max-positions") ?? c.MaxPositionEmbeddings,
        };
        bool tie = a.Flag("tie"), untie = a.Flag("untie");
        if (tie && untie) throw new UsageException("--tie and --untie contradict each other; give one");
        if (tie) c = c with { TieWordEmbeddings = true };
        if (untie) c = c with { TieWordEmbeddings = false };
        if (a.Flag("attention-bias")) c = c with { AttentionBias = true };
        bool noRopeScaling = a.Flag("no-rope-scaling");
        if (noRopeScaling) c = c with { RopeScaling = null };
        if (a.Int("rope-original-max") is int orig)
        {
            if (noRopeScaling) throw new UsageException("--rope-original-max sets a field of the llama3 rope scaling that --no-rope-scaling removes; give one");
            var rs = c.RopeScaling ?? new Llama3RopeScaling(8, 1, 4, orig);
            c = c with { RopeScaling = rs with { OriginalMaxPositionEmbeddings = orig } };
        }
        if (a.Int("swiftkv-layers") is int l)
            c = c with { SwiftKv = true, ModelType = "llama_swiftkv", NumKeyValueLayers = l, KeyValueGroupSize = a.Int("group-size") ?? 1 };
        else if (a.Int("group-size") is not null)
            throw new UsageException("--group-size needs --swiftkv-layers");
        return Renamed(c.Validate);
    }

    // The config.json fields the options set: a refused value is named by the option the user typed.
    static readonly (string Field, string Option)[] s_fieldOptions =
    [
        ("num_hidden_layers", "--layers"), ("hidden_size", "--hidden"), ("num_attention_heads", "--heads"), ("num_key_value_heads", "--kv-heads"),
        ("head_dim", "--head-dim"), ("intermediate_size", "--ffn"), ("vocab_size", "--vocab-size"), ("rope_scaling.original_max_position_embeddings", "--rope-original-max"),
        ("max_position_embeddings", "--max-positions"), ("num_key_value_layers", "--swiftkv-layers"), ("key_value_group_size", "--group-size"),
    ];

    /// <summary>
    /// Runs a config check whose errors speak of config.json fields ("config.json: num_key_value_layers must be in
    /// 1..3") and names the options instead ("num_key_value_layers (--swiftkv-layers) must be in 1..3"): no config.json
    /// was involved. <paramref name="options"/> limits the naming to the options a command has (all when empty).
    /// </summary>
    static T Renamed<T>(Func<T> check, params string[] options)
    {
        try
        {
            return check();
        }
        catch (InvalidModelException e) when (e.Message.StartsWith("config.json: ", StringComparison.Ordinal))
        {
            string message = e.Message["config.json: ".Length..];
            foreach (var (field, option) in s_fieldOptions.Where(f => options.Length == 0 || options.Contains(f.Option)))
                message = System.Text.RegularExpressions.Regex.Replace(message, $@"(?<![\w.]){System.Text.RegularExpressions.Regex.Escape(field)}\b", $"{field} ({option})");
            throw new UsageException((options.Length == 0 ? "the options give an invalid model: " : "") + message);
        }
    }

    static TensorDtype ParseDtype(string s) => s.ToLowerInvariant() switch
    {
        "bf16" or "bfloat16" => TensorDtype.BF16,
        "fp16" or "f16" or "float16" => TensorDtype.F16,
        "fp32" or "f32" or "float32" => TensorDtype.F32,
        _ => throw new UsageException($"--dtype must be bf16, fp16 or fp32 (got '{s}')"),
    };

    public static int Transform(CliArgs a)
    {
        string src = a.Required("model"), dst = a.Required("out");
        int l = a.Int("swiftkv-layers") ?? throw a.Missing("swiftkv-layers");
        int g = a.Int("group-size") ?? 1;
        bool force = a.Flag("force");
        a.RejectUnknown();
        CliArgs.CheckModelDirectory(src);
        if (SameDirectory(src, dst))
            throw new UsageException("--out must be another directory than --model: writing the new checkpoint removes the old weights first.");
        RefuseExistingCheckpoint(dst, force);
        var sw = Stopwatch.StartNew();
        // The source's own config is checked first, so its errors keep naming its config.json; only the new SwiftKV
        // fields are the options' doing.
        LlamaConfig.Load(src);
        bool existed = Directory.Exists(dst);
        using var interrupt = new Interrupt();
        LlamaConfig config;
        try
        {
            config = Renamed(() => SwiftKvConverter.Convert(src, dst, l, g, cancellationToken: interrupt.Token), "--swiftkv-layers", "--group-size");
        }
        catch (OperationCanceledException e) when (interrupt.Caused(e))
        {
            Interrupt.RemoveIfLeftEmpty(dst, existed);
            return Interrupt.Report("transform", dst);
        }
        Console.WriteLine($"wrote {dst}: {Describe(config)} in {sw.Elapsed.TotalSeconds:F1} s (undistilled: run swiftkv distill before serious use)");
        if (!LlamaTokenizer.Exists(src))
            Console.WriteLine($"note: {src} has no tokenizer, so neither has {dst}: generate and the chat client need one (logits takes token ids).");
        return 0;
    }

    public static int Info(CliArgs a)
    {
        string dir = a.Required("model");
        a.RejectUnknown();
        CliArgs.CheckModelDirectory(dir);
        var c = LlamaConfig.Load(dir);
        // The weights as a load would check them (headers, sizes, every tensor's shape and dtype, fp8 scales), without
        // reading them, and the tokenizer read whole and held against vocab_size as generate holds it: a broken checkpoint
        // fails here, before anything is printed, so nothing on stdout describes a model that cannot run.
        var weights = LlamaCheckpointLoader.Verify(dir);
        var tokenizer = LlamaTokenizer.Exists(dir) ? LlamaTokenizer.Load(dir) : null;
        tokenizer?.ForModel(c, dir);
        string chatTemplate = CheckpointChatTemplate.Describe(dir);
        Console.WriteLine(Describe(c));
        // What the engine read, rebuilt (fields it ignores, such as architectures or pretraining_tp, take its values).
        Console.WriteLine("config as read:");
        Console.WriteLine(c.ToJson());
        Console.WriteLine($"weights: the {weights.TensorCount} tensors this config needs are present with their shapes and dtypes");
        if (LlamaCheckpointLoader.UnusedTensors(dir) is { Count: > 0 } unread)
            Console.WriteLine("note: " + LlamaCheckpointLoader.UnreadNote(unread));
        Console.WriteLine(tokenizer is null
            ? "tokenizer: none (no tokenizer.json or original/tokenizer.model): generate and the chat client need one; logits takes token ids"
            : $"tokenizer: {tokenizer.VocabularySize} ids, {tokenizer.SpecialTokens.Count} special, stops at {string.Join(", ", tokenizer.StopTokenIds)}");
        if (tokenizer is not null) Console.WriteLine(chatTemplate);
        // quantization_config says how fp8 tensors are scaled, not that there are any: a config copied from an fp8 model
        // onto bf16 weights loads as the bf16 model it is.
        if (c.Quantization is { } q && weights.Fp8TensorCount > 0)
            Console.WriteLine($"fp8 weights ({q.Method}{(q.BlockSize is var (b0, b1) ? $", {b0} x {b1} blocks" : "")}): {weights.Fp8TensorCount} of the {weights.TensorCount} tensors, " +
                "dequantized on load; the GPU holds and computes them in bf16, the CPU in fp32 (activations are not quantized)");
        else if (c.Quantization is { } unused)
            Console.WriteLine($"quantization_config names {unused.Method}, but no tensor this config needs is fp8: the weights load as they are stored");
        if (c.SwiftKv)
        {
            var off = PrefillCost.Estimate(c, 2048, swiftKv: false);
            var on = PrefillCost.Estimate(c, 2048, swiftKv: true);
            Console.WriteLine($"prefill of 2048 tokens: {off.Total / 1e9:F1} GFLOP without SwiftKV, {on.Total / 1e9:F1} GFLOP with ({1 - on.Total / off.Total:P0} less)");
            Console.WriteLine($"KV caches per sequence: {c.NumKvCaches(true)} of {c.NumHiddenLayers} layers ({(double)c.NumKvCaches(true) / c.NumHiddenLayers:P1} of the base model's KV bytes)");
        }
        return 0;
    }

    internal static string Describe(LlamaConfig c) =>
        $"{(c.NumHiddenLayers == 1 ? "1 layer" : $"{c.NumHiddenLayers} layers")}, hidden {c.HiddenSize}, {c.NumAttentionHeads}/{c.NumKeyValueHeads} heads x {c.HeadDim}, ffn {c.IntermediateSize}, vocab {c.VocabSize}"
        + (c.TieWordEmbeddings ? ", tied" : "")
        + (c.SwiftKv ? $", SwiftKV l={c.NumKeyValueLayers} g={c.KeyValueGroupSize}" : "");
}
