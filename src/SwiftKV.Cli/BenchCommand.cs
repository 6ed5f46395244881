// swiftkv bench: the CUDA backend at a real model's shape with random weights made on the GPU (no checkpoint file),
// plus the card's own ceilings measured in the same process: cuBLAS bf16 GEMM 8192^3 and a device-to-device copy.
// Prefill latency and tokens/s per (sequences x prompt) case, decode ms/token at a given context, SwiftKV off vs on
// (50%) vs on + AcrossKV, KV bytes per token, achieved TFLOP/s and GB/s against the measured ceilings. Optionally
// times the direct checkpoint loader on a directory (--load DIR). GPU times come from CUDA events on the backend's
// stream; each figure is the median of several runs after a warm-up. Writes a markdown table and a JSON file.
// Decode at batch B (--decode-batches 1,32,128): B sequences with the same context in a paged KV pool (block size 16),
// filled by batched prefill steps, then B-row steps of the batched greedy path (ForwardBatchGreedy, one new token
// per sequence), as the serving engine runs them; ms/step, tokens/s = B / step, GB/s of weights + KV read per step;
// steps alternate between the captured step graph (the default) and kernel-by-kernel launches of the same step.
// Batch 1 there is one IChatClient request's decode (every request runs in the serving step), next to the
// single-sequence decode graph's batch 1 above it.
// Prompts arriving together (--batched-prefill 8x2048): the same B prompts prefilled as B separate forwards and as the
// serving engine's batched steps, alternated run by run (SwiftKV's later layers then run once per step, not per prompt).
// The decode linear layers are also timed alone (--gemv-rows): the GEMV kernel against cuBLAS at the preset's
// projection shapes, rotating over enough weight copies that every launch streams from device memory, not L2.
// FLOP counting follows docs/PERFORMANCE.md: 2 x params per token for the linear layers each token passes through,
// 2·S²·head_dim·heads per layer whose attention covers the whole prompt, lm_head once per sequence.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using SwiftKV.Cuda;
using SwiftKV.Engine;
using SwiftKV.Engine.Cuda;
using SwiftKV.Engine.Serving;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;

namespace SwiftKV.Cli;

internal static class BenchCommand
{
    const string Help = "--preset llama-3.1-8b [--prefill 1x2048,1x8192,1x32768] [--decode-context 2048] [--decode-steps 32] [--decode-batches 1,32,128|none] " +
        "[--batched-prefill 8x2048|none] [--batched-step-tokens 0 (the backend's serving step)|16384,...] [--runs 3] [--pause-ms 0] [--decode-splits 8,16] [--variants off,swiftkv50,acrosskv4] [--weights bf16|e4m3|e4m3-w8a8|both|all] [--gemv-rows 1,2,4,8|none] [--max-case-seconds 30] [--rope-on-load on|both] [--gated-mlp on|off|both] [--attention-ws on|off|both] [--fused-qkv on|off|both] [--norm-quantize on|off|both] [--load DIR [--fp8-weights auto|dequantize|keep|keep-w8a8]] [--out bench.json] [--md bench.md]";
    public static string Usage => Help;

    /// <param name="E4m3">Layer matrices as e4m3 codes with row scales, held so (an FP8 checkpoint kept fp8, <see cref="Fp8Weights.Keep"/>).</param>
    /// <param name="W8A8">With E4m3: steps above 8 rows run W8A8 GEMMs (<see cref="CudaBackend.UseW8A8"/>, <see cref="Fp8Weights.KeepW8A8"/>).</param>
    sealed record Variant(string Name, LlamaConfig Config, bool SwiftKv, bool E4m3 = false, bool W8A8 = false);

    public static int Run(CliArgs a)
    {
        string preset = a.String("preset") ?? "llama-3.1-8b";
        // 8x2048 is not among the defaults: --batched-prefill times it both as separate forwards and as serving steps,
        // alternated run by run (BxL still works here).
        var cases = (a.String("prefill") ?? "1x2048,1x8192,1x32768").Split(',', StringSplitOptions.RemoveEmptyEntries).Select(c => ParseCase(c, "--prefill")).ToArray();
        int context = a.Int("decode-context") ?? 2048, steps = a.Int("decode-steps") ?? 32, runs = a.Int("runs") ?? 3;
        double maxCase = a.Float("max-case-seconds") ?? 30;
        // An idle pause before every prefill forward lets the card cool and its clock recover, as before a request
        // that arrives at an idle server; the default (0) times the forwards back to back, as a busy server runs them.
        int pauseMs = a.Int("pause-ms") ?? 0;
        string[] variantNames = (a.String("variants") ?? "off,swiftkv50,acrosskv4").Split(',', StringSplitOptions.RemoveEmptyEntries);
        string? loadDir = a.String("load");
        string? loadFp8Arg = a.String("fp8-weights");
        if (loadFp8Arg is not null && loadDir is null) throw new UsageException("--fp8-weights goes with --load DIR (for random weights: --weights e4m3)");
        var loadFp8 = LogitsCommand.ParseFp8Weights(loadFp8Arg);
        int[] decodeBatches = ParseBatches(a.String("decode-batches") ?? "1,32,128");
        // B prompts admitted together, as the serving engine (every IChatClient request) runs them: batched paged
        // steps of --batched-step-tokens tokens (0: the backend's own serving step), so SwiftKV's later layers run
        // once for the step's B last rows, not once per prompt as in the BxL cases above (separate forwards).
        string batchedArg = a.String("batched-prefill") ?? "8x2048";
        var batchedCases = batchedArg == "none" ? [] : batchedArg.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(c => ParseCase(c, "--batched-prefill")).ToArray();
        int[] batchedStepTokens = (a.String("batched-step-tokens") ?? "0").Split(',', StringSplitOptions.RemoveEmptyEntries)
            .Select(t => int.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n
                : throw new UsageException($"--batched-step-tokens: '{t}' is not a whole number (0 = the backend's serving step)")).ToArray();
        if (batchedStepTokens.Length == 0) throw new UsageException("--batched-step-tokens: give step sizes in tokens (0 = the backend's serving step)");
        int[] decodeSplits = (a.String("decode-splits") ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries)
            .Select(t => int.TryParse(t, out int n) && n >= 1 && n <= SwiftKV.Cuda.Kernels.AttentionKernel.MaxDecodeSplits ? n
                : throw new UsageException($"--decode-splits: '{t}' is not a split count in 1..{SwiftKV.Cuda.Kernels.AttentionKernel.MaxDecodeSplits}")).ToArray();
        string gemvRowsArg = a.String("gemv-rows") ?? "1,2,4,8";
        int[] gemvRows = gemvRowsArg == "none" ? [] : gemvRowsArg.Split(',', StringSplitOptions.RemoveEmptyEntries)
            .Select(t => int.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n
                : throw new UsageException($"--gemv-rows: '{t}' is not a row count in 1..{SwiftKV.Cuda.Kernels.GemvKernel.MaxRows} (or none)")).ToArray();
        if (gemvRows.Any(r => r < 1 || r > SwiftKV.Cuda.Kernels.GemvKernel.MaxRows))
            throw new UsageException($"--gemv-rows: each must be in 1..{SwiftKV.Cuda.Kernels.GemvKernel.MaxRows}");
        string outJson = a.String("out") ?? "bench.json";
        string? outMd = a.String("md");
        string ropeArg = a.String("rope-on-load") ?? "on";
        if (ropeArg is not ("on" or "both")) throw new UsageException($"--rope-on-load: '{ropeArg}' is not one of on (default) or both (each prefill case also with the RoPE pass rotating q in memory)");
        bool ropeBoth = ropeArg == "both";
        bool[] gatedModes = a.OnOffBoth("gated-mlp", "on (default: [gate; up] GEMM with the SwiGLU epilogue on Hopper), off (cuBLAS + silu pass) or both (alternated run by run)");
        bool[] wsModes = a.OnOffBoth("attention-ws", "on (default: warp-specialised wgmma prefill attention on Hopper), off (the two-CTA-per-SM entry) or both (alternated run by run)");
        string weightsArg = a.String("weights") ?? "bf16";
        string[] weightModes = weightsArg switch
        {
            "bf16" or "e4m3" or "e4m3-w8a8" => [weightsArg],
            "both" => ["bf16", "e4m3"],
            "all" => ["bf16", "e4m3", "e4m3-w8a8"],
            _ => throw new UsageException($"--weights: '{weightsArg}' is not bf16 (default), e4m3 (layer matrices as e4m3 codes with row scales, an FP8 " +
                "checkpoint kept fp8), e4m3-w8a8 (the same with W8A8 GEMMs above 8 rows), both (bf16 and e4m3) or all (the three)"),
        };
        bool[] fusedQkvModes = a.OnOffBoth("fused-qkv", "on (default: [q; k; v] GEMM with RoPE and the cache write in its epilogue on Hopper), off (cuBLAS + RoPE pass) or both (alternated run by run)");
        bool normQuantizeGiven = a.String("norm-quantize") is not null;
        bool[] normQuantizeModes = a.OnOffBoth("norm-quantize", "on (default: under W8A8 the RMSNorm writes the GEMM's e4m3 input itself), off (the norm's bf16 rows, then the quantize pass) or both (alternated run by run)");
        if (normQuantizeGiven && !weightModes.Contains("e4m3-w8a8"))
            throw new UsageException("--norm-quantize: sets a W8A8 pass, so --weights must include e4m3-w8a8 (or all)");
        a.RejectUnknown();
        if (runs < 1 || steps < 1 || context < 1) throw new UsageException("--runs, --decode-steps and --decode-context must be >= 1");
        if (!(maxCase > 0) || double.IsInfinity(maxCase)) throw new UsageException($"--max-case-seconds: must be a finite number of seconds > 0 (got {maxCase})");
        if (pauseMs is < 0 or > 60_000) throw new UsageException($"--pause-ms: {pauseMs} is not in 0..60000");
        CliArgs.CheckOutputFile("out", outJson);
        if (outMd is not null) CliArgs.CheckOutputFile("md", outMd);
        if (loadDir is not null) LlamaConfig.Load(CliArgs.CheckModelDirectory(loadDir, "load"));

        var baseCfg = ModelPresets.Get(preset);
        var variants = variantNames.Select(v => v switch
        {
            "off" => new Variant("SwiftKV off", baseCfg, false),
            "swiftkv50" => new Variant("SwiftKV 50%", SwiftKv(baseCfg, 1), true),
            "acrosskv4" => new Variant("SwiftKV 50% + AcrossKV 4", SwiftKv(baseCfg, 4), true),
            _ => throw new UsageException($"--variants: unknown '{v}' (off, swiftkv50, acrosskv4)"),
        }).SelectMany(v => weightModes.Select(w => w switch
        {
            "e4m3" => v with { Name = v.Name + ", e4m3 weights", E4m3 = true },
            "e4m3-w8a8" => v with { Name = v.Name + ", e4m3 weights, W8A8", E4m3 = true, W8A8 = true },
            _ => v,
        })).ToArray();

        // After every option is checked, so a typo is named on a machine without a GPU too.
        if (!CudaRuntime.TryInitialize(out var why)) throw new NotSupportedException("bench needs a CUDA GPU: " + why);
        var dev = CudaRuntime.Device;
        var json = new JsonObject
        {
            ["device"] = dev.ToString(),
            ["date_utc"] = DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture),
            ["commit"] = Environment.GetEnvironmentVariable("SWIFTKV_COMMIT") ?? "",
            ["preset"] = preset,
        };
        var md = new StringBuilder();
        Log($"device: {dev}");

        var (tflops, fp8Tflops, copyGbps) = Roofline(variants.Any(v => v.W8A8) && SwiftKV.Cuda.Kernels.ActivationFp8Kernel.Supported(dev));
        json["roofline"] = new JsonObject { ["gemm_bf16_8192_tflops"] = tflops, ["gemm_w8a8_8192_tflops"] = fp8Tflops, ["d2d_copy_gbps_read_plus_write"] = copyGbps };
        md.AppendLine($"Card: {dev.Name}. Ceilings measured in this run: cuBLAS bf16 GEMM 8192^3 **{tflops:F0} TFLOP/s**, device-to-device copy **{copyGbps:F0} GB/s** (read + write)" +
            (fp8Tflops > 0 ? $"; cuBLASLt W8A8 GEMM 8192^3 (e4m3, a scale per row of each operand) **{fp8Tflops:F0} TFLOP/s**: the W8A8 variants' prefill percentages are of this one." : "."));
        md.AppendLine();

        if (loadDir is not null) json["load"] = BenchLoad(loadDir, md, loadFp8);
        if (gemvRows.Length > 0) json["gemv"] = BenchGemv(baseCfg, gemvRows, copyGbps, md);

        md.AppendLine("| variant | workload | time | tokens/s | TFLOP/s (% of GEMM) | GB/s (% of copy) | note |");
        md.AppendLine("|---|---|---|---|---|---|---|");
        var results = new JsonArray();
        foreach (var v in variants)
        {
            var vj = BenchVariant(v, cases, context, steps, decodeBatches, runs, maxCase, v.W8A8 ? fp8Tflops : tflops, copyGbps, md, ropeBoth, gatedModes, wsModes, fusedQkvModes, normQuantizeModes, decodeSplits, pauseMs,
                batchedCases, batchedStepTokens);
            results.Add(vj);
        }
        json["variants"] = results;
        if (decodeBatches.Length > 0)
        {
            md.AppendLine();
            md.AppendLine($"Decode b>1: paged KV (block size {DecodeBlockSize}), context filled by batched prefill steps of <= {DecodePrefillTokens} tokens, " +
                "then ForwardBatchGreedy steps of one token per sequence; ms = median step by CUDA events after 3 warm-up steps; " +
                "GB/s = (weights except the embedding table + K/V every layer reads for every sequence; AcrossKV shrinks the pool, not these reads) / step time.");
        }

        Console.WriteLine();
        Console.WriteLine(md.ToString());
        File.WriteAllText(outJson, json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        if (outMd is not null) File.WriteAllText(outMd, md.ToString());
        Log($"wrote {outJson}" + (outMd is null ? "" : $" and {outMd}"));
        return 0;
    }

    static LlamaConfig SwiftKv(LlamaConfig c, int group) =>
        (c with { SwiftKv = true, ModelType = "llama_swiftkv", NumKeyValueLayers = c.NumHiddenLayers / 2, KeyValueGroupSize = group }).Validate();

    internal static int[] ParseBatches(string s)
    {
        if (s == "none") return [];
        var parts = s.Split(',', StringSplitOptions.RemoveEmptyEntries);
        var r = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out r[i]) || r[i] < 1)
                throw new UsageException($"--decode-batches: '{parts[i]}' is not a batch size >= 1 (e.g. 32,128, or none)");
        if (r.Length == 0) throw new UsageException("--decode-batches: give batch sizes (e.g. 32,128) or none");
        return r;
    }

    static (int Batch, int Length) ParseCase(string s, string option)
    {
        var p = s.Split('x');
        if (p.Length != 2 || !int.TryParse(p[0], out int b) || !int.TryParse(p[1], out int n) || b < 1 || n < 1)
            throw new UsageException($"{option}: '{s}' is not BATCHxLENGTH (e.g. 8x2048)");
        return (b, n);
    }

    static void Log(string s) => Console.Error.WriteLine("[bench] " + s);

    /// <summary>
    /// cuBLAS bf16 GEMM 8192^3 (fp32 accumulate), with <paramref name="w8a8"/> the W8A8 GEMM of the same shape (e4m3
    /// operands with row scales, as the engine runs it; 0 when cuBLASLt refuses), and a 2 GiB device-to-device copy,
    /// medians of 10 after 3 warm-ups.
    /// </summary>
    static (double Tflops, double Fp8Tflops, double CopyGbps) Roofline(bool w8a8)
    {
        const int n = 8192;
        using var stream = new CudaStream();
        using var blas = new Cublas(stream);
        using var kernels = new KernelLibrary();
        var fill = new SwiftKV.Cuda.Kernels.RandomFillKernel(kernels);
        using var x = new DeviceBuffer<Bf16>((long)n * n);
        using var w = new DeviceBuffer<Bf16>((long)n * n);
        using var y = new DeviceBuffer<float>((long)n * n);
        fill.Uniform(stream, x, 1, 1f);
        fill.Uniform(stream, w, 2, 1f);
        double gemm = Median(3, 10, stream, () => blas.Linear(x, n, n, w, n, y));
        double fp8 = 0;
        if (w8a8)
        {
            var quantize = new SwiftKV.Cuda.Kernels.ActivationFp8Kernel(kernels);
            using var xCodes = new DeviceBuffer<byte>((long)n * n);
            using var wCodes = new DeviceBuffer<byte>((long)n * n);
            using var xScales = new DeviceBuffer<float>(n);
            using var wScales = new DeviceBuffer<float>(n);
            var xq = new SwiftKV.Cuda.Kernels.E4m3Rows(xCodes.Span, xScales.Span);
            var wq = new SwiftKV.Cuda.Kernels.E4m3Rows(wCodes.Span, wScales.Span);
            quantize.QuantizeRows(stream, x, n, n, xq);
            quantize.QuantizeRows(stream, w, n, n, wq);
            if (blas.TryLinearE4m3(xq, n, n, wq, n, y))
                fp8 = Median(3, 10, stream, () => blas.TryLinearE4m3(xq, n, n, wq, n, y));
        }
        const long bytes = 2L << 30;
        using var src = new DeviceBuffer<byte>(bytes);
        using var dst = new DeviceBuffer<byte>(bytes);
        double copy = Median(3, 10, stream, () => stream.CopyDeviceAsync(dst.Address, src.Address, bytes));
        double tflops = 2.0 * n * n * n / (gemm * 1e-3) / 1e12, gbps = 2.0 * bytes / (copy * 1e-3) / 1e9;
        double fp8Tflops = fp8 > 0 ? 2.0 * n * n * n / (fp8 * 1e-3) / 1e12 : 0;
        Log($"roofline: GEMM {gemm:F3} ms = {tflops:F0} TFLOP/s; " + (fp8 > 0 ? $"W8A8 GEMM {fp8:F3} ms = {fp8Tflops:F0} TFLOP/s; " : "") + $"copy {copy:F3} ms = {gbps:F0} GB/s");
        return (tflops, fp8Tflops, gbps);
    }

    /// <summary>Median milliseconds of <paramref name="work"/> by CUDA events on <paramref name="stream"/>.</summary>
    static double Median(int warmup, int runs, CudaStream stream, Action work)
    {
        using var e0 = new CudaEvent();
        using var e1 = new CudaEvent();
        for (int i = 0; i < warmup; i++) work();
        stream.Synchronize();
        var t = new List<double>();
        for (int i = 0; i < runs; i++)
        {
            e0.Record(stream);
            work();
            e1.Record(stream);
            t.Add(CudaEvent.ElapsedMs(e0, e1));
        }
        return MedianOf(t);
    }

    // On a sorted copy: the callers report the runs in the order they ran (until 2026-11-27 ~12:45 UTC the lists in the
    // JSON and the log were sorted by this function).
    static double MedianOf(List<double> t)
    {
        var v = t.Order().ToList();
        return v.Count % 2 == 1 ? v[v.Count / 2] : 0.5 * (v[v.Count / 2 - 1] + v[v.Count / 2]);
    }

    static JsonObject BenchLoad(string dir, StringBuilder md, Fp8Weights fp8)
    {
        var config = LlamaConfig.Load(dir);
        var sw = Stopwatch.StartNew();
        using var backend = CudaBackend.Load(dir, config.SwiftKv, fp8);
        double total = sw.Elapsed.TotalSeconds;
        using var cache = backend.CreateCache(64);
        int token = backend.NextToken(cache, [1, 2, 3], new GpuSampling());
        // Decode from the loaded weights (a checkpoint's layout, not the random ones'): the median of 32 graph steps.
        var steps = new List<double>();
        for (int i = 0; i < 35; i++)
        {
            var t0 = Stopwatch.GetTimestamp();
            token = backend.NextToken(cache, [token], new GpuSampling());
            if (i >= 3) steps.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
        }
        double decodeMs = MedianOf(steps), gb = backend.LoadedBytes / 1e9;
        string held = backend.E4m3WeightMatrices > 0 ? $"{backend.E4m3WeightMatrices} matrices kept as e4m3, " : "";
        Log($"load {dir} (--fp8-weights {fp8}): {gb:F2} GB in {total:F2} s ({backend.LoadSeconds:F2} s streaming) = {gb / backend.LoadSeconds:F2} GB/s; " +
            $"{held}{backend.WeightBytes / 1e9:F2} GB on the GPU; decode {decodeMs:F2} ms/token (host wall, median of 32)");
        md.AppendLine($"Direct load of `{dir}` ({gb:F2} GB safetensors, Fp8Weights.{fp8}): **{total:F2} s** end to end, {backend.LoadSeconds:F2} s of streaming to the GPU " +
            $"({gb / backend.LoadSeconds:F2} GB/s); {held}{backend.WeightBytes / 1e9:F2} GB of weights on the GPU; decode {decodeMs:F2} ms a token (host wall, one graph, context < 64).");
        md.AppendLine();
        return new JsonObject
        {
            ["dir"] = dir, ["fp8_weights"] = fp8.ToString(), ["bytes"] = backend.LoadedBytes, ["seconds_total"] = total, ["seconds_streaming"] = backend.LoadSeconds,
            ["weight_bytes"] = backend.WeightBytes, ["e4m3_matrices"] = backend.E4m3WeightMatrices, ["decode_ms_host"] = decodeMs,
        };
    }

    static JsonObject BenchVariant(Variant v, (int Batch, int Length)[] cases, int context, int steps, int[] decodeBatches, int runs, double maxCase,
        double roofTflops, double roofGbps, StringBuilder md, bool ropeBoth, bool[] gatedModes, bool[] wsModes, bool[] fusedQkvModes, bool[] normQuantizeModes, int[]? decodeSplits = null, int pauseMs = 0,
        (int Batch, int Length)[]? batchedCases = null, int[]? batchedStepTokens = null)
    {
        var cfg = v.Config;
        var sw = Stopwatch.StartNew();
        using var backend = CudaBackend.CreateRandom(cfg, v.SwiftKv, seed: 7, e4m3: v.E4m3);
        backend.UseW8A8 = v.W8A8;
        Log($"{v.Name}: random weights {backend.WeightBytes / 1e9:F2} GB made on the GPU in {sw.Elapsed.TotalSeconds:F2} s" +
            (v.E4m3 ? $" ({backend.E4m3WeightMatrices} matrices as e4m3, dequantize scratch {backend.DequantizeScratchBytes / 1e9:F2} GB)" : ""));
        var vj = new JsonObject { ["name"] = v.Name, ["weight_bytes"] = backend.WeightBytes, ["e4m3_matrices"] = backend.E4m3WeightMatrices };
        long kvPerToken;
        using (var probe = backend.CreateCache(16)) kvPerToken = probe.KvBytes / 16;
        vj["kv_bytes_per_token"] = kvPerToken;
        md.AppendLine($"| {v.Name} | KV cache per token | | | | | {kvPerToken / 1024.0:F0} KiB ({cfg.NumKvCaches(v.SwiftKv)} caches) |");

        // Settings compared within a case: their timed runs alternate, so clock and power drift reach all alike.
        var modes = (ropeBoth ? new[] { true, false } : [true])
            .SelectMany(r => gatedModes.SelectMany(g => wsModes.SelectMany(w => fusedQkvModes.SelectMany(f =>
                (v.W8A8 ? normQuantizeModes : [true]).Select(nq => new PrefillMode(r, g, w, f, nq)))))).ToArray();
        string ModeText(PrefillMode m) =>
            (pauseMs > 0 ? $" (from idle: {pauseMs} ms pause before each run)" : "")
            + (m.RopeOnLoad ? "" : m.FusedQkv ? " (RoPE on load off: no effect beside the fused [q; k; v] GEMM)" : " (RoPE pass rotates q in memory)")
            + (m.Gated ? "" : " (cuBLAS [gate; up] + silu pass)")
            + (m.Ws ? "" : " (two-CTA wgmma attention)") + (m.FusedQkv ? "" : " (cuBLAS [q | k | v] + RoPE pass)")
            + (m.NormQuantize ? "" : " (RMSNorm, then the quantize pass)");
        var prefill = new JsonArray();
        double? lastPerToken2 = null;   // seconds / length^2 of the previous case: extrapolates attention-bound cases
        foreach (var (batch, length) in cases)
        {
            if (length > cfg.MaxPositionEmbeddings) continue;
            double flops = batch * PrefillFlops(cfg, v.SwiftKv, length);
            // Every run times each mode, so the case costs about modes.Length times one forward.
            if (lastPerToken2 is { } k && (k * length * length * batch + pauseMs / 1000.0) * modes.Length > maxCase)
            {
                double est = k * length * length * batch;
                foreach (var m in modes)
                {
                    Log($"{v.Name}: prefill {batch}x{length}{ModeText(m)} skipped: estimated {est:F0} s per forward x {modes.Length} modes > --max-case-seconds {maxCase}");
                    md.AppendLine($"| {v.Name} | prefill {batch}x{length}{ModeText(m)} | skipped | | | | estimated {est:F0} s with this attention kernel |");
                    prefill.Add(new JsonObject { ["batch"] = batch, ["length"] = length, ["rope_on_load"] = m.RopeOnLoad, ["gated_mlp"] = m.Gated, ["attention_ws"] = m.Ws,
                        ["fused_qkv"] = m.FusedQkv, ["norm_quantize"] = v.W8A8 ? m.NormQuantize : null, ["skipped_estimated_s"] = est });
                }
                continue;
            }
            var times = modes.Select(_ => new List<double>()).ToArray();
            var gatedRan = new bool[modes.Length];   // whether the gated GEMM really ran (Hopper, a cluster fits)
            var wsRan = new bool[modes.Length];      // whether the warp-specialised attention entry really ran
            var fusedRan = new bool[modes.Length];   // whether the fused [q; k; v] GEMM really ran
            var normQuantizeRan = new bool[modes.Length];   // whether the fused RMSNorm + quantize pass really ran (W8A8)
            var tokens = Tokens(length, cfg.VocabSize, 11);
            for (int r = 0; r <= runs; r++)
            {
                bool slow = false;
                for (int m = 0; m < modes.Length; m++)
                {
                    backend.UseRopeOnLoad = modes[m].RopeOnLoad;
                    backend.UseGatedMlp = modes[m].Gated;
                    backend.UseWarpSpecializedAttention = modes[m].Ws;
                    backend.UseFusedQkv = modes[m].FusedQkv;
                    backend.UseFusedNormQuantize = modes[m].NormQuantize;
                    long gatedBefore = backend.GatedMlpLaunches, wsBefore = backend.WarpSpecializedAttentionLaunches, fusedBefore = backend.FusedQkvLaunches,
                        normQuantizeBefore = backend.FusedNormQuantizeLaunches;
                    var caches = Enumerable.Range(0, batch).Select(_ => backend.CreateCache(length)).ToList();
                    if (pauseMs > 0)
                    {
                        backend.Stream.Synchronize();
                        Thread.Sleep(pauseMs);
                    }
                    using var e0 = new CudaEvent();
                    using var e1 = new CudaEvent();
                    e0.Record(backend.Stream);
                    foreach (var c in caches) backend.Forward(c, tokens, LogitsSelection.LastToken);
                    e1.Record(backend.Stream);
                    double ms = CudaEvent.ElapsedMs(e0, e1);
                    foreach (var c in caches) c.Dispose();
                    gatedRan[m] = backend.GatedMlpLaunches > gatedBefore;
                    wsRan[m] = backend.WarpSpecializedAttentionLaunches > wsBefore;
                    fusedRan[m] = backend.FusedQkvLaunches > fusedBefore;
                    normQuantizeRan[m] = backend.FusedNormQuantizeLaunches > normQuantizeBefore;
                    if (r > 0) times[m].Add(ms);
                    slow |= ms > 5000;
                }
                // A slow case is timed once. Never the warm-up itself: on a cold kernel cache it includes NVRTC
                // compiles (seconds), which also made the extrapolation skip the longer cases.
                if (r == 1 && slow) break;
            }
            for (int m = 0; m < modes.Length; m++)
            {
                var (ropeOnLoad, gated, ws, fused, normQuantize) = modes[m];
                // Under W8A8 the fused GEMMs' bf16 epilogues give way to cuBLASLt's fp8 GEMMs, by design.
                string mode = ModeText(modes[m]) + (v.W8A8 ? " (W8A8: fp8 GEMMs, then the RoPE and silu passes)"
                    : (gated && !gatedRan[m] ? " (gated GEMM not available here: cuBLAS + silu pass ran)" : "") + (fused && !fusedRan[m] ? " (fused [q; k; v] GEMM did not run)" : ""))
                    + (ws && !wsRan[m] ? " (warp-specialised attention did not run)" : "")
                    + (v.W8A8 && normQuantize && !normQuantizeRan[m] ? " (fused RMSNorm + quantize did not run)" : "");
                double med = MedianOf(times[m]), tps = batch * length / (med * 1e-3), tf = flops / (med * 1e-3) / 1e12;
                if (m == 0) lastPerToken2 = med * 1e-3 / ((double)length * length * batch);
                string runsText = string.Join(" / ", times[m].Select(t => t.ToString("F1", CultureInfo.InvariantCulture)));
                Log($"{v.Name}: prefill {batch}x{length}{mode}: {med:F1} ms, {tps:F0} tokens/s, {tf:F0} TFLOP/s (runs {runsText} ms)");
                md.AppendLine($"| {v.Name} | prefill {batch}x{length}{mode} | {med:F1} ms | {tps:F0} | {tf:F0} ({100 * tf / roofTflops:F0}%) | | {times[m].Count} timed |");
                prefill.Add(new JsonObject { ["batch"] = batch, ["length"] = length, ["rope_on_load"] = ropeOnLoad, ["gated_mlp"] = gated, ["gated_mlp_ran"] = gatedRan[m],
                    ["attention_ws"] = ws, ["attention_ws_ran"] = wsRan[m], ["fused_qkv"] = fused, ["fused_qkv_ran"] = fusedRan[m],
                    ["norm_quantize"] = v.W8A8 ? normQuantize : null, ["norm_quantize_ran"] = normQuantizeRan[m], ["pause_ms"] = pauseMs, ["ms"] = med,
                    ["tokens_per_s"] = tps, ["tflops"] = tf, ["flops"] = flops, ["runs"] = times[m].Count, ["run_ms"] = new JsonArray(times[m].Select(t => (JsonNode?)t).ToArray()) });
            }
        }
        if (batchedCases is { Length: > 0 } && backend.SupportsBatchedStep)
            vj["prefill_batched"] = BenchBatchedPrefill(v, backend, batchedCases, batchedStepTokens ?? [0], runs, roofTflops, pauseMs, md);
        backend.UseRopeOnLoad = true;
        backend.UseGatedMlp = gatedModes[0];   // the decode parts fill their contexts with the first modes asked for
        backend.UseWarpSpecializedAttention = wsModes[0];
        backend.UseFusedQkv = fusedQkvModes[0];
        backend.UseFusedNormQuantize = normQuantizeModes[0];
        vj["prefill"] = prefill;
        vj["decode"] = BenchDecode(v, backend, context, steps, roofGbps, kvPerToken, decodeSplits ?? [], md);
        if (decodeBatches.Length > 0 && !backend.SupportsBatchedStep)
            Log($"{v.Name}: decode b>1 skipped: no batched paged step for head_dim {cfg.HeadDim} on this card");
        else if (decodeBatches.Length > 0) vj["decode_batched"] = BenchDecodeBatched(v, backend, decodeBatches, context, steps, roofGbps, md);
        vj["w8a8_gemms"] = backend.W8A8Gemms;   // > 0 shows the W8A8 route ran (0 for the other variants)
        if (v.W8A8) Log($"{v.Name}: {backend.W8A8Gemms} W8A8 GEMMs run");
        return vj;
    }

    const int DecodeBlockSize = 16, DecodePrefillTokens = 8192, DecodeWarmup = 3;

    /// <summary>
    /// B prompts of L tokens prefilled together through the batched paged step (ForwardBatchGreedy, the first token
    /// picked on the device), in steps of at most T tokens, with the block size the serving engine takes on this
    /// backend: what the IChatClient does when B requests arrive at once. Beside it, in the same alternation, the same
    /// prompts as B separate single-sequence forwards (contiguous caches, the BxL case above), so the two ways compare
    /// on the same card state: the thermal drift of a power-capped card moves figures between cases by more than
    /// the difference. One timed prefill = every step (or forward) of the B prompts, CUDA events around them; median
    /// of <paramref name="runs"/> after a warm-up. The pool is written again by every run (no prefix reuse here).
    /// </summary>
    static JsonArray BenchBatchedPrefill(Variant v, CudaBackend backend, (int Batch, int Length)[] cases, int[] stepTokens, int runs, double roofTflops, int pauseMs,
        StringBuilder md)
    {
        var cfg = v.Config;
        var all = new JsonArray();
        int blockSize = backend.PreferredBlockSize(KvCacheDtype.Bf16);
        // Step 0 below stands for the separate forwards; the others are batched step sizes in tokens.
        int[] steps = [0, .. stepTokens.Select(t => t > 0 ? t : backend.PreferredMaxBatchTokens).Distinct()];
        foreach (var (batch, length) in cases)
        {
            if (length > cfg.MaxPositionEmbeddings) continue;
            double flops = batch * PrefillFlops(cfg, v.SwiftKv, length);
            var plans = steps.Select(t => new BatchedDecodePlan(batch, length, 0, 1, blockSize, t > 0 ? t : length)).ToArray();
            IPagedKvCache? pool = null;
            bool reserved = false;
            try
            {
                backend.ReserveStepWorkspace(steps.Max(), batch);
                reserved = true;
                pool = backend.CreatePagedKvCache(plans[0].TotalBlocks, blockSize);
                var tables = Enumerable.Range(0, batch).Select(plans[0].Table).ToArray();
                var prompts = Enumerable.Range(0, batch).Select(s => Tokens(length, cfg.VocabSize, 200 + s)).ToArray();
                var times = steps.Select(_ => new List<double>()).ToArray();
                var stepCounts = new int[steps.Length];
                using var e0 = new CudaEvent();
                using var e1 = new CudaEvent();
                for (int r = 0; r <= runs; r++)
                    for (int m = 0; m < steps.Length; m++)
                    {
                        var chunkSteps = plans[m].PrefillSteps().ToArray();
                        stepCounts[m] = steps[m] > 0 ? chunkSteps.Length : batch;
                        var caches = steps[m] > 0 ? [] : Enumerable.Range(0, batch).Select(_ => backend.CreateCache(length)).ToList();
                        if (pauseMs > 0)
                        {
                            backend.Stream.Synchronize();
                            Thread.Sleep(pauseMs);
                        }
                        e0.Record(backend.Stream);
                        if (steps[m] == 0)
                            for (int s = 0; s < batch; s++) backend.Forward(caches[s], prompts[s], LogitsSelection.LastToken);
                        else
                            foreach (var chunks in chunkSteps)
                            {
                                var step = chunks.Select(c => new BatchSequence(prompts[c.Seq].AsMemory(c.Start, c.Count), c.Start,
                                    tables[c.Seq].AsMemory(0, plans[m].BlocksFor(c.Start + c.Count)), c.EndsContext)).ToArray();
                                backend.ForwardBatchGreedy(pool, step);
                            }
                        e1.Record(backend.Stream);
                        if (r > 0) times[m].Add(CudaEvent.ElapsedMs(e0, e1));
                        foreach (var c in caches) c.Dispose();
                    }
                for (int m = 0; m < steps.Length; m++)
                {
                    double med = MedianOf(times[m]), tps = batch * length / (med * 1e-3), tf = flops / (med * 1e-3) / 1e12;
                    string runsText = string.Join(" / ", times[m].Select(t => t.ToString("F1", CultureInfo.InvariantCulture)));
                    string what = (steps[m] > 0 ? $"prefill {batch}x{length} batched (paged, block {blockSize}, {stepCounts[m]} step(s) of <= {steps[m]} tokens)"
                        : $"prefill {batch}x{length} as {batch} separate forwards (alternated with the batched steps)") + (pauseMs > 0 ? $" (from idle: {pauseMs} ms pause)" : "");
                    Log($"{v.Name}: {what}: {med:F1} ms, {tps:F0} tokens/s, {tf:F0} TFLOP/s (runs {runsText} ms)");
                    md.AppendLine($"| {v.Name} | {what} | {med:F1} ms | {tps:F0} | {tf:F0} ({100 * tf / roofTflops:F0}%) | | {times[m].Count} timed |");
                    all.Add(new JsonObject { ["batch"] = batch, ["length"] = length, ["separate_forwards"] = steps[m] == 0, ["block_size"] = blockSize,
                        ["step_tokens"] = steps[m] > 0 ? steps[m] : null, ["steps"] = stepCounts[m],
                        ["pause_ms"] = pauseMs, ["ms"] = med, ["tokens_per_s"] = tps, ["tflops"] = tf, ["flops"] = flops,
                        ["run_ms"] = new JsonArray(times[m].Select(t => (JsonNode?)t).ToArray()) });
                }
            }
            catch (Exception e) when (e is CudaException or InvalidOperationException)   // out of memory: the workspace or the pool
            {
                Log($"{v.Name}: batched prefill {batch}x{length} failed: {e.Message}");
                md.AppendLine($"| {v.Name} | prefill {batch}x{length} batched | failed | | | | {e.Message} |");
                all.Add(new JsonObject { ["batch"] = batch, ["length"] = length, ["error"] = e.Message });
            }
            finally
            {
                pool?.Dispose();
                if (reserved) backend.ReleaseStepWorkspace(steps.Max(), batch);
            }
        }
        return all;
    }

    /// <summary>
    /// Decode steps of B sequences at once through the batched paged path: a pool sized for every sequence's context
    /// plus its decode tokens, the contexts filled by batched prefill steps, then one greedy token per sequence per
    /// step with block tables grown as positions cross blocks. A batch whose pool does not fit is reported as such.
    /// </summary>
    static JsonArray BenchDecodeBatched(Variant v, CudaBackend backend, int[] batches, int context, int steps, double roofGbps, StringBuilder md)
    {
        var cfg = v.Config;
        var all = new JsonArray();
        long weightRead = backend.WeightBytes - (cfg.TieWordEmbeddings ? 0 : (long)cfg.VocabSize * cfg.HiddenSize * 2);
        long kvPerToken = backend.KvBytesPerToken;
        // KV bytes attention READS per position: every layer reads its cache, so AcrossKV (several layers on one
        // stored cache) shrinks the pool, not the traffic; the per-layer caches of a 128-sequence batch are far
        // larger than L2, so a shared cache is read again by each layer of its group.
        long kvReadPerPosition = 2L * cfg.NumHiddenLayers * cfg.KeyValueDim * 2;
        foreach (int b in batches)
        {
            // Graphs on and off alternate step by step (the same contexts and card state for both): each mode's warm-up
            // and timed steps all advance the sequences.
            bool[] modes = [true, false];
            var plan = new BatchedDecodePlan(b, context, DecodeWarmup * modes.Length, steps * modes.Length, DecodeBlockSize, DecodePrefillTokens);
            if (plan.PositionsPerSequence > cfg.MaxPositionEmbeddings) continue;
            double poolGb = (double)plan.TotalBlocks * DecodeBlockSize * kvPerToken / 1e9;
            IPagedKvCache? pool = null;
            try
            {
                pool = backend.CreatePagedKvCache(plan.TotalBlocks, DecodeBlockSize);
                var tables = Enumerable.Range(0, b).Select(plan.Table).ToArray();
                var contexts = Enumerable.Range(0, b).Select(s => Tokens(context, cfg.VocabSize, 100 + s)).ToArray();
                var next = new int[b];
                var sw = Stopwatch.StartNew();
                foreach (var chunks in plan.PrefillSteps())
                {
                    var batch = chunks.Select(c => new BatchSequence(contexts[c.Seq].AsMemory(c.Start, c.Count), c.Start,
                        tables[c.Seq].AsMemory(0, plan.BlocksFor(c.Start + c.Count)), c.EndsContext)).ToArray();
                    var picked = backend.ForwardBatchGreedy(pool, batch);
                    int k = 0;
                    foreach (var c in chunks) if (c.EndsContext) next[c.Seq] = picked[k++];
                }
                double prefillS = sw.Elapsed.TotalSeconds;
                var rows = new BatchSequence[b];
                var tokenBox = Enumerable.Range(0, b).Select(_ => new int[1]).ToArray();
                int position = context;
                void Step()
                {
                    for (int s = 0; s < b; s++)
                    {
                        tokenBox[s][0] = next[s];
                        rows[s] = new BatchSequence(tokenBox[s], position, tables[s].AsMemory(0, plan.BlocksFor(position + 1)), true);
                    }
                    next = backend.ForwardBatchGreedy(pool, rows);
                    position++;
                }
                for (int i = 0; i < plan.WarmupSteps; i++)
                {
                    backend.UseGraphs = modes[i % modes.Length];
                    Step();
                }
                var gpu = modes.Select(_ => new List<double>()).ToArray();
                var wall = modes.Select(_ => new List<double>()).ToArray();
                using var e0 = new CudaEvent();
                using var e1 = new CudaEvent();
                for (int i = 0; i < plan.TimedSteps; i++)
                {
                    int m = i % modes.Length;
                    backend.UseGraphs = modes[m];
                    long t0 = Stopwatch.GetTimestamp();
                    e0.Record(backend.Stream);
                    Step();
                    e1.Record(backend.Stream);
                    gpu[m].Add(CudaEvent.ElapsedMs(e0, e1));
                    wall[m].Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
                }
                backend.UseGraphs = true;
                if (backend.StepGraphFailure is { } failure) Log($"{v.Name}: decode batch {b}: {failure}");
                for (int m = 0; m < modes.Length; m++)
                {
                    double ms = MedianOf(gpu[m]), wallMs = MedianOf(wall[m]), tps = b / (ms * 1e-3);
                    double kvRead = (double)kvReadPerPosition * b * plan.MeanTimedContext, bytes = weightRead + kvRead;
                    double gbps = bytes / (ms * 1e-3) / 1e9;
                    string mode = modes[m] ? (backend.StepGraphFailure is null ? "graph replay" : "graphs failed: launches") : "kernel launches";
                    Log($"{v.Name}: decode batch {b}, context {context}, {mode}: {ms:F3} ms/step GPU (events), {wallMs:F3} ms host wall, {tps:F0} tokens/s, {gbps:F0} GB/s " +
                        $"(weights {weightRead / 1e9:F2} GB + KV {kvRead / 1e9:F2} GB); pool {plan.TotalBlocks} blocks = {poolGb:F1} GB, prefill {prefillS:F1} s");
                    md.AppendLine($"| {v.Name} | decode b{b} ctx {context} (paged, batched greedy, {mode}) | {ms:F2} ms/step | {tps:F0} | | {gbps:F0} ({100 * gbps / roofGbps:F0}%) | " +
                        $"host wall {wallMs:F2} ms/step; reads {weightRead / 1e9:F1} GB weights + {kvRead / 1e9:F1} GB KV per step |");
                    all.Add(new JsonObject { ["batch"] = b, ["context"] = context, ["block_size"] = DecodeBlockSize, ["pool_blocks"] = plan.TotalBlocks, ["pool_bytes"] = poolGb * 1e9,
                        ["graphs"] = modes[m], ["graph_failure"] = backend.StepGraphFailure, ["ms_per_step"] = ms, ["host_wall_ms"] = wallMs, ["tokens_per_s"] = tps,
                        ["weight_bytes_read"] = weightRead, ["kv_bytes_read"] = kvRead, ["gbps"] = gbps, ["prefill_seconds"] = prefillS, ["timed_steps"] = steps });
                }
            }
            catch (CudaException e)
            {
                Log($"{v.Name}: decode batch {b} failed ({poolGb:F1} GB pool): {e.Message}");
                md.AppendLine($"| {v.Name} | decode b{b} ctx {context} (paged, batched greedy) | failed | | | | {poolGb:F1} GB pool: {e.Message} |");
                all.Add(new JsonObject { ["batch"] = b, ["context"] = context, ["pool_bytes"] = poolGb * 1e9, ["error"] = e.Message });
            }
            finally
            {
                backend.UseGraphs = true;
                pool?.Dispose();
            }
        }
        return all;
    }

    static JsonArray BenchDecode(Variant v, CudaBackend backend, int context, int steps, double roofGbps, long kvPerToken, int[] splitCounts, StringBuilder md)
    {
        var cfg = v.Config;
        var all = new JsonArray();
        // Weights a decode step reads: everything but the embedding table (one row of it), at batch 1.
        long weightRead = backend.WeightBytes - (cfg.TieWordEmbeddings ? 0 : (long)cfg.VocabSize * cfg.HiddenSize * 2);
        bool pdlDefault = backend.UseProgrammaticLaunch;
        // fused: norms folded into the GEMVs, attention with the fused combine inside one graph (the default);
        // off = the previous decode path, timed in the same run. splits 0: the automatic split count of the attention
        // (recorded as attention_splits null in the JSON).
        var configs = new List<(int Ctx, bool Graphs, bool Gemv, bool Pdl, bool Prefetch, bool Fused, int Splits)>
        {
            (context, true, true, true, false, true, 0), (context, false, true, true, false, true, 0),
            (16, true, true, true, false, true, 0), (context, true, true, true, false, false, 0), (context, false, true, true, false, false, 0),
            (context, true, true, false, false, true, 0), (context, true, false, false, false, false, 0),
        };
        configs.AddRange(splitCounts.Select(n => (context, true, true, true, false, true, n)));
        foreach (var (ctx, graphs, gemv, pdl, prefetch, fused, splits) in configs)
        {
            backend.UseFusedDecode = fused;
            backend.UseGraphs = graphs;
            backend.UseGemv = gemv;
            backend.UseProgrammaticLaunch = pdl && pdlDefault;
            backend.UseGemvPrefetch = prefetch;
            backend.DecodeAttentionSplits = splits;
            using var cache = backend.CreateCache(ctx + steps + 8);
            backend.Forward(cache, Tokens(ctx, cfg.VocabSize, 13), LogitsSelection.LastToken);
            int token = 1;
            for (int i = 0; i < 3; i++) token = backend.NextToken(cache, [token], new GpuSampling());
            var gpu = new List<double>();
            var wall = new List<double>();
            using var e0 = new CudaEvent();
            using var e1 = new CudaEvent();
            for (int i = 0; i < steps; i++)
            {
                long t0 = Stopwatch.GetTimestamp();
                e0.Record(backend.Stream);
                token = backend.NextToken(cache, [token], new GpuSampling());
                e1.Record(backend.Stream);
                gpu.Add(CudaEvent.ElapsedMs(e0, e1));
                wall.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
            }
            double ms = MedianOf(gpu), wallMs = MedianOf(wall);
            double bytes = weightRead + (double)kvPerToken * (ctx + 3 + steps / 2);
            double gbps = bytes / (ms * 1e-3) / 1e9;
            string mode = (graphs ? (fused ? "one graph" : "graph segments") : "no graphs") + (gemv ? "" : ", cuBLAS linears") + (pdl && pdlDefault ? "" : ", no PDL")
                + (prefetch ? ", GEMV L2 prefetch" : "") + (splits > 0 ? $", {splits} attention splits" : "") + (fused ? "" : ", previous path: separate norms + combine");
            Log($"{v.Name}: decode batch 1, context {ctx}, {mode}: {ms:F3} ms/token GPU (events), {wallMs:F3} ms host wall, {gbps:F0} GB/s");
            md.AppendLine($"| {v.Name} | decode b1 ctx {ctx} ({mode}) | {ms:F2} ms | {1000 / ms:F0} | | {gbps:F0} ({100 * gbps / roofGbps:F0}%) | host wall {wallMs:F2} ms/token; greedy on GPU |");
            all.Add(new JsonObject { ["batch"] = 1, ["context"] = ctx, ["graphs"] = graphs, ["gemv"] = gemv, ["programmatic_launch"] = pdl && pdlDefault, ["gemv_l2_prefetch"] = prefetch, ["fused_decode"] = fused,
                ["attention_splits"] = splits > 0 ? splits : null, ["ms_per_token"] = ms, ["host_wall_ms"] = wallMs, ["bytes_read"] = bytes, ["gbps"] = gbps });
        }
        backend.UseFusedDecode = true;
        backend.UseGraphs = true;
        backend.UseGemv = true;
        backend.UseProgrammaticLaunch = pdlDefault;
        backend.UseGemvPrefetch = false;
        backend.DecodeAttentionSplits = 0;
        return all;
    }

    /// <summary>
    /// The decode projections alone at <paramref name="cfg"/>'s shapes: GEMV kernel vs cuBLAS (fp32 output, as the
    /// engine used before), per row count. Each timed run launches once per weight copy (copies chosen so they add
    /// up to >= 512 MB, 10x the H100's L2), so every byte comes from device memory; time per launch = run / copies.
    /// GB/s counts the weight bytes (x and y are under 0.3% of them).
    /// </summary>
    static JsonArray BenchGemv(LlamaConfig cfg, int[] rowsList, double roofGbps, StringBuilder md)
    {
        int h = cfg.HiddenSize, q = cfg.QueryDim, kv = cfg.KeyValueDim, f = cfg.IntermediateSize;
        var shapes = new (string Name, int Out, int In, bool Silu, bool Accumulate)[]
        {
            ("qkv_proj", q + 2 * kv, h, false, false), ("o_proj (+residual)", h, q, false, true),
            ("gate_up_proj (+silu)", f, h, true, false), ("down_proj (+residual)", h, f, false, true), ("lm_head", cfg.VocabSize, h, false, false),
        };
        using var stream = new CudaStream();
        using var blas = new Cublas(stream);
        using var kernels = new KernelLibrary();
        var fill = new SwiftKV.Cuda.Kernels.RandomFillKernel(kernels);
        var gemv = new SwiftKV.Cuda.Kernels.GemvKernel(kernels);
        md.AppendLine("Decode projections alone (weights streamed from device memory; GB/s = weight bytes / time):");
        md.AppendLine();
        bool pdl = kernels.ProgrammaticLaunch;
        md.AppendLine($"| linear | W (out x in) | rows | GEMV{(pdl ? " (PDL)" : "")} | GB/s (% of copy) | GEMV, plain launches | GB/s | GEMV{(pdl ? " (PDL)" : "")} + L2 prefetch | GB/s | cuBLAS GemmEx fp32 out | GB/s | GEMV vs cuBLAS |");
        md.AppendLine("|---|---|---|---|---|---|---|---|---|---|---|---|");
        var all = new JsonArray();
        var layerBytes = new Dictionary<int, (double Bytes, double Gemv, double Blas)>();
        foreach (var (name, outDim, inDim, silu, accumulate) in shapes)
        {
            int wOut = silu ? 2 * outDim : outDim;
            long elems = (long)wOut * inDim, bytes = elems * 2;
            int copies = (int)Math.Clamp((512L << 20) / bytes + 1, 1, 64);
            using var w = new DeviceBuffer<Bf16>(elems * copies);
            using var x = new DeviceBuffer<Bf16>(8L * inDim);
            using var y = new DeviceBuffer<float>(8L * wOut);
            using var yb = new DeviceBuffer<Bf16>(8L * outDim);
            fill.Uniform(stream, w, 3, 0.02f);
            fill.Uniform(stream, x, 4, 1f);
            foreach (int rows in rowsList)
            {
                void RunGemv()
                {
                    for (int c = 0; c < copies; c++)
                    {
                        var wc = w.Span.Slice(c * elems, elems);
                        if (silu) gemv.LaunchSiluMul(stream, x.Span.Slice(0, (long)rows * inDim), rows, inDim, wc, outDim, yb.Span.Slice(0, (long)rows * outDim));
                        else gemv.Launch(stream, x.Span.Slice(0, (long)rows * inDim), rows, inDim, wc, outDim, y.Span.Slice(0, (long)rows * outDim), accumulate);
                    }
                }
                double g = Median(2, 10, stream, RunGemv) / copies;
                kernels.ProgrammaticLaunch = false;
                double gPlain = Median(2, 10, stream, RunGemv) / copies;
                kernels.ProgrammaticLaunch = pdl;
                gemv.PrefetchWeights = true;
                double gPf = Median(2, 10, stream, RunGemv) / copies;
                gemv.PrefetchWeights = false;
                double b = Median(2, 10, stream, () =>
                {
                    for (int c = 0; c < copies; c++)
                        blas.Linear(x.Span.Slice(0, (long)rows * inDim), rows, inDim, w.Span.Slice(c * elems, elems), wOut, y.Span.Slice(0, (long)rows * wOut), accumulate);
                }) / copies;
                double gg = bytes / (g * 1e-3) / 1e9, pg = bytes / (gPlain * 1e-3) / 1e9, fg = bytes / (gPf * 1e-3) / 1e9, bg = bytes / (b * 1e-3) / 1e9;
                Log($"gemv {name} {wOut}x{inDim} rows {rows}: {g * 1000:F1} us = {gg:F0} GB/s (plain launches {gPlain * 1000:F1} us); cuBLAS {b * 1000:F1} us = {bg:F0} GB/s");
                md.AppendLine($"| {name} | {wOut} x {inDim} | {rows} | {g * 1000:F1} us | {gg:F0} ({100 * gg / roofGbps:F0}%) | {gPlain * 1000:F1} us | {pg:F0} | {gPf * 1000:F1} us | {fg:F0} | {b * 1000:F1} us | {bg:F0} | {b / g:F2}x |");
                all.Add(new JsonObject { ["linear"] = name, ["out"] = wOut, ["in"] = inDim, ["rows"] = rows, ["copies"] = copies,
                    ["gemv_us"] = g * 1000, ["gemv_gbps"] = gg, ["gemv_plain_launch_us"] = gPlain * 1000, ["gemv_l2_prefetch_us"] = gPf * 1000, ["programmatic_launch"] = pdl, ["cublas_us"] = b * 1000, ["cublas_gbps"] = bg, ["vector_path"] = gemv.LastWasVector });
                if (name != "lm_head")
                {
                    var t = layerBytes.GetValueOrDefault(rows);
                    layerBytes[rows] = (t.Bytes + bytes, t.Gemv + g, t.Blas + b);
                }
            }
        }
        foreach (var (rows, t) in layerBytes.OrderBy(p => p.Key))
        {
            double gg = t.Bytes / (t.Gemv * 1e-3) / 1e9, bg = t.Bytes / (t.Blas * 1e-3) / 1e9;
            md.AppendLine($"| one layer (4 linears) | {t.Bytes / 1e6:F0} MB | {rows} | {t.Gemv * 1000:F1} us | {gg:F0} ({100 * gg / roofGbps:F0}%) | | | | | {t.Blas * 1000:F1} us | {bg:F0} | {t.Blas / t.Gemv:F2}x |");
            all.Add(new JsonObject { ["linear"] = "layer", ["rows"] = rows, ["bytes"] = t.Bytes, ["gemv_us"] = t.Gemv * 1000, ["gemv_gbps"] = gg, ["cublas_us"] = t.Blas * 1000, ["cublas_gbps"] = bg });
        }
        md.AppendLine();
        return all;
    }

    /// <summary>FLOPs of one prefill of <paramref name="s"/> tokens that returns the last token's logits.</summary>
    static double PrefillFlops(LlamaConfig c, bool swiftKv, int s)
    {
        double h = c.HiddenSize, q = c.QueryDim, kv = c.KeyValueDim, f = c.IntermediateSize;
        double attnProj = h * q * 2, mlp = 3 * h * f, fullLayer = h * (q + 2 * kv) + h * q + mlp;
        double attn = 2.0 * s * s * c.HeadDim * c.NumAttentionHeads;   // causal QK^T + PV per layer
        double lmHead = 2.0 * h * c.VocabSize;
        if (!swiftKv) return c.NumHiddenLayers * (2 * fullLayer * s + attn) + lmHead;
        int l = c.NumKeyValueLayers, later = c.NumHiddenLayers - l;
        int leaders = Enumerable.Range(l, later).Count(c.IsKvGroupLeader);
        double perToken = l * 2 * fullLayer + 2 * h * leaders * 2 * kv;
        double lastToken = later * (2 * (attnProj + mlp) + 4.0 * s * c.HeadDim * c.NumAttentionHeads);
        return perToken * s + l * attn + lastToken + lmHead;
    }

    static int[] Tokens(int n, int vocab, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => r.Next(vocab)).ToArray();
    }

    /// <summary>The prefill settings one timed run of a case uses (modes asked as "both" alternate run by run).</summary>
    readonly record struct PrefillMode(bool RopeOnLoad, bool Gated, bool Ws, bool FusedQkv, bool NormQuantize);
}
