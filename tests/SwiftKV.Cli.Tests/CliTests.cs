// The swiftkv commands run in-process on a tiny made model: what the README promises a newcomer works, and
// bad input ends with exit code 2 and one line naming the problem.
using SwiftKV.Model;
using Xunit;

[assembly: CollectionBehavior(DisableTestParallelization = true)] // the commands write to Console

namespace SwiftKV.Cli.Tests;

public sealed class CliTests : IDisposable
{
    readonly string _root = Path.Combine(Path.GetTempPath(), "swiftkv-cli-" + Guid.NewGuid().ToString("N"));

    (int Code, string Out, string Err) Run(params string[] args)
    {
        var (stdout, stderr) = (Console.Out, Console.Error);
        var o = new StringWriter();
        var e = new StringWriter();
        Console.SetOut(o);
        Console.SetError(e);
        try
        {
            return (CliApp.Run(args), o.ToString(), e.ToString());
        }
        finally
        {
            Console.SetOut(stdout);
            Console.SetError(stderr);
        }
    }

    string Tiny(string name, params string[] extra)
    {
        string dir = Path.Combine(_root, name);
        var r = Run(["make-model", "--preset", "tiny", "--out", dir, "--seed", "3", .. extra]);
        Assert.True(r.Code == 0, r.Err);
        return dir;
    }

    [Fact]
    public void MakeModel_Transform_Info_Generate_Logits_WorkTogether()
    {
        string llama = Tiny("llama");
        Assert.True(File.Exists(Path.Combine(llama, "tokenizer.json")));
        Assert.True(File.Exists(Path.Combine(llama, "original", "tokenizer.model")));

        string swift = Path.Combine(_root, "swift");
        var t = Run("transform", "--model", llama, "--out", swift, "--swiftkv-layers", "2", "--group-size", "2");
        Assert.True(t.Code == 0, t.Err);
        var cfg = LlamaConfig.Load(swift);
        Assert.Equal((true, 2, 2), (cfg.SwiftKv, cfg.NumKeyValueLayers, cfg.KeyValueGroupSize));
        Assert.True(File.Exists(Path.Combine(swift, "tokenizer.json")));

        var info = Run("info", "--model", swift);
        Assert.Contains("less)", info.Out);

        var g = Run("generate", "--model", swift, "--chat", "Hello there", "--max-tokens", "5", "--temperature", "0.8", "--seed", "4");
        Assert.True(g.Code == 0, g.Err);
        Assert.Contains("SwiftKV on", g.Err);
        Assert.Contains("\nbackend: Auto: ", g.Err);   // why this backend
        Assert.Equal(g.Out, Run("generate", "--model", swift, "--chat", "Hello there", "--max-tokens", "5", "--temperature", "0.8", "--seed", "4").Out);

        string f = Path.Combine(_root, "l.f32");
        var l = Run("logits", "--model", swift, "--tokens", "1,2,3,4", "--out", f, "--no-swiftkv");
        Assert.True(l.Code == 0, l.Err);
        Assert.Equal(4L * cfg.VocabSize * 4, new FileInfo(f).Length);
        Assert.StartsWith("backend: Auto: ", l.Err);   // which backend's numerics the file holds, and why
    }

    [Fact]
    public void Demo_OnAGivenModel_PrintsAnswerAndPrefillComparison()
    {
        string swift = Tiny("demo-model", "--swiftkv-layers", "2");
        var d = Run("demo", "--model", swift, "--max-tokens", "4");
        Assert.True(d.Code == 0, d.Err);
        Assert.Contains("answer (SwiftKV on, streamed)", d.Out);
        Assert.Contains("SwiftKV off:", d.Out);
        Assert.Contains("SwiftKV on:", d.Out);
        Assert.Contains("of the FLOPs", d.Out);
        Assert.Contains("out 4, total", d.Out);
    }

    [Theory]
    [InlineData("frobnicate")]
    [InlineData("make-model", "--preset", "giant", "--out", "x")]
    [InlineData("make-model", "--out", "x", "--layres", "3")]
    [InlineData("make-model", "--out", "x", "--swiftkv-layers", "9")]
    [InlineData("make-model", "--out", "x", "--swiftkv-layers", "1", "--group-size", "2")]
    [InlineData("make-model", "--out", "x", "--dtype", "int8")]
    [InlineData("generate", "--model", "/no/such/model", "--prompt", "hi")]
    [InlineData("logits", "--model", "/no/such/model", "--tokens", "1,x", "--out", "y")]
    [InlineData("logits", "--model", "/no/such/model", "--tokens", "99999999999", "--out", "y")]
    [InlineData("bench", "--gated-mlp", "maybe")]     // options are checked before the GPU is looked for
    [InlineData("bench", "--rope-on-load", "off")]
    [InlineData("bench", "--weights", "fp8")]
    [InlineData("bench", "--weights", "w8a8")]
    [InlineData("bench", "--fp8-weights", "keep")]   // without --load
    [InlineData("bench", "--attention-ws", "sometimes")]
    [InlineData("bench", "--batched-prefill", "8by2048")]
    [InlineData("bench", "--batched-step-tokens", "-5")]
    [InlineData("bench", "--batched-step-tokens", ",")]
    [InlineData("serve-bench", "--paged-attention-ws", "2cta")]
    [InlineData("serve-bench", "--weights", "both")]
    [InlineData("serve-bench", "--json", "8", "--json-schema", "/no/such/schema.json")]
    public void BadInput_ExitsWithCode2AndOneLine(params string[] args)
    {
        var r = Run(args);
        Assert.Equal(2, r.Code);
        Assert.StartsWith("swiftkv", r.Err);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
    }

    /// <summary>
    /// bench and serve-bench check every option before they look for a GPU, so on a machine without one a typo is named
    /// rather than hidden behind "needs a CUDA GPU" (which the exit code and line count alone cannot tell apart).
    /// </summary>
    [Theory]
    [InlineData("tyni", "bench", "--preset", "tyni")]
    [InlineData("foo", "bench", "--variants", "off,foo")]
    [InlineData("int4", "bench", "--weights", "int4")]
    [InlineData("tyni", "serve-bench", "--preset", "tyni")]
    [InlineData("foo", "serve-bench", "--variants", "off,foo")]
    [InlineData("bogus", "serve-bench", "--prefix-variant", "bogus")]
    [InlineData("--norm-quantize: 'sometimes' is not one of on", "bench", "--weights", "e4m3-w8a8", "--norm-quantize", "sometimes")]
    [InlineData("--norm-quantize", "bench", "--norm-quantize", "both")]
    [InlineData("e4m3-w8a8", "bench", "--weights", "e4m3", "--norm-quantize", "off")]
    // Output files and the checkpoint to load too: a benchmark must not run for minutes and then fail to write.
    [InlineData("/no/such/dir", "bench", "--out", "/no/such/dir/b.json")]
    [InlineData("/no/such/dir", "bench", "--md", "/no/such/dir/b.md")]
    [InlineData("--load /no/such/model", "bench", "--load", "/no/such/model")]
    [InlineData("/no/such/dir", "serve-bench", "--out", "/no/such/dir/s.json")]
    [InlineData("/no/such/dir", "serve-bench", "--md", "/no/such/dir/s.md")]
    [InlineData("power of two (got 7)", "serve-bench", "--block-size", "7")]
    [InlineData("--gemv-rows: 'abc' is not a row count", "bench", "--gemv-rows", "abc")]     // these four threw past the check
    [InlineData("--gemv-rows: '1.5'", "bench", "--gemv-rows", "1,1.5")]
    [InlineData("--gemv-rows: '99999999999'", "bench", "--gemv-rows", "99999999999")]
    [InlineData("--max-case-seconds: must be a finite number", "bench", "--max-case-seconds", "-1")]
    [InlineData("--max-case-seconds: must be a finite number", "bench", "--max-case-seconds", "NaN")]
    [InlineData("--headroom-gb: must be a finite size", "serve-bench", "--headroom-gb", "-5")]
    [InlineData("--max-seconds: must be a finite number", "serve-bench", "--max-seconds", "NaN")]
    [InlineData("--profile: must be >= 0", "serve-bench", "--profile", "-1")]
    [InlineData("--requests: must be >= 1 (got 0)", "serve-bench", "--requests", "0")]
    [InlineData("--json: must be >= 0 (got -2)", "serve-bench", "--json", "-2")]
    [InlineData("--card-mib: must be >= 1 (got 0)", "serve-bench", "--card-mib", "0")]
    [InlineData("--e4m3-rows-gemm: sets a route of kept e4m3 weights", "serve-bench", "--e4m3-rows-gemm", "off")]
    [InlineData("--e4m3-rows-gemm: on or off", "serve-bench", "--weights", "e4m3", "--e4m3-rows-gemm", "both")]
    [InlineData("--e4m3-rows-from: where the e4m3 rows GEMM starts, so --weights must be e4m3", "serve-bench", "--e4m3-rows-from", "5")]
    [InlineData("--e4m3-rows-from: where the e4m3 rows GEMM starts", "serve-bench", "--weights", "e4m3", "--e4m3-rows-gemm", "off", "--e4m3-rows-from", "5")]
    [InlineData("--e4m3-rows-from: the fewest rows of a step that take the e4m3 rows GEMM, 1 to 9 (got 10)", "serve-bench", "--weights", "e4m3", "--e4m3-rows-from", "10")]
    [InlineData("--e4m3-rows-from: the fewest rows of a step that take the e4m3 rows GEMM, 1 to 9 (got 0)", "serve-bench", "--weights", "e4m3", "--e4m3-rows-from", "0")]
    public void BenchOptions_AreCheckedBeforeTheGpu(string named, params string[] args)
    {
        var r = Run(args);
        Assert.Equal(2, r.Code);
        Assert.Contains(named, r.Err);
        Assert.DoesNotContain("needs a CUDA GPU", r.Err);
    }

    [Theory]
    [InlineData("--gpus must be >= 1 (got 0)", "--gpus", "0")]
    [InlineData("--gpus trains on several GPUs; it cannot go with --backend cpu", "--gpus", "2", "--backend", "cpu")]
    public void Distill_GpusOption_IsChecked(string message, params string[] args)
    {
        var r = Run(["distill", "--model", "/no/such/model", "--data", "d.jsonl", "--out", "o", .. args]);
        Assert.Equal(2, r.Code);
        Assert.Contains(message, r.Err);
    }

    /// <summary>`distill --gpus N` runs rank r on CUDA_VISIBLE_DEVICES's r-th entry, or on GPU r when it is unset.</summary>
    [Fact]
    public void DataParallel_RanksTakeTheVisibleGpusInOrder()
    {
        Assert.Contains("empty", Assert.Throws<UsageException>(() => DataParallelLauncher.Devices(2, " ")).Message);
        Assert.Equal(["0", "1"], DataParallelLauncher.Devices(2, null));
        Assert.Equal(["3", "5"], DataParallelLauncher.Devices(2, "3, 5,7"));
        var e = Assert.Throws<UsageException>(() => DataParallelLauncher.Devices(3, "0,1"));
        Assert.Equal("--gpus 3: CUDA_VISIBLE_DEVICES=0,1 lists 2 GPUs", e.Message);
    }

    /// <summary>The launcher's supervision with stand-in ranks (shell commands): what a real run cannot show without two GPUs.</summary>
    static System.Diagnostics.ProcessStartInfo Sh(string script) =>
        new("/bin/sh", ["-c", script]) { RedirectStandardOutput = true, RedirectStandardError = true };

    static (int Code, string Out, string Err, TimeSpan Took) Supervise(CancellationToken ct, params string[] scripts)
    {
        var (stdout, stderr) = (Console.Out, Console.Error);
        using var o = new StringWriter();
        using var e = new StringWriter();
        Console.SetOut(o);
        Console.SetError(e);
        var took = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            int code = DataParallelLauncher.Supervise(scripts.Select(Sh).ToList(), ["0", "1"], ct, TimeSpan.FromSeconds(1));
            return (code, o.ToString(), e.ToString(), took.Elapsed);
        }
        finally
        {
            Console.SetOut(stdout);
            Console.SetError(stderr);
        }
    }

    /// <summary>
    /// A rank that fails while its peer waits for it forever (as in a collective): the failure is named, the peer is asked
    /// to stop and, when it does not, killed; the run ends with the failure's exit code instead of hanging.
    /// </summary>
    [Theory]
    [InlineData("exec sleep 30")]                      // stops when asked (SIGTERM)
    [InlineData("trap '' TERM; sleep 30 & wait")]      // ignores it: killed after the grace period
    public void Launcher_ARankFails_ThePeerIsStopped_NoHang(string peer)
    {
        Assert.SkipUnless(File.Exists("/bin/sh") && !OperatingSystem.IsWindows(), "stand-in ranks are shell scripts");
        var r = Supervise(TestContext.Current.CancellationToken, peer, "sleep 0.3; echo 'no CUDA here' >&2; exit 3");
        Assert.Equal(3, r.Code);
        Assert.Contains("[rank 1] no CUDA here", r.Err);
        Assert.Contains("swiftkv distill: rank 1 (GPU 1) exited with 3; stopping the other rank.", r.Err);
        Assert.True(r.Took < TimeSpan.FromSeconds(20), $"took {r.Took}");
    }

    [Fact]
    public void Launcher_AllRanksSucceed_Rank0sOutputOnly_Exit0()
    {
        Assert.SkipUnless(File.Exists("/bin/sh") && !OperatingSystem.IsWindows(), "stand-in ranks are shell scripts");
        var r = Supervise(TestContext.Current.CancellationToken, "echo 'wrote out'", "echo 'rank one speaks'");
        Assert.Equal(0, r.Code);
        Assert.Equal("wrote out", r.Out.Trim());
        Assert.Equal("", r.Err);
    }

    /// <summary>Ctrl-C or SIGTERM to the launcher alone: the ranks are asked to stop, then killed; it does not wait forever.</summary>
    [Fact]
    public void Launcher_Cancelled_StopsEveryRank()
    {
        Assert.SkipUnless(File.Exists("/bin/sh") && !OperatingSystem.IsWindows(), "stand-in ranks are shell scripts");
        using var cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        var r = Supervise(cancel.Token, "exec sleep 30", "trap '' TERM; sleep 30 & wait");
        Assert.Equal(130, r.Code);   // interrupted, though one rank was killed (137)
        Assert.True(r.Took < TimeSpan.FromSeconds(20), $"took {r.Took}");
    }

    /// <summary>Typos named as typos: an option meant as --chat, and a command.</summary>
    [Theory]
    [InlineData("--chta is not an option: a misspelling of --chat?", "generate", "--model", "/no/such/model", "--chta", "Hi")]
    [InlineData("did you mean 'generate'?", "genrate", "--model", "x")]
    public void Typos_AreNamed(string named, params string[] args)
    {
        var r = Run(args);
        Assert.Equal(2, r.Code);
        Assert.Contains(named, r.Err);
    }

    /// <summary>A --json-schema the constraint cannot enforce is a usage error naming the file and where in the schema.</summary>
    [Fact]
    public void ServeBench_BadJsonSchema_NamesFileAndPlace()
    {
        Directory.CreateDirectory(_root);
        string file = Path.Combine(_root, "bad-schema.json");
        File.WriteAllText(file, """{"type":"object","properties":{"n":{"type":"int"}}}""");
        var r = Run("serve-bench", "--json", "8", "--json-schema", file);
        Assert.Equal(2, r.Code);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
        Assert.Contains(file, r.Err);
        Assert.Contains("#/properties/n", r.Err);
        Assert.Contains("'int' is not a JSON schema type", r.Err);
    }

    /// <summary>An --out that is an existing file, and more tokens than the context: one line naming the problem, exit 2.</summary>
    [Fact]
    public void OutIsAFile_OrMaxTokensPastContext_AreClearErrors()
    {
        string file = Path.Combine(_root, "a-file");
        Directory.CreateDirectory(_root);
        File.WriteAllText(file, "x");
        var r = Run("make-model", "--preset", "tiny", "--out", file);
        Assert.Equal(2, r.Code);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
        Assert.Contains(file, r.Err);
        string dir = Tiny("context-64", "--max-positions", "64");
        var g = Run("generate", "--model", dir, "--prompt", "hi", "--max-tokens", "2000000000");
        Assert.Equal(2, g.Code);
        Assert.Contains("exceeds the context of 64 tokens", g.Err);
    }

    /// <summary>
    /// From a newcomer's run: a misspelled required option was reported as missing (the typo never named), `--name=value`
    /// was not understood, `COMMAND --help` failed, an empty --out named no option, and a value starting with "--" could
    /// not be passed.
    /// </summary>
    [Fact]
    public void NewcomerMistakes_AreNamed_AndTheUsualFormsWork()
    {
        string dir = Tiny("newcomer");
        var typo = Run("generate", "--mdoel", dir, "--chat", "hi");
        Assert.Equal(2, typo.Code);
        Assert.Contains("--model is required (--mdoel is not an option: a misspelling of --model?)", typo.Err);
        Assert.Contains("--swiftkv-layer is not an option", Run("transform", "--model", dir, "--out", Path.Combine(_root, "t"), "--swiftkv-layer", "1").Err);
        Assert.Contains("--output is not an option", Run("logits", "--model", dir, "--tokens", "1", "--output", "x").Err);

        var equals = Run("generate", $"--model={dir}", "--prompt=--verbose flag explained", "--max-tokens=2");
        Assert.True(equals.Code == 0, equals.Err);

        var help = Run("generate", "--help");
        Assert.Equal(0, help.Code);
        Assert.Contains("--model DIR", help.Out);

        var empty = Run("make-model", "--preset", "tiny", "--out", "");
        Assert.Equal(2, empty.Code);
        Assert.Contains("--out needs a value", empty.Err);
        // Values that are not paths may be empty or look like a help switch.
        var emptyPrompt = Run("generate", "--model", dir, "--prompt", "", "--max-tokens", "1");
        Assert.True(emptyPrompt.Code == 0, emptyPrompt.Err);
        var dashH = Run("generate", "--model", dir, "--prompt", "-h", "--max-tokens", "1");
        Assert.True(dashH.Code == 0 && !dashH.Out.Contains("--model DIR"), dashH.Out + dashH.Err);
        Assert.Contains("'x' is not a whole number", Run("generate", "--model", dir, "--prompt", "hi", "--max-tokens", "x").Err);
    }

    /// <summary>A refused option leaves no folder behind, and contradictory rope options are refused, not half-applied.</summary>
    [Fact]
    public void MakeModel_RefusedOptions_WriteNothing()
    {
        string bad = Path.Combine(_root, "bad-init");
        var r = Run("make-model", "--preset", "tiny", "--init-std", "-1", "--out", bad);
        Assert.Equal(2, r.Code);
        Assert.Contains("--init-std must be a positive finite number, got -1", r.Err);
        Assert.False(Directory.Exists(bad));

        string rope = Path.Combine(_root, "rope");
        var c = Run("make-model", "--preset", "tiny", "--no-rope-scaling", "--rope-original-max", "64", "--out", rope);
        Assert.Equal(2, c.Code);
        Assert.Contains("--no-rope-scaling", c.Err);
        Assert.False(Directory.Exists(rope));
        Assert.Contains("contradict", Run("make-model", "--preset", "tiny", "--tie", "--untie", "--out", rope).Err);
    }

    /// <summary>
    /// A model whose fp32 weights exceed the machine's memory used to be killed by the kernel part-way through the
    /// load, with nothing printed. A checkpoint of 70B's layer shape with 200 layers (~700 GB in fp32, more than any
    /// machine this runs on), its weights a sparse file of consistent headers, is refused before any weight is read.
    /// A config that disagrees with its weights is named as such, not as a memory problem.
    /// </summary>
    [Fact]
    public void Generate_ModelPastTheMachinesMemoryOnTheCpu_IsRefusedBeforeLoading()
    {
        string dir = Path.Combine(_root, "seventy");
        Directory.CreateDirectory(dir);
        var config = SwiftKV.Model.Checkpoint.ModelPresets.Get("llama-3.1-70b") with { NumHiddenLayers = 200 };
        long fp32 = SwiftKV.Model.Checkpoint.ShapeManifest.ParameterCount(config, swiftKvEnabled: false) * sizeof(float);
        if (GC.GetGCMemoryInfo().TotalAvailableMemoryBytes >= fp32)
            Assert.Skip($"this machine may use {GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 1e9:F0} GB, enough for the {fp32 / 1e9:F0} GB model the test needs refused.");
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJson());
        SwiftKV.Model.Tokenization.LlamaTokenizer.CreateDemo().Save(dir);
        try { WriteSparseCheckpoint(Path.Combine(dir, "model.safetensors"), config); }
        catch (IOException e) { Assert.Skip($"the file system here cannot hold a sparse {fp32 / 2e9:F0} GB file ({e.Message})."); }

        var r = Run("generate", "--model", dir, "--backend", "cpu", "--prompt", "hi", "--max-tokens", "1");
        Assert.Equal(2, r.Code);
        Assert.Contains("holds the weights in fp32", r.Err);
        Assert.Contains("(Backend choice: CPU requested)", r.Err);   // with Auto, why the GPU was not used
        Assert.Single(r.Err.TrimEnd().Split('\n'));

        // The same weights under a config with another hidden size: the mismatch speaks, not the memory check.
        File.WriteAllText(Path.Combine(dir, "config.json"), (config with { IntermediateSize = 2 * config.IntermediateSize }).ToJson());
        r = Run("generate", "--model", dir, "--backend", "cpu", "--prompt", "hi", "--max-tokens", "1");
        Assert.Equal(2, r.Code);
        Assert.Contains("gate_proj", r.Err);
        Assert.DoesNotContain("holds the weights in fp32", r.Err);
    }

    /// <summary>A safetensors file whose header lists every tensor of <paramref name="config"/> in bf16, its data a hole.</summary>
    static void WriteSparseCheckpoint(string path, LlamaConfig config)
    {
        var header = new System.Text.Json.Nodes.JsonObject { ["__metadata__"] = new System.Text.Json.Nodes.JsonObject { ["format"] = "pt" } };
        long offset = 0;
        foreach (var spec in SwiftKV.Model.Checkpoint.LlamaTensorNames.ForModel(config, swiftKvEnabled: false))
        {
            long bytes = spec.ElementCount * 2;
            header[spec.Name] = new System.Text.Json.Nodes.JsonObject
            {
                ["dtype"] = "BF16",
                ["shape"] = new System.Text.Json.Nodes.JsonArray(spec.Shape.Select(d => (System.Text.Json.Nodes.JsonNode?)d).ToArray()),
                ["data_offsets"] = new System.Text.Json.Nodes.JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        byte[] json = System.Text.Encoding.UTF8.GetBytes(header.ToJsonString());
        using var f = File.Create(path);
        f.Write(BitConverter.GetBytes((long)json.Length));
        f.Write(json);
        f.SetLength(8 + json.Length + offset);
    }

    /// <summary>
    /// Typos that used to run on a model that loads: '0,7' read as 7, --system dropped beside --prompt, "1,,2" read as
    /// two tokens, an --out in a missing directory found only after the forward. Each is now exit 2 naming it.
    /// </summary>
    [Theory]
    [InlineData("'0,7' is not a number", "generate", "--prompt", "hi", "--max-tokens", "2", "--temperature", "0,7")]
    [InlineData("--system goes with --chat", "generate", "--prompt", "hi", "--max-tokens", "2", "--system", "be brief")]
    [InlineData("entry 2 of '1,,2' is empty", "logits", "--tokens", "1,,2", "--out", "l.f32")]
    [InlineData("does not exist", "logits", "--tokens", "1", "--out", "/no/such/dir/l.f32")]
    public void Typos_OnAModelThatLoads_AreNamed(string expected, string command, params string[] rest)
    {
        string dir = Tiny("typos");
        var r = Run([command, "--model", dir, .. rest.Select(a => a == "l.f32" ? Path.Combine(_root, a) : a)]);
        Assert.Equal(2, r.Code);
        Assert.Contains(expected, r.Err);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
    }

    /// <summary>
    /// make-model and transform write a checkpoint by replacing the weights in --out, so a folder that already holds one
    /// is refused (its files untouched) unless --force is given, and transform never writes over its own --model.
    /// </summary>
    [Fact]
    public void ExistingCheckpoint_IsNotReplacedWithoutForce()
    {
        string keep = Tiny("keep");
        string weights = Path.Combine(keep, "model.safetensors");
        var before = File.ReadAllBytes(weights);
        var r = Run("make-model", "--preset", "tiny", "--out", keep, "--seed", "9");
        Assert.Equal(2, r.Code);
        Assert.Contains("already holds a checkpoint", r.Err);
        Assert.Contains("--force", r.Err);
        Assert.Equal(before, File.ReadAllBytes(weights));
        var t = Run("transform", "--model", keep, "--out", keep + "/", "--swiftkv-layers", "2", "--force");
        Assert.Equal(2, t.Code);
        Assert.Contains("another directory than --model", t.Err);
        string other = Tiny("other");
        t = Run("transform", "--model", other, "--out", keep, "--swiftkv-layers", "2");
        Assert.Equal(2, t.Code);
        Assert.Equal(before, File.ReadAllBytes(weights));
        var f = Run("make-model", "--preset", "tiny", "--out", keep, "--seed", "9", "--force");
        Assert.True(f.Code == 0, f.Err);
        Assert.NotEqual(before, File.ReadAllBytes(weights));
    }

    /// <summary>
    /// The checkpoint's chat_template is not run (chats are written in Llama 3.1's format): info says whether it frames
    /// turns as Llama 3 does, and generate --chat warns when it does not (a ChatML template here), in either of
    /// tokenizer_config.json's forms and in chat_template.jinja; a chat_template of another JSON kind is told, not refused.
    /// </summary>
    /// <summary>
    /// A config that does not match how the checkpoint was saved (AcrossKV 2 on a checkpoint saved with 1, so layer 3's
    /// own SwiftKV projections go unread) loads, as transformers loads it; info and generate name the unread tensors, as
    /// transformers warns of them. A matching checkpoint gets no note.
    /// </summary>
    [Fact]
    public void Info_NamesTensorsTheConfigDoesNotRead()
    {
        string dir = Tiny("group-1", "--swiftkv-layers", "2", "--group-size", "1");
        Assert.DoesNotContain("have no place in its config", Run("info", "--model", dir).Out);

        string config = Path.Combine(dir, "config.json");
        var root = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(config))!.AsObject();
        root["key_value_group_size"] = 2;
        File.WriteAllText(config, root.ToJsonString());
        var info = Run("info", "--model", dir);
        Assert.True(info.Code == 0, info.Err);
        const string Note = "note: 2 tensor(s) in the checkpoint have no place in its config.json and are not read " +
            "(model.layers.3.self_attn.k_proj_swiftkv.weight, model.layers.3.self_attn.v_proj_swiftkv.weight)";
        Assert.Contains(Note, info.Out);
        var g = Run("generate", "--model", dir, "--prompt", "hi", "--max-tokens", "1");
        Assert.True(g.Code == 0, g.Err);
        Assert.Contains(Note, g.Err);
    }

    [Fact]
    public void ChatTemplate_NotLlama3s_IsToldByInfoAndGenerate()
    {
        string dir = Tiny("chatml");
        var info = Run("info", "--model", dir);
        Assert.Contains("chat template: Llama 3.1's (Llama 3's turns", info.Out);
        Assert.DoesNotContain("note: chat template", Run("generate", "--model", dir, "--chat", "Hi", "--max-tokens", "1").Err);

        string config = Path.Combine(dir, "tokenizer_config.json");
        var root = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(config))!.AsObject();
        const string chatMl = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
        foreach (System.Text.Json.Nodes.JsonNode template in new System.Text.Json.Nodes.JsonNode[]
            { System.Text.Json.Nodes.JsonValue.Create(chatMl)!, new System.Text.Json.Nodes.JsonArray(
                new System.Text.Json.Nodes.JsonObject { ["name"] = "tool_use", ["template"] = "<|im_start|>tool<|im_end|>" },
                new System.Text.Json.Nodes.JsonObject { ["name"] = "default", ["template"] = chatMl }) })
        {
            root["chat_template"] = template;
            File.WriteAllText(config, root.ToJsonString());
            Assert.Contains("does not frame turns with Llama 3's", Run("info", "--model", dir).Out);
            var g = Run("generate", "--model", dir, "--chat", "Hi", "--max-tokens", "1");
            Assert.True(g.Code == 0, g.Err);
            Assert.Contains("note: chat template: the checkpoint's chat template does not frame turns", g.Err);
        }
        // Nothing runs the template, so one it cannot read is told, not refused.
        root["chat_template"] = 7;
        File.WriteAllText(config, root.ToJsonString());
        var odd = Run("info", "--model", dir);
        Assert.True(odd.Code == 0, odd.Err);
        Assert.Contains("chat_template is not a string or a list", odd.Out);
        var g7 = Run("generate", "--model", dir, "--chat", "Hi", "--max-tokens", "1");
        Assert.True(g7.Code == 0, g7.Err);
        Assert.Contains("note: chat template: tokenizer_config.json's chat_template is not a string", g7.Err);
        // Newer checkpoints keep it in chat_template.jinja, which comes first.
        File.WriteAllText(Path.Combine(dir, "chat_template.jinja"), chatMl);
        Assert.Contains("does not frame turns with Llama 3's", Run("info", "--model", dir).Out);
    }

    /// <summary>
    /// A checkpoint whose weights hold NaN (here the final norm's, so every logit is NaN): generate ends with one line
    /// saying what went wrong, not a crash with a stack trace; logits writes what the model computed but says how many
    /// values are not finite and exits 1 rather than passing it off as a good run.
    /// </summary>
    [Fact]
    public void NaNWeights_GenerateAndLogits_SaySo()
    {
        string dir = Tiny("nan");
        string weights = Path.Combine(dir, "model.safetensors");
        SwiftKV.Model.Checkpoint.TensorInfo norm;
        using (var file = SwiftKV.Model.Checkpoint.SafetensorsFile.Open(weights)) norm = file.Get("model.norm.weight");
        using (var fs = new FileStream(weights, FileMode.Open))
        {
            fs.Position = norm.DataOffset;
            fs.Write(Enumerable.Repeat((byte)0xFF, (int)norm.ByteLength).ToArray());   // all-ones: NaN in bf16 and f32
        }
        var g = Run("generate", "--model", dir, "--prompt", "Hello", "--max-tokens", "3");
        Assert.Equal(2, g.Code);
        Assert.Contains("NaN", g.Err);
        Assert.DoesNotContain("   at ", g.Err);
        string output = Path.Combine(_root, "nan.f32");
        var l = Run("logits", "--model", dir, "--tokens", "1,2", "--out", output);
        Assert.Equal(1, l.Code);
        Assert.Contains("NaN or infinite", l.Err);
        Assert.Contains("row 0, token id 0", l.Err);
        Assert.True(new FileInfo(output).Length > 0);
    }

    /// <summary>
    /// info checks the weights as a load would (without reading them): a truncated weights file or a config whose
    /// layer count is 0 is an error naming the problem, not a description of a model that cannot run.
    /// </summary>
    [Fact]
    public void Info_BrokenCheckpoint_IsAClearError()
    {
        string dir = Tiny("broken");
        var ok = Run("info", "--model", dir);
        Assert.True(ok.Code == 0, ok.Err);
        Assert.Contains("tensors this config needs are present", ok.Out);
        string weights = Path.Combine(dir, "model.safetensors");
        using (var fs = new FileStream(weights, FileMode.Open)) fs.SetLength(fs.Length - 100);
        var r = Run("info", "--model", dir);
        Assert.Equal(2, r.Code);
        Assert.Contains("model.safetensors", r.Err);
        Assert.Equal("", r.Out);   // nothing describes a model that cannot run
        string config = Path.Combine(dir, "config.json");
        File.WriteAllText(config, System.Text.RegularExpressions.Regex.Replace(File.ReadAllText(config), "\"num_hidden_layers\":\\s*\\d+", "\"num_hidden_layers\": 0"));
        r = Run("info", "--model", dir);
        Assert.Equal(2, r.Code);
        Assert.Contains("num_hidden_layers must be a positive integer, got 0", r.Err);
        var l = Run("logits", "--model", dir, "--tokens", "1", "--out", _root);
        Assert.Equal(2, l.Code);
        Assert.Contains("is a directory", l.Err);
    }

    [Fact]
    public void Generate_PromptLongerThanContext_IsAClearError()
    {
        string dir = Tiny("short-context", "--max-positions", "32");
        var r = Run("generate", "--model", dir, "--prompt", string.Join(' ', Enumerable.Repeat("word", 100)));
        Assert.Equal(2, r.Code);
        Assert.Contains("does not fit the context", r.Err);
        // logits said "cache capacity must be in 1..32", the engine's words for the same problem.
        var l = Run("logits", "--model", dir, "--tokens", string.Join(',', Enumerable.Repeat("1", 33)), "--out", Path.Combine(_root, "l.f32"));
        Assert.Equal(2, l.Code);
        Assert.Contains("--tokens: 33 tokens do not fit the context of 32 tokens", l.Err);
        Assert.True(Run("logits", "--model", dir, "--tokens", string.Join(',', Enumerable.Repeat("1", 32)), "--out", Path.Combine(_root, "l.f32")).Code == 0);
    }

    /// <summary>
    /// make-model's help lists the preset overrides, and a misspelled option names the one meant and every option the
    /// command takes (it used to say only "unknown option(s): --layer").
    /// </summary>
    [Fact]
    public void MakeModel_HelpAndTypos_ShowTheOverrides()
    {
        var help = Run("make-model", "--help");
        Assert.Equal(0, help.Code);
        foreach (var o in new[] { "--layers N", "--hidden N", "--kv-heads N", "--ffn N", "--max-positions N", "--swiftkv-layers L", "--dtype" })
            Assert.Contains(o, help.Out);
        var r = Run("make-model", "--preset", "tiny", "--out", Path.Combine(_root, "typo"), "--layer", "3");
        Assert.Equal(2, r.Code);
        Assert.Contains("unknown option(s): --layer (did you mean --layers?)", r.Err);
        Assert.Contains("this command takes --attention-bias", r.Err);
        Assert.Contains("--kv-heads", r.Err);
        Assert.Contains("--hiden (did you mean --hidden?)", Run("make-model", "--out", Path.Combine(_root, "typo"), "--hiden", "64").Err);
        Assert.Contains("rope_scaling.original_max_position_embeddings (--rope-original-max) must be",
            Run("make-model", "--out", Path.Combine(_root, "typo"), "--rope-original-max", "0").Err);
        Assert.Contains("--max-positions: '99999999999' is too large", Run("make-model", "--out", Path.Combine(_root, "typo"), "--max-positions", "99999999999").Err);
        Assert.DoesNotContain("did you mean", Run("make-model", "--out", Path.Combine(_root, "typo"), "--colour", "red").Err);
        Assert.False(Directory.Exists(Path.Combine(_root, "typo")));
    }

    /// <summary>
    /// generate printed special tokens (a random model's "<|reserved_special_token_10|>") as text; they are markup, skipped
    /// as the chat client skips them, unless --show-special asks for them. The model's lm_head is rewritten so that greedy
    /// decoding can only pick one of two reserved special tokens (rows +w and -w; every other row zero).
    /// </summary>
    [Fact]
    public void Generate_SkipsSpecialTokens_UnlessAsked()
    {
        string dir = Tiny("specials", "--dtype", "fp32");
        var tok = SwiftKV.Model.Tokenization.LlamaTokenizer.CreateDemo();
        int plus = tok.GetSpecialTokenId("<|reserved_special_token_10|>")!.Value, minus = plus + 1;
        string weights = Path.Combine(dir, "model.safetensors");
        SwiftKV.Model.Checkpoint.TensorInfo head;
        using (var f = SwiftKV.Model.Checkpoint.SafetensorsFile.Open(weights)) head = f.Tensors.Single(t => t.Name == "lm_head.weight");
        int hidden = (int)head.Shape[1];
        var rows = new float[head.ElementCount];
        for (int j = 0; j < hidden; j++) (rows[(long)plus * hidden + j], rows[(long)minus * hidden + j]) = (10f, -10f);
        using (var fs = new FileStream(weights, FileMode.Open, FileAccess.Write))
        {
            fs.Position = head.DataOffset;
            fs.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(rows.AsSpan()));
        }

        var shown = Run("generate", "--model", dir, "--prompt", "hi", "--max-tokens", "3", "--show-special");
        Assert.True(shown.Code == 0, shown.Err);
        Assert.Matches("^(<\\|reserved_special_token_1[01]\\|>){3}$", shown.Out.TrimEnd());
        var skipped = Run("generate", "--model", dir, "--prompt", "hi", "--max-tokens", "3");
        Assert.True(skipped.Code == 0, skipped.Err);
        Assert.Equal("", skipped.Out.TrimEnd());
        Assert.Contains("3 tokens at", skipped.Err);
        // One token comes from the prefill alone: no "0.0 tokens/s" decode rate.
        var one = Run("generate", "--model", dir, "--prompt", "hi", "--max-tokens", "1");
        Assert.True(one.Code == 0, one.Err);
        Assert.Contains("1 token (from the prefill, no decode step)", one.Err);
        Assert.DoesNotContain("tokens/s", one.Err);
    }

    /// <summary>
    /// --top-k or --top-p without --temperature sample at temperature 1, as the chat client does (they were ignored: every
    /// seed gave the greedy text); the default --max-tokens gives way to a short context, a typed one is refused; a bad
    /// sampling value names the option.
    /// </summary>
    [Fact]
    public void Generate_SamplingAndLengthDefaults_FollowTheChatClient()
    {
        string dir = Tiny("sampling-defaults", "--max-positions", "24");
        string Text(params string[] extra) => Run(["generate", "--model", dir, "--prompt", "Hello", "--max-tokens", "8", .. extra]).Out;
        string greedy = Text();
        string a = Text("--top-k", "50", "--seed", "1"), b = Text("--top-k", "50", "--seed", "2");
        Assert.NotEqual(a, b);
        Assert.Equal(a, Text("--top-k", "50", "--seed", "1"));
        Assert.Equal(a, Text("--top-k", "50", "--seed", "1", "--temperature", "1"));
        Assert.NotEqual(greedy, Text("--top-p", "0.9", "--seed", "3"));
        Assert.Equal(greedy, Text("--top-k", "50", "--seed", "1", "--temperature", "0"));

        var fits = Run("generate", "--model", dir, "--prompt", "Hello");
        Assert.True(fits.Code == 0, fits.Err);
        Assert.Contains("finish Length", fits.Err);
        Assert.Contains("note: --max-tokens defaults to 64; the context of 24 tokens leaves", fits.Err);
        var typed = Run("generate", "--model", dir, "--prompt", "Hello", "--max-tokens", "64");
        Assert.Equal(2, typed.Code);
        Assert.Contains("--max-tokens 64 after a prompt of", typed.Err);

        var bad = Run("generate", "--model", dir, "--prompt", "Hello", "--top-p", "1.5");
        Assert.Equal(2, bad.Code);
        Assert.Contains("--top-p: TopP must be in (0, 1]", bad.Err);
    }

    /// <summary>
    /// Errors name what the user typed: an option rather than the config.json field it sets (no config.json was
    /// involved), a --model that is a file or missing as such (not "config.json not found").
    /// </summary>
    [Fact]
    public void Errors_NameTheOptionAndThePathTyped()
    {
        var r = Run("make-model", "--preset", "tiny", "--out", Path.Combine(_root, "x"), "--swiftkv-layers", "5");
        Assert.Equal(2, r.Code);
        Assert.Contains("num_key_value_layers (--swiftkv-layers) must be in 1..3", r.Err);
        Assert.DoesNotContain("config.json", r.Err);
        Assert.Contains("num_attention_heads (--heads) (3) must be a multiple of num_key_value_heads (--kv-heads)",
            Run("make-model", "--preset", "tiny", "--out", Path.Combine(_root, "x"), "--heads", "3").Err);
        string dir = Tiny("paths");
        Assert.Contains("(--group-size) (2) must divide", Run("transform", "--model", dir, "--out", Path.Combine(_root, "t"), "--swiftkv-layers", "1", "--group-size", "2").Err);
        // A broken source config is the source's problem, named as its config.json's.
        string broken = Tiny("broken-source");
        string config = Path.Combine(broken, "config.json");
        File.WriteAllText(config, System.Text.RegularExpressions.Regex.Replace(File.ReadAllText(config), "\"head_dim\":\\s*\\d+", "\"head_dim\": 15"));
        var t = Run("transform", "--model", broken, "--out", Path.Combine(_root, "t2"), "--swiftkv-layers", "2");
        Assert.Equal(2, t.Code);
        Assert.Contains("config.json: head_dim (15) must be even", t.Err);

        var file = Run("info", "--model", Path.Combine(dir, "config.json"));
        Assert.Equal(2, file.Code);
        Assert.Contains("config.json is a file; give the checkpoint directory that holds it", file.Err);
        Assert.Equal("", file.Out);
        var missing = Run("generate", "--model", Path.Combine(_root, "nowhere"), "--prompt", "hi");
        Assert.Equal(2, missing.Code);
        Assert.Contains("nowhere: no such directory", missing.Err);
        var demo = Run("demo", "--model", Path.Combine(_root, "nowhere"));   // as the other commands name it
        Assert.Equal(2, demo.Code);
        Assert.Contains("--model " + Path.Combine(_root, "nowhere") + ": no such directory", demo.Err);
    }

    /// <summary>A checkpoint without a tokenizer: info says so (it looked complete), and transform notes the copy has none either.</summary>
    [Fact]
    public void NoTokenizer_IsStatedByInfoAndTransform()
    {
        string dir = Tiny("no-tokenizer", "--no-tokenizer");
        var info = Run("info", "--model", dir);
        Assert.True(info.Code == 0, info.Err);
        Assert.Contains("tokenizer: none", info.Out);
        var t = Run("transform", "--model", dir, "--out", Path.Combine(_root, "no-tokenizer-skv"), "--swiftkv-layers", "2");
        Assert.True(t.Code == 0, t.Err);
        Assert.Contains("has no tokenizer", t.Out);
        Assert.Contains("tokenizer: 128256 ids", Run("info", "--model", Tiny("with-tokenizer")).Out);
    }

    /// <summary>A negative --seed names the range a seed takes.</summary>
    [Fact]
    public void Generate_NegativeSeed_NamesTheRange()
    {
        var r = Run("generate", "--model", "/no/such/model", "--prompt", "hi", "--seed", "-1");
        Assert.Equal(2, r.Code);
        Assert.Contains("--seed: '-1' is out of range (0..18446744073709551615)", r.Err);
    }

    /// <summary>A checkpoint with several wrong tensors prints the loader's list one problem per line (it was one long line).</summary>
    [Fact]
    public void Info_SeveralProblems_ArePrintedOnePerLine()
    {
        string dir = Tiny("wrong-ffn");
        string config = Path.Combine(dir, "config.json");
        var c = LlamaConfig.Load(dir);
        File.WriteAllText(config, System.Text.RegularExpressions.Regex.Replace(File.ReadAllText(config),
            "\"intermediate_size\":\\s*\\d+", $"\"intermediate_size\": {c.IntermediateSize + 8}"));
        var r = Run("info", "--model", dir);
        Assert.Equal(2, r.Code);
        var lines = r.Err.TrimEnd().Split('\n');
        Assert.StartsWith("swiftkv info: checkpoint", lines[0]);
        Assert.EndsWith("problem(s):", lines[0]);
        Assert.True(lines.Length >= 4, r.Err);
        Assert.All(lines.Skip(1), l => Assert.StartsWith("  - ", l));
        Assert.Contains("mlp.gate_proj.weight", lines[1]);
    }

    /// <summary>
    /// info runs generate's checks: a tokenizer with ids past vocab_size (a small model given Llama 3's tokenizer) was
    /// "OK" to info and refused by generate.
    /// </summary>
    [Fact]
    public void Info_TokenizerPastVocabSize_IsRefusedAsGenerateRefusesIt()
    {
        string small = Tiny("small-vocab", "--vocab-size", "1000", "--no-tokenizer");
        string full = Tiny("full-vocab");
        foreach (string f in (string[])["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"])
            File.Copy(Path.Combine(full, f), Path.Combine(small, f));
        const string expected = "the tokenizer has ids up to 128255 but the model's vocab_size is 1000";
        var g = Run("generate", "--model", small, "--prompt", "hi", "--max-tokens", "1");
        Assert.Equal(2, g.Code);
        Assert.Contains(expected, g.Err);
        var info = Run("info", "--model", small);
        Assert.Equal(2, info.Code);
        Assert.Contains(expected, info.Err);
        Assert.Equal("", info.Out);
    }

    /// <summary>
    /// quantization_config on a checkpoint with no fp8 tensor: info said "fp8 weights (fp8): dequantized on load" of
    /// weights that are bf16. It says the config names fp8 and no tensor is; fp8 tensors are counted when there are some.
    /// </summary>
    [Fact]
    public void Info_QuantizationConfigWithoutFp8Tensors_SaysNoTensorIsFp8()
    {
        string dir = Tiny("bf16-fp8-config");
        string config = Path.Combine(dir, "config.json");
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(config))!.AsObject();
        json["quantization_config"] = new System.Text.Json.Nodes.JsonObject { ["quant_method"] = "fp8" };
        File.WriteAllText(config, json.ToJsonString());
        var info = Run("info", "--model", dir);
        Assert.True(info.Code == 0, info.Err);
        Assert.DoesNotContain("dequantized on load", info.Out);
        Assert.Contains("quantization_config names fp8, but no tensor this config needs is fp8", info.Out);
    }

    /// <summary>A num_hidden_layers of 2^31 - 1 grew memory without bound (20 GB in two minutes); now a one-line error at once.</summary>
    [Fact]
    public void Info_AbsurdLayerCount_IsRefusedAtOnce()
    {
        string dir = Tiny("many-layers");
        string config = Path.Combine(dir, "config.json");
        File.WriteAllText(config, System.Text.RegularExpressions.Regex.Replace(File.ReadAllText(config), "\"num_hidden_layers\":\\s*\\d+", "\"num_hidden_layers\": 2147483647"));
        var r = Run("info", "--model", dir);
        Assert.Equal(2, r.Code);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
        Assert.Contains("num_hidden_layers (2147483647) must be at most 1024 (the largest Llama has 126)", r.Err);
    }

    [Fact]
    public void Distill_TrainsOnlyTheSwiftKvTensors_AndTheResultLoads()
    {
        string llama = Tiny("distill-base", "--dtype", "fp32"), swift = Path.Combine(_root, "distill-skv"), output = Path.Combine(_root, "distilled");
        Assert.Equal(0, Run("transform", "--model", llama, "--out", swift, "--swiftkv-layers", "2", "--group-size", "2").Code);
        // fp32 weights under a config that says bfloat16: the output keeps the tensors' own dtype (checked bit for bit below).
        string configPath = Path.Combine(swift, "config.json");
        File.WriteAllText(configPath, File.ReadAllText(configPath).Replace("\"float32\"", "\"bfloat16\"", StringComparison.Ordinal));
        string data = Path.Combine(_root, "chats.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 8).Select(i =>
            $$"""{"messages": [{"role": "user", "content": "Summarize item {{i}}: revenue grew {{i}}% while costs fell."}, {"role": "assistant", "content": "Revenue up {{i}}%, costs down."}]}"""));

        var r = Run("distill", "--model", swift, "--data", data, "--out", output, "--batch-size", "2", "--epochs", "2", "--lr", "2e-3");
        Assert.True(r.Code == 0, r.Err);
        var m = System.Text.RegularExpressions.Regex.Match(r.Out, @"loss ([0-9.]+) -> ([0-9.]+)");
        Assert.True(m.Success, r.Out);
        Assert.True(double.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture)
            < double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), r.Out);

        // Every tensor but the SwiftKV ones is the source's, bit for bit; each SwiftKV tensor moved.
        using var before = SwiftKV.Model.Checkpoint.SafetensorsCheckpoint.Open(swift);
        using var after = SwiftKV.Model.Checkpoint.SafetensorsCheckpoint.Open(output);
        var config = LlamaConfig.Load(swift);
        foreach (var spec in SwiftKV.Model.Checkpoint.LlamaTensorNames.ForCheckpoint(config))
        {
            float[] a = SwiftKV.Model.Checkpoint.LlamaCheckpointLoader.ReadFloat32(config, before, spec.Name);
            float[] b = SwiftKV.Model.Checkpoint.LlamaCheckpointLoader.ReadFloat32(config, after, spec.Name);
            if (spec.Name.Contains("swiftkv", StringComparison.Ordinal)) Assert.NotEqual(a, b);
            else Assert.Equal(a, b);
        }
        Assert.True(File.Exists(Path.Combine(output, "tokenizer.json")));
        var g = Run("generate", "--model", output, "--chat", "Hello", "--max-tokens", "3");
        Assert.True(g.Code == 0, g.Err);

        Assert.Contains("already holds a checkpoint", Run("distill", "--model", swift, "--data", data, "--out", output).Err);
        Assert.Contains("swiftkv transform", Run("distill", "--model", llama, "--data", data, "--out", Path.Combine(_root, "x1")).Err);
        Assert.Contains("--lr must be a positive number (got 0)", Run("distill", "--model", swift, "--data", data, "--out", Path.Combine(_root, "x2"), "--lr", "0").Err);
        Assert.Contains("--batch-size must be >= 1 (got 0)", Run("distill", "--model", swift, "--data", data, "--out", Path.Combine(_root, "x3"), "--batch-size", "0").Err);
        Assert.Contains("no distillation data", Run("distill", "--model", swift, "--data", data + ".missing", "--out", Path.Combine(_root, "x4")).Err);
        Assert.Contains("must be outside", Run("distill", "--model", swift, "--data", data, "--out", Path.Combine(swift, "sub")).Err);
        Assert.Contains("--gemm must be tf32 or fp32 (got 'bf16')", Run("distill", "--model", swift, "--data", data, "--out", Path.Combine(_root, "x7"), "--gemm", "bf16").Err);
        Assert.Contains("--gemm sets the GPU trainer's GEMMs", Run("distill", "--model", swift, "--data", data, "--out", Path.Combine(_root, "x10"), "--gemm", "fp32", "--backend", "cpu").Err);
        Assert.Contains("--backend must be auto, cpu or cuda (got 'gpu')", Run("distill", "--model", swift, "--data", data, "--out", Path.Combine(_root, "x8"), "--backend", "gpu").Err);
        Assert.Contains("--fp8-weights must be auto, dequantize, keep or keep-w8a8 (got 'fp8')", Run("generate", "--model", swift, "--prompt", "hi", "--fp8-weights", "fp8").Err);
        Assert.Contains("--fp8-weights must be auto, dequantize, keep or keep-w8a8 (got 'x')", Run("logits", "--model", swift, "--tokens", "1,2", "--out", Path.Combine(_root, "l.f32"), "--fp8-weights", "x").Err);
        if (!SwiftKV.Cuda.CudaRuntime.TryInitialize(out _))
        {
            // Asked for the GPU on a machine without one: said in one line, nothing written (CI has no GPU).
            var noGpu = Run("distill", "--model", swift, "--data", data, "--out", Path.Combine(_root, "x9"), "--backend", "cuda");
            Assert.Equal(2, noGpu.Code);
            Assert.Contains("--backend cuda was asked for, but CUDA is not usable", noGpu.Err);
            Assert.False(Directory.Exists(Path.Combine(_root, "x9")));
        }
        // A learning rate that blows the weights up stops with one line naming the tensor, and writes nothing.
        var blown = Run("distill", "--model", swift, "--data", data, "--out", Path.Combine(_root, "x5"), "--lr", "1e30", "--batch-size", "1");
        Assert.Equal(2, blown.Code);
        Assert.Contains("is not finite", blown.Err);
        Assert.Single(blown.Err.TrimEnd().Split('\n'));
        Assert.False(File.Exists(Path.Combine(_root, "x5", "model.safetensors")));

        // bf16 weights and a learning rate too small to move them: said, not hidden behind a loss measured in fp32.
        string bf16 = Path.Combine(_root, "distill-bf16");
        Assert.Equal(0, Run("transform", "--model", Tiny("distill-bf16-base"), "--out", bf16, "--swiftkv-layers", "2").Code);
        var still = Run("distill", "--model", bf16, "--data", data, "--out", Path.Combine(_root, "x6"), "--lr", "1e-12", "--batch-size", "8");
        Assert.True(still.Code == 0, still.Err);
        Assert.Contains("unchanged once rounded to BF16", still.Out);
    }

    /// <summary>
    /// `distill --gpus 2` on a machine without CUDA, as a user runs it (its own process, which starts one process per
    /// rank): each rank says it needs CUDA, the launcher names the rank that failed and stops the other, nothing is
    /// written, exit 2. On a machine with CUDA this would train instead (DataParallelDistillTests covers that).
    /// </summary>
    [Fact]
    public async Task Distill_TwoGpusWithoutCuda_EachRankSaysWhy_NothingWritten()
    {
        Assert.SkipWhen(SwiftKV.Cuda.CudaRuntime.TryInitialize(out _), "CUDA is usable here: the ranks would train");
        var ct = TestContext.Current.CancellationToken;
        string model = Path.Combine(_root, "dp-model"), data = Path.Combine(_root, "dp.jsonl"), outDir = Path.Combine(_root, "dp-out");
        Assert.Equal(0, Run("make-model", "--out", Path.Combine(_root, "dp-base"), "--layers", "2").Code);
        Assert.Equal(0, Run("transform", "--model", Path.Combine(_root, "dp-base"), "--out", model, "--swiftkv-layers", "1").Code);
        File.WriteAllText(data, "{\"text\": \"one two three four\"}\n");
        var start = new System.Diagnostics.ProcessStartInfo(SwiftKV.Samples.Tests.Interrupts.DotnetHost,
            [Path.Combine(AppContext.BaseDirectory, "swiftkv.dll"), "distill", "--model", model, "--data", data, "--out", outDir, "--gpus", "2"])
            { RedirectStandardOutput = true, RedirectStandardError = true };
        using var process = System.Diagnostics.Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync(ct);
        await process.StandardOutput.ReadToEndAsync(ct);
        await SwiftKV.Samples.Tests.Interrupts.WaitForExit(process, 120, ct);
        string errors = await stderr;
        Assert.True(2 == process.ExitCode, $"exit {process.ExitCode}: {errors}");
        Assert.Contains("rank 0 of 2: training on several GPUs needs CUDA, which is not usable", errors);
        Assert.Matches(@"rank \d \(GPU \d\) exited with 2", errors);
        Assert.DoesNotContain("   at ", errors);
        Assert.False(Directory.Exists(outDir));
    }

    /// <summary>
    /// Ctrl-C while make-model writes, in its own process as a user runs it: it stops at the next block of values, says
    /// so in one line, exits 130, and leaves no --out behind (it created the folder, so the folder goes too).
    /// </summary>
    [Fact]
    public async Task MakeModel_CtrlCWhileWriting_LeavesNothingAndExits130()
    {
        if (OperatingSystem.IsWindows()) Assert.Skip("sends SIGINT through kill(2)");
        var ct = TestContext.Current.CancellationToken;
        string outDir = Path.Combine(_root, "interrupted");
        // 1.3B values (an 8B-wide model cut to one layer): seconds of work on any machine, stopped within the first.
        string[]? command = SwiftKV.Samples.Tests.Interrupts.Interruptible([SwiftKV.Samples.Tests.Interrupts.DotnetHost,
            Path.Combine(AppContext.BaseDirectory, "swiftkv.dll"), "make-model", "--preset", "llama-3.1-8b", "--layers", "1", "--out", outDir]);
        if (command is null) Assert.Skip("SIGINT is ignored in this process and there is no /usr/bin/env to restore it");
        var start = new System.Diagnostics.ProcessStartInfo(command![0], command[1..]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var process = System.Diagnostics.Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync(ct);
        var stderr = process.StandardError.ReadToEndAsync(ct);
        var waited = System.Diagnostics.Stopwatch.StartNew();
        // Signalled once the weights file is being written in the hidden folder.
        while (!(Directory.Exists(outDir) && Directory.EnumerateFiles(outDir, "*.safetensors", SearchOption.AllDirectories).Any()))
        {
            if (process.HasExited) Assert.Fail($"make-model ended before writing: exit {process.ExitCode}; {await stderr}");
            if (waited.Elapsed > TimeSpan.FromSeconds(120))
            {
                process.Kill();
                Assert.Fail($"no weights file after 120 s; stdout: {await stdout}");
            }
            await Task.Delay(10, ct);
        }
        Assert.Equal(0, SwiftKV.Samples.Tests.Interrupts.SendSigInt(process.Id));
        await SwiftKV.Samples.Tests.Interrupts.WaitForExit(process, 120, ct);
        string errors = await stderr;
        Assert.True(130 == process.ExitCode, $"exit code {process.ExitCode}; stderr: {errors}; stdout: {await stdout}");
        Assert.Contains($"swiftkv make-model: interrupted; nothing was written to {outDir}.", errors);
        Assert.DoesNotContain("   at ", errors);
        Assert.False(Directory.Exists(outDir), "the --out folder make-model created is gone");
    }

    public void Dispose()
    {
        if (Directory.Exists(_root)) Directory.Delete(_root, recursive: true);
    }

    /// <summary>The W8A8 weight modes (and the fused norm + quantize switch with them) pass the option checks and reach the GPU lookup (a machine without one says so).</summary>
    [Theory]
    [InlineData("bench", "--weights", "e4m3-w8a8")]
    [InlineData("bench", "--weights", "all")]
    [InlineData("bench", "--weights", "e4m3-w8a8", "--norm-quantize", "both")]
    [InlineData("bench", "--weights", "all", "--norm-quantize", "off")]
    [InlineData("serve-bench", "--weights", "e4m3-w8a8")]
    public void GpuBenchmarks_AcceptTheW8A8WeightModes(params string[] args)
    {
        if (SwiftKV.Cuda.CudaRuntime.TryInitialize(out _)) Assert.Skip("on a GPU this would run the benchmark");
        var r = Run(args);
        Assert.Contains("needs a CUDA GPU", r.Err);
        Assert.DoesNotContain("--weights", r.Err);
        Assert.DoesNotContain("--norm-quantize", r.Err);
    }

    [Theory]
    [InlineData("auto", SwiftKV.Engine.Cuda.Fp8Weights.Auto)]
    [InlineData("Keep", SwiftKV.Engine.Cuda.Fp8Weights.Keep)]
    [InlineData("keep-w8a8", SwiftKV.Engine.Cuda.Fp8Weights.KeepW8A8)]
    [InlineData("KEEP-W8A8", SwiftKV.Engine.Cuda.Fp8Weights.KeepW8A8)]
    [InlineData("dequantize", SwiftKV.Engine.Cuda.Fp8Weights.Dequantize)]
    public void Fp8WeightsOption_NamesEveryMode(string text, SwiftKV.Engine.Cuda.Fp8Weights mode) =>
        Assert.Equal(mode, LogitsCommand.ParseFp8Weights(text));
}
