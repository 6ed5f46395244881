// swiftkv serve-bench: the serving engine (continuous batching, paged KV, chunked prefill, prefix cache) on the CUDA
// backend at a real model's shape with random weights made on the GPU. Two scenarios:
//   throughput  Snowflake's published SwiftKV workload: N concurrent requests of P random prompt tokens and O output
//               tokens (greedy unless --temperature > 0: then seeded sampling with --top-k / --top-p, picked on the GPU;
//               --frequency-penalty for all requests or the first --penalised N, added to their rows on the GPU too;
//               --json N: the first N requests decode under a JsonConstraint over a synthetic token table (random
//               printable bytes per id: the grammar's cost per step is real, the text is not), their masks
//               computed on the host while the step runs and applied on the GPU; no stop; with --json-schema FILE they
//               hold to that JSON schema instead, through JsonSchemaConstraint), all submitted at once; total tokens/s = N·(P + O) / wall time from the first
//               submit to the last completion; TTFT and TPOT p50/p99 from each request's outcome; SwiftKV off vs on
//               vs on + AcrossKV in the same process, one backend at a time (each gets the whole card's KV memory).
//   configs     engine/backend settings compared on each variant in the same process: base (one attention launch per
//               layer, admission by known tokens with preemption: the 2026-11-26 engine), split (decode and prefill
//               attention launched apart in mixed steps), reserve (admission reserves every request's output blocks:
//               no preemption), tuned (split + reserve).
//   Every run also reports a per-step host trace (decode-only vs mixed steps: count, mean batch, mean forward ms,
//   host schedule + post ms) and, with --profile N, CUDA-event phase times of every N-th step.
//   prefix      a shared S-token system prompt + M distinct short questions, prefix caching on vs off on one
//               variant: prefix-cache hit rate, TTFT and wall time.
// Variant keys off, swiftkv50, acrosskv4; a "-fp8" suffix (e.g. swiftkv50-fp8) stores the KV pool as fp8 e4m3
// (ServingOptions.KvCacheDtype), so the same memory holds ~2x the tokens.
// The KV pool takes the card's free memory after weights and a warm-up step of the largest batch, minus headroom.
// --card-mib N runs as on a card of N MiB (e.g. 81079, an H100 80GB's): the rest of this card's memory is held for the
// whole run, and the engine's step size follows its rule for N MiB. Memory only: the bandwidth and clocks stay this card's.
// --e4m3-rows-gemm on|off and --e4m3-rows-from N (with --weights e4m3): whether steps over kept e4m3 weights take the
// tensor-core rows GEMM, and from how many rows (fewer take the e4m3 GEMV), for A/B runs of the route.
// Results print as markdown and are written (after each scenario, so a cut-off run keeps what it has) as JSON.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using SwiftKV.Cuda;
using SwiftKV.Cuda.Kernels;
using SwiftKV.Engine.Cuda;
using SwiftKV.Engine.Sampling;
using SwiftKV.Engine.Serving;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;

namespace SwiftKV.Cli;

internal static class ServeBenchCommand
{
    public const string Usage = "[--preset llama-3.1-8b] [--variants off,swiftkv50,acrosskv4 (suffix -fp8: fp8 KV pool)] [--weights bf16|e4m3|e4m3-w8a8] [--card-mib N (run as on a card of N MiB)] [--e4m3-rows-gemm on|off] [--e4m3-rows-from N] [--requests 256] [--prompt 2000 (a list: each config run at each length, in order)] [--output 256] " +
        "[--max-batch-tokens N (default: the engine's, 8192 on GPUs of >= 64 GiB keeping >= 32 GiB beyond the weights, else 2048)] [--block-size N (default: the engine's, 64 for bf16 on Hopper)] [--headroom-gb 4] [--kv-gb N|auto (default: free memory less the headroom)] [--max-running N|auto (default: --requests; auto: the engine's)] [--prefix 8192] [--questions 64] [--question-tokens 64] " +
        "[--prefix-output 32] [--prefix-variant swiftkv50|none] [--max-seconds 150] [--configs tuned] [--paged-attention-ws on|off|both] [--profile 0] [--temperature 0] [--top-k 0] [--top-p 1] [--frequency-penalty 0] [--penalised N (default: all)] [--json 0] [--json-schema FILE] [--out serve.json] [--md serve.md]";

    sealed record EngineConfig(string Key, bool SplitAttention, bool ReserveOutputs);

    static EngineConfig MakeConfig(string key) => key switch
    {
        "base" => new(key, false, false),
        "split" => new(key, true, false),
        "reserve" => new(key, false, true),
        "tuned" => new(key, true, true),
        _ => throw new UsageException($"unknown config '{key}' (base, split, reserve, tuned)"),
    };

    sealed record Variant(string Key, string Name, LlamaConfig Config, bool SwiftKv, KvCacheDtype Dtype = KvCacheDtype.Bf16);

    sealed record RunResult(string Label, int Requests, int Completed, long PromptTokens, long OutputTokens, double WallSeconds,
        double TtftP50, double TtftP99, double TpotP50, double TpotP99, int PeakRunning, long Preemptions, long Steps,
        double HitRate, long KvBlocks, long KvBytesPerToken, StepStats Trace, int BlockSize, int MaxBatchTokens, int MaxRunningSequences, long KvCacheBytes)
    {
        public double TotalTokensPerSecond => (PromptTokens + OutputTokens) / WallSeconds;
        public double OutputTokensPerSecond => OutputTokens / WallSeconds;
    }

    /// <summary>Host-side step trace of one run, from ServingOptions.StepObserver.</summary>
    sealed record StepStats(int DecodeSteps, double DecodeBatch, double DecodeForwardMs, int MixedSteps, double MixedTokens,
        double MixedForwardMs, double HostMsPerStep, double ForwardSeconds, double HostSeconds);

    sealed class StepAccumulator
    {
        int _d, _m;
        double _dBatch, _dMs, _mTokens, _mMs, _host;
        public void Add(ServingStepTrace t)
        {
            _host += t.ScheduleMs + t.PostMs;
            if (t.Tokens == t.DecodeTokens) { _d++; _dBatch += t.Tokens; _dMs += t.ForwardMs; }
            else { _m++; _mTokens += t.Tokens; _mMs += t.ForwardMs; }
        }
        public StepStats Stats()
        {
            int n = Math.Max(1, _d + _m);
            return new StepStats(_d, _dBatch / Math.Max(1, _d), _dMs / Math.Max(1, _d), _m, _mTokens / Math.Max(1, _m), _mMs / Math.Max(1, _m),
                _host / n, (_dMs + _mMs) / 1e3, _host / 1e3);
        }
    }

    public static int Run(CliArgs a)
    {
        string preset = a.String("preset") ?? "llama-3.1-8b";
        string[] variantKeys = (a.String("variants") ?? "off,swiftkv50,acrosskv4").Split(',', StringSplitOptions.RemoveEmptyEntries);
        int requests = a.Int("requests") ?? 256, output = a.Int("output") ?? 256;
        // Several prompt lengths run one after another on the same backend: what a new length costs its first request.
        int[] promptLengths = (a.String("prompt") ?? "2000").Split(',', StringSplitOptions.RemoveEmptyEntries)
            .Select(x => int.TryParse(x, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n >= 1 ? n
                : throw new UsageException($"--prompt: '{x}' is not a token count >= 1")).ToArray();
        int prompt = promptLengths.Length > 0 ? promptLengths.Max() : throw new UsageException("--prompt: no length given");
        // Unset: what the engine (and so the IChatClient) picks for each variant's backend and pool type.
        int? maxBatchArg = a.Int("max-batch-tokens"), blockSizeArg = a.Int("block-size");
        double headroomGb = a.Float("headroom-gb") ?? 4;
        // The KV pool: by default the free memory after a warm-up less the headroom; a size in GiB; or "auto", the
        // engine's own budget (what the IChatClient gets when SwiftKvOptions.KvCacheBytes is unset).
        string kvArg = a.String("kv-gb") ?? "";
        double? kvGb = kvArg is "" or "auto" ? null : double.TryParse(kvArg, NumberStyles.Float, CultureInfo.InvariantCulture, out double g) && g > 0 ? g
            : throw new UsageException($"--kv-gb: '{kvArg}' is neither a size in GiB (> 0) nor auto");
        string runningArg = a.String("max-running") ?? "";
        bool runningAuto = runningArg == "auto";
        int? maxRunningArg = runningArg is "" or "auto" ? null : int.TryParse(runningArg, out int mr) && mr >= 1 ? mr
            : throw new UsageException($"--max-running: '{runningArg}' is neither a count (>= 1) nor auto");
        int prefix = a.Int("prefix") ?? 8192, questions = a.Int("questions") ?? 64, questionTokens = a.Int("question-tokens") ?? 64;
        int prefixOutput = a.Int("prefix-output") ?? 32;
        string prefixVariant = a.String("prefix-variant") ?? "swiftkv50";
        double maxSeconds = a.Float("max-seconds") ?? 150;
        var configs = (a.String("configs") ?? "tuned").Split(',', StringSplitOptions.RemoveEmptyEntries).Select(MakeConfig).ToArray();
        int profileEvery = a.Int("profile") ?? 0;
        var sampling = new SamplingParams
        {
            Temperature = a.Float("temperature") is { } t ? (float)t : 0f, TopK = a.Int("top-k") ?? 0,
            TopP = a.Float("top-p") is { } tp ? (float)tp : 1f, FrequencyPenalty = a.Float("frequency-penalty") is { } fp ? (float)fp : 0f,
        };
        int penalised = a.Int("penalised") ?? int.MaxValue, jsonRequests = a.Int("json") ?? 0;
        string? schemaPath = a.String("json-schema");
        JsonSchemaGrammar? schema = schemaPath is null ? null : LoadSchema(schemaPath);
        string outJson = a.String("out") ?? "serve.json";
        string? outMd = a.String("md");
        string weightsArg = a.String("weights") ?? "bf16";
        var (e4m3, w8a8) = weightsArg switch
        {
            "bf16" => (false, false),
            "e4m3" => (true, false),
            "e4m3-w8a8" => (true, true),
            _ => throw new UsageException($"--weights: '{weightsArg}' is not bf16 (default), e4m3 (layer matrices as e4m3 codes with row scales, an FP8 checkpoint kept fp8) " +
                "or e4m3-w8a8 (the same with W8A8 GEMMs above 8 rows)"),
        };
        int? cardMib = a.Int("card-mib");
        bool[] rowsGemmModes = a.OnOffBoth("e4m3-rows-gemm", $"on (default: decode steps of {CudaBackend.DefaultE4m3RowsGemmFromRows}-64 rows over kept e4m3 weights on tensor cores, each code read once) or off (9-64 rows: dequantize each matrix, then cuBLAS)");
        if (rowsGemmModes.Length > 1) throw new UsageException("--e4m3-rows-gemm: on or off (run twice to compare)");
        if (a.String("e4m3-rows-gemm") is not null && weightsArg != "e4m3")
            throw new UsageException("--e4m3-rows-gemm: sets a route of kept e4m3 weights without W8A8, so --weights must be e4m3");
        int rowsFrom = a.Int("e4m3-rows-from") ?? CudaBackend.DefaultE4m3RowsGemmFromRows;
        if (a.String("e4m3-rows-from") is not null && (weightsArg != "e4m3" || !rowsGemmModes[0]))
            throw new UsageException("--e4m3-rows-from: where the e4m3 rows GEMM starts, so --weights must be e4m3 and the route on");
        if (rowsFrom < 1 || rowsFrom > GemvKernel.MaxRows + 1)
            throw new UsageException($"--e4m3-rows-from: the fewest rows of a step that take the e4m3 rows GEMM, 1 to {GemvKernel.MaxRows + 1} (got {rowsFrom})");
        bool[] wsModes = a.OnOffBoth("paged-attention-ws", "on (default: the warp-specialised wgmma entry for paged prefill on Hopper with blocks of >= 64 positions), off (always the two-CTA entry) or both (each throughput config run with each)");
        a.RejectUnknown();
        // Each named alone, with its value: a list of eight options left the reader to find the one at fault.
        foreach (var (name, value, least) in new (string, int?, int)[]
        {
            ("requests", requests, 1), ("output", output, 1), ("max-batch-tokens", maxBatchArg, 1), ("block-size", blockSizeArg, 1),
            ("questions", questions, 1), ("question-tokens", questionTokens, 1), ("prefix-output", prefixOutput, 1),
            ("penalised", penalised, 0), ("json", jsonRequests, 0), ("card-mib", cardMib, 1),
        })
            if (value < least) throw new UsageException($"--{name}: must be >= {least} (got {value})");
        if (!(headroomGb >= 0) || double.IsInfinity(headroomGb)) throw new UsageException($"--headroom-gb: must be a finite size in GiB >= 0 (got {headroomGb})");
        if (!(maxSeconds > 0) || double.IsInfinity(maxSeconds)) throw new UsageException($"--max-seconds: must be a finite number of seconds > 0 (got {maxSeconds})");
        if (profileEvery < 0) throw new UsageException($"--profile: must be >= 0, a step count between profiled steps (0: none) (got {profileEvery})");
        // As the CUDA paged cache requires (CudaBackend.Batched), checked here so it is named without a GPU too.
        if (blockSizeArg is { } bs && !System.Numerics.BitOperations.IsPow2(bs)) throw new UsageException($"--block-size: the CUDA paged KV cache needs a power of two (got {bs})");
        CliArgs.CheckOutputFile("out", outJson);
        if (outMd is not null) CliArgs.CheckOutputFile("md", outMd);

        var baseCfg = ModelPresets.Get(preset);
        Variant Make(string key)
        {
            bool fp8 = key.EndsWith("-fp8", StringComparison.Ordinal);
            var v = (fp8 ? key[..^4] : key) switch
            {
                "off" => new Variant(key, "SwiftKV off", baseCfg, false),
                "swiftkv50" => new Variant(key, "SwiftKV 50%", SwiftKv(baseCfg, 1), true),
                "acrosskv4" => new Variant(key, "SwiftKV 50% + AcrossKV 4", SwiftKv(baseCfg, 4), true),
                _ => throw new UsageException($"unknown variant '{key}' (off, swiftkv50, acrosskv4, each optionally with -fp8)"),
            };
            return fp8 ? v with { Name = v.Name + ", fp8 KV", Dtype = KvCacheDtype.Fp8E4M3 } : v;
        }
        var variants = variantKeys.Select(Make).ToArray();
        Variant? prefixV = prefixVariant == "none" ? null : Make(prefixVariant);

        // After every option is checked, so a typo is named on a machine without a GPU too.
        if (!CudaRuntime.TryInitialize(out var why)) throw new NotSupportedException("serve-bench needs a CUDA GPU: " + why);
        var dev = CudaRuntime.Device;
        long? cardBytes = cardMib * (1L << 20);
        using var held = cardBytes is { } card ? HoldAllBut(card) : null;
        var json = new JsonObject
        {
            ["device"] = dev.ToString(),
            ["date_utc"] = DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture),
            ["commit"] = Environment.GetEnvironmentVariable("SWIFTKV_COMMIT") ?? "",
            ["preset"] = preset,
            ["weights"] = weightsArg,
            ["card_mib"] = cardMib,
            ["e4m3_rows_gemm"] = e4m3 && !w8a8 ? rowsGemmModes[0] : null,
            ["e4m3_rows_from"] = e4m3 && !w8a8 && rowsGemmModes[0] ? rowsFrom : null,
            ["workload"] = new JsonObject { ["requests"] = requests, ["prompt"] = string.Join(",", promptLengths), ["output"] = output, ["max_batch_tokens"] = maxBatchArg, ["block_size"] = blockSizeArg, ["max_running"] = maxRunningArg, ["kv_gb"] = kvGb,
                ["note"] = "null: the engine's own choice (each run records what it resolved)" },
        };
        var rows = new JsonArray();
        json["runs"] = rows;
        var md = new StringBuilder();
        md.AppendLine($"Card: {dev.Name}{(cardMib is { } cm ? $", run as a card of {cm} MiB ({held!.ByteLength >> 20} MiB held)" : "")}. Preset {preset}, random {(e4m3 ? "e4m3 layer weights (row scales, held as e4m3; embedding and lm_head bf16)" + (w8a8 ? ", W8A8 GEMMs above 8 rows" : rowsGemmModes[0] ? $", the e4m3 rows GEMM from {rowsFrom} rows" : ", the e4m3 rows GEMM off") : "bf16 weights")}, greedy, block size {blockSizeArg?.ToString() ?? "the engine's"}, max batch tokens {maxBatchArg?.ToString() ?? "the engine's"} (each run's row says which).");
        md.AppendLine();
        md.AppendLine("| scenario | variant | config | requests (done) | prompt+out tokens | wall | total tok/s | out tok/s | TTFT p50 / p99 | TPOT p50 / p99 | peak running | KV blocks (KiB/token) | preempt | prefix hit | steps: decode-only n, mean batch, ms / mixed n, mean tokens, ms / host ms per step |");
        md.AppendLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        var profiles = new StringBuilder();
        void Save()
        {
            File.WriteAllText(outJson, json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            if (outMd is not null) File.WriteAllText(outMd, md.ToString() + Environment.NewLine + profiles);
        }
        void Add(string scenario, Variant v, RunResult r, string config = "", CudaStepProfiler? profiler = null)
        {
            var t = r.Trace;
            config += $" (block {r.BlockSize}, {r.MaxBatchTokens} tokens/step, {r.MaxRunningSequences} running, KV {r.KvCacheBytes / (double)(1L << 30):F1} GiB)";
            md.AppendLine($"| {scenario} | {v.Name} | {config} | {r.Requests} ({r.Completed}) | {r.PromptTokens}+{r.OutputTokens} | {r.WallSeconds:F2} s | **{r.TotalTokensPerSecond:F0}** | " +
                $"{r.OutputTokensPerSecond:F0} | {r.TtftP50 * 1e3:F0} / {r.TtftP99 * 1e3:F0} ms | {r.TpotP50 * 1e3:F1} / {r.TpotP99 * 1e3:F1} ms | {r.PeakRunning} | " +
                $"{r.KvBlocks} ({r.KvBytesPerToken / 1024.0:F0}) | {r.Preemptions} | {r.HitRate:P1} | " +
                $"{t.DecodeSteps}, {t.DecodeBatch:F0}, {t.DecodeForwardMs:F1} / {t.MixedSteps}, {t.MixedTokens:F0}, {t.MixedForwardMs:F1} / {t.HostMsPerStep:F2} |");
            var o = JsonSerializer.SerializeToNode(r)!.AsObject();
            o["scenario"] = scenario;
            o["config"] = config;
            if (profiler is not null && profiler.Steps.Count > 0)
            {
                string table = profiler.ToMarkdown();
                profiles.AppendLine($"{scenario}, {v.Name}, config {config}: GPU phases of every {profiler.Every}th step").AppendLine().AppendLine(table);
                o["gpu_phases_md"] = table;
                Log($"GPU phases ({v.Name}, {config}):{Environment.NewLine}{table}");
            }
            o["variant"] = v.Name;
            o["total_tokens_per_s"] = r.TotalTokensPerSecond;
            rows.Add(o);
            Log($"{scenario} {v.Name} [{config}] {r.Label}: {r.TotalTokensPerSecond:F0} total tok/s, wall {r.WallSeconds:F2} s, TTFT p50 {r.TtftP50 * 1e3:F0} ms, TPOT p50 {r.TpotP50 * 1e3:F1} ms, " +
                $"peak running {r.PeakRunning}, preemptions {r.Preemptions}, done {r.Completed}/{r.Requests}; steps decode-only {t.DecodeSteps} " +
                $"(batch {t.DecodeBatch:F0}, {t.DecodeForwardMs:F1} ms), mixed {t.MixedSteps} ({t.MixedTokens:F0} tokens, {t.MixedForwardMs:F1} ms), " +
                $"forward {t.ForwardSeconds:F2} s, host {t.HostSeconds:F2} s ({t.HostMsPerStep:F2} ms/step)");
            Save();
        }
        Log($"device: {dev}");

        foreach (var v in variants)
        {
            using var backend = Open(v, e4m3, w8a8, rowsGemmModes[0], rowsFrom);
            var opts = PoolOptions(backend, v.Dtype, blockSizeArg, maxBatchArg ?? StepTokensOn(cardBytes, backend), runningAuto ? null : maxRunningArg ?? requests, prompt + output, headroomGb, kvArg == "auto", kvGb);
            foreach (var c in configs)
                foreach (bool ws in wsModes)
                foreach (int length in promptLengths)
                {
                    var prompts = Enumerable.Range(0, requests).Select(i => Tokens(length, v.Config.VocabSize, 1000 + i)).ToArray();
                    backend.SplitMixedAttention = c.SplitAttention;
                    backend.UseWarpSpecializedPagedAttention = ws;
                    long wsBefore = backend.WarpSpecializedAttentionLaunches;
                    using var profiler = profileEvery > 0 ? new CudaStepProfiler(profileEvery) : null;
                    backend.StepProfiler = profiler;
                    var r = RunWorkload(backend, opts with { ReserveOutputBlocks = c.ReserveOutputs }, prompts, output, maxSeconds, "throughput", sampling, penalised, jsonRequests, schema);
                    backend.StepProfiler = null;
                    string attention = wsModes.Length == 1 ? "" : ws ? (backend.WarpSpecializedAttentionLaunches > wsBefore ? ", ws attention" : ", ws attention did not run")
                        : ", two-CTA attention";
                    string who = penalised >= requests ? "" : $" for {penalised} of {requests} requests";
                    string constrained = jsonRequests == 0 ? "" : $", {(schema is null ? "JSON" : $"schema ({Path.GetFileName(schemaPath)})")}-constrained: {Math.Min(jsonRequests, requests)} of {requests} requests";
                    string penalty = sampling.FrequencyPenalty != 0 ? $", frequency penalty {sampling.FrequencyPenalty}{who}" : "";
                    string picks = sampling.Temperature == 0 ? (penalty == "" ? "" : $", greedy{penalty}")
                        : $", sampled (T {sampling.Temperature}, top-k {sampling.TopK}, top-p {sampling.TopP}{penalty})";
                    Add("throughput", v, r, c.Key + attention + picks + constrained, profiler);
                }
            backend.SplitMixedAttention = configs[^1].SplitAttention;
            backend.UseWarpSpecializedPagedAttention = wsModes[0];
            if (prefixV?.Key == v.Key) RunPrefix(backend, v);
        }
        if (prefixV is not null && !variants.Any(v => v.Key == prefixV.Key))
        {
            using var backend = Open(prefixV, e4m3, w8a8, rowsGemmModes[0], rowsFrom);
            backend.UseWarpSpecializedPagedAttention = wsModes[0];
            RunPrefix(backend, prefixV);
        }

        void RunPrefix(CudaBackend backend, Variant v)
        {
            var system = Tokens(prefix, v.Config.VocabSize, 7);
            var prompts = Enumerable.Range(0, questions).Select(i => system.Concat(Tokens(questionTokens, v.Config.VocabSize, 5000 + i)).ToArray()).ToArray();
            foreach (bool caching in new[] { true, false })
            {
                var opts = PoolOptions(backend, v.Dtype, blockSizeArg, maxBatchArg ?? StepTokensOn(cardBytes, backend), runningAuto ? null : maxRunningArg ?? questions, prefix + questionTokens + prefixOutput, headroomGb, kvArg == "auto", kvGb)
                    with { EnablePrefixCaching = caching, ReserveOutputBlocks = configs[^1].ReserveOutputs };
                Add(caching ? $"prefix {prefix}+{questionTokens}, caching on" : $"prefix {prefix}+{questionTokens}, caching off", v,
                    RunWorkload(backend, opts, prompts, prefixOutput, maxSeconds, caching ? "prefix-on" : "prefix-off"), configs[^1].Key);
            }
        }

        Console.WriteLine();
        Console.WriteLine(md.ToString());
        Save();
        Log($"wrote {outJson}" + (outMd is null ? "" : $" and {outMd}"));
        return 0;
    }

    /// <summary>
    /// Holds this card's memory beyond <paramref name="cardBytes"/> for the run, so what stays free is what a card of
    /// that size would have (the CUDA context's share aside, which both pay).
    /// </summary>
    static DeviceBuffer<byte> HoldAllBut(long cardBytes)
    {
        var (free, total) = CudaRuntime.MemoryInfo();
        long hold = total - cardBytes;
        if (hold <= 0) throw new UsageException($"--card-mib: this card has {total >> 20} MiB, not more than {cardBytes >> 20} MiB");
        if (hold > free) throw new UsageException($"--card-mib: holding {hold >> 20} MiB needs more than the {free >> 20} MiB free now");
        var held = new DeviceBuffer<byte>(hold);
        Log($"run as a card of {cardBytes >> 20} MiB: {hold >> 20} MiB of this card's {total >> 20} MiB held, {CudaRuntime.MemoryInfo().Free >> 20} MiB free");
        return held;
    }

    /// <summary>The engine's step size on a card of <paramref name="cardBytes"/> (null: the real card's, the backend's own).</summary>
    static int? StepTokensOn(long? cardBytes, CudaBackend backend) =>
        cardBytes is { } c ? CudaBackend.PreferredMaxBatchTokensOn(c, backend.WeightBytes) : null;

    static CudaBackend Open(Variant v, bool e4m3, bool w8a8, bool rowsGemm, int rowsFrom)
    {
        var sw = Stopwatch.StartNew();
        var backend = CudaBackend.CreateRandom(v.Config, v.SwiftKv, seed: 1, e4m3: e4m3);
        backend.UseW8A8 = w8a8;
        backend.UseE4m3RowsGemm = rowsGemm;
        backend.E4m3RowsGemmFromRows = rowsFrom;
        Log($"{v.Name}: random weights {backend.WeightBytes / 1e9:F2} GB{(e4m3 ? $" ({backend.E4m3WeightMatrices} matrices e4m3{(w8a8 ? ", W8A8" : "")})" : "")} in {sw.Elapsed.TotalSeconds:F1} s, KV {backend.KvBytesPerTokenOf(v.Dtype) / 1024.0:F1} KiB/token ({v.Dtype})");
        return backend;
    }

    /// <summary>Warms the backend up at the largest step (workspace allocated, kernels compiled), then sizes the pool from the free memory.</summary>
    static ServingOptions PoolOptions(CudaBackend backend, KvCacheDtype dtype, int? blockSizeArg, int? maxBatchArg, int? maxRunningArg, int maxSequence, double headroomGb,
        bool kvAuto, double? kvGb)
    {
        int blockSize = blockSizeArg ?? backend.PreferredBlockSize(dtype), maxBatch = maxBatchArg ?? backend.PreferredMaxBatchTokens,
            maxRunning = maxRunningArg ?? backend.PreferredMaxRunningSequences;
        var warm = new ServingOptions { KvCacheDtype = dtype, BlockSize = blockSize, NumKvBlocks = (maxBatch + 2 * blockSize) / blockSize + 2, MaxBatchTokens = maxBatch, MaxRunningSequences = 8, AdmissionReserveBlocks = 0 };
        using (var engine = new ServingEngine(backend, warm))
        {
            var r = engine.Submit(Tokens(maxBatch, backend.Config.VocabSize, 3), SamplingParams.Greedy, 2);
            r.Completion.GetAwaiter().GetResult();
        }
        // Decode rows: the lm_head workspace for every running sequence at once.
        using (var engine = new ServingEngine(backend, warm with { NumKvBlocks = maxRunning + 4, MaxRunningSequences = maxRunning, MaxBatchTokens = Math.Max(maxBatch, maxRunning) }))
        {
            var rs = Enumerable.Range(0, maxRunning).Select(i => engine.Submit([1 + i % 100], SamplingParams.Greedy, 1)).ToArray();
            Task.WaitAll(rs.Select(r => r.Completion).ToArray());
        }
        CudaRuntime.Synchronize();
        long free = CudaRuntime.MemoryInfo().Free;
        long? kvBytes = kvAuto ? null : kvGb is { } gib ? (long)(gib * (1L << 30))
            : Math.Max(backend.KvBytesPerTokenOf(dtype) * blockSize, free - (long)(headroomGb * (1L << 30)));
        return new ServingOptions
        {
            KvCacheDtype = dtype, BlockSize = blockSize, KvCacheBytes = kvBytes, MaxBatchTokens = maxBatch, MaxRunningSequences = maxRunningArg, MaxSequenceLength = maxSequence,
        };
    }

    static RunResult RunWorkload(CudaBackend backend, ServingOptions opts, int[][] prompts, int output, double maxSeconds, string label,
        SamplingParams? requestSampling = null, int penalised = int.MaxValue, int json = 0, JsonSchemaGrammar? schema = null)
    {
        var tokenBytes = json > 0 ? SyntheticTokenBytes(backend.Config.VocabSize) : null;
        // Sampled runs seed each request by its index, so two runs (and two builds) draw the same uniforms; only the
        // first `penalised` requests keep the frequency penalty.
        SamplingParams ParamsOf(int i)
        {
            var p = requestSampling ?? SamplingParams.Greedy;
            if (i >= penalised) p = p with { FrequencyPenalty = 0 };
            return p.Temperature == 0 ? p : p with { Seed = 1000 + (ulong)i };
        }
        var trace = new StepAccumulator();
        long startedAt = Stopwatch.GetTimestamp();
        using var engine = new ServingEngine(backend, opts with { StepObserver = trace.Add });
        Log($"{label}: engine started in {Stopwatch.GetElapsedTime(startedAt).TotalMilliseconds:F0} ms (the backend's last GEMM plan warm-up took {backend.LastGemmWarmUp.TotalMilliseconds:F0} ms)");
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(maxSeconds));
        int peak = 0;
        using var sampling = new CancellationTokenSource();
        var sampler = Task.Run(async () =>
        {
            while (!sampling.IsCancellationRequested)
            {
                peak = Math.Max(peak, engine.Metrics.RunningSequences);
                try { await Task.Delay(20, sampling.Token); } catch (OperationCanceledException) { }
            }
        });
        var sw = Stopwatch.StartNew();
        var reqs = prompts.Select((p, i) => engine.Submit(p, ParamsOf(i), output, ct: cts.Token,
            constraint: i >= json ? null : schema is null ? new JsonConstraint(tokenBytes!, new HashSet<int>(), output)
                : new JsonSchemaConstraint(schema, tokenBytes!, new HashSet<int>(), output))).ToArray();
        var outcomes = new List<RequestOutcome>();
        foreach (var r in reqs)
        {
            try { outcomes.Add(r.Completion.GetAwaiter().GetResult()); }
            catch (OperationCanceledException) { }
        }
        double wall = sw.Elapsed.TotalSeconds;
        sampling.Cancel();
        sampler.GetAwaiter().GetResult();
        var m = engine.Metrics;
        if (outcomes.Count < reqs.Length) Log($"{label}: {reqs.Length - outcomes.Count} requests cut off by --max-seconds {maxSeconds}");
        static double P(IEnumerable<double> xs, double q)
        {
            var s = xs.Order().ToArray();
            return s.Length == 0 ? 0 : s[Math.Min(s.Length - 1, (int)Math.Ceiling(q * s.Length) - 1)];
        }
        var ttft = outcomes.Select(o => o.TimeToFirstToken.TotalSeconds).ToArray();
        var tpot = outcomes.Where(o => o.OutputTokens > 1).Select(o => o.TimePerOutputToken.TotalSeconds).ToArray();
        return new RunResult(label, reqs.Length, outcomes.Count, outcomes.Sum(o => (long)o.PromptTokens), outcomes.Sum(o => (long)o.OutputTokens), wall,
            P(ttft, 0.5), P(ttft, 0.99), P(tpot, 0.5), P(tpot, 0.99), peak, m.Preemptions, m.Steps,
            m.PrefixCacheQueriedTokens == 0 ? 0 : (double)m.PrefixCacheHitTokens / m.PrefixCacheQueriedTokens, m.KvBlocksTotal, backend.KvBytesPerTokenOf(opts.KvCacheDtype),
            trace.Stats(), engine.BlockSize, engine.MaxBatchTokens, engine.MaxRunningSequences, engine.KvCacheBytes);
    }

    static LlamaConfig SwiftKv(LlamaConfig c, int group) =>
        (c with { SwiftKv = true, ModelType = "llama_swiftkv", NumKeyValueLayers = c.NumHiddenLayers / 2, KeyValueGroupSize = group }).Validate();

    static JsonSchemaGrammar LoadSchema(string path)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            return JsonSchemaGrammar.Compile(doc.RootElement);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException or ArgumentException)
        {
            throw new UsageException($"--json-schema: {path}: {e.Message}");
        }
    }

    /// <summary>A token table for --json: 1-6 random printable ASCII bytes per id (fixed seed), so every single byte exists.</summary>
    static byte[]?[] SyntheticTokenBytes(int vocab)
    {
        var rng = new Random(7);
        var table = new byte[]?[vocab];
        for (int i = 0; i < vocab; i++)
        {
            var b = new byte[i < 95 ? 1 : 1 + rng.Next(6)];
            for (int j = 0; j < b.Length; j++) b[j] = (byte)(i < 95 ? 32 + i : 32 + rng.Next(95));
            table[i] = b;
        }
        return table;
    }

    static int[] Tokens(int n, int vocab, int seed)
    {
        var rng = new Random(seed);
        var t = new int[n];
        for (int i = 0; i < n; i++) t[i] = rng.Next(vocab);
        return t;
    }

    static void Log(string s) => Console.Error.WriteLine("[serve-bench] " + s);
}
