// What a distillation step costs on the GPU (CudaDistillationTrainer), at a real model's shape with random weights.
// Run: dotnet run bench/distill/distill_gpu.cs -c Release -- [preset] [sequences] [tokens] [modes] [packs] [weights]
//   preset: llama-3.2-1b | llama-3.1-8b | ... (ModelPresets); SwiftKV 50% (l = L/2), AcrossKV off (g = 1)
//   modes: tf32,fp32 (the GEMMs' precision; both by default)
//   packs: tokens a pass may hold, e.g. 0,8192 (0, the default: one sequence a pass)
//   weights: fp32 (the default) | bf16: the values rounded to bf16 first, as a BF16 checkpoint's are, so the trainer
//   holds the frozen layer matrices in bf16
// Weights are random, made on the host (norms near 1, the rest ~N(0, 0.02)); every token but the last is scored.
// Times, median of 3 after a warm-up: a score (teacher + student forward and the loss, no gradients) and a train step
// (score + backward + Adam) over the batch. Counts the step's FLOPs (GEMMs and the materialised attention) and
// measures cuBLAS's fp32/TF32 GEMM rate at 8192³ in the same process as the ceiling.
#:project ../../src/SwiftKV.Engine/SwiftKV.Engine.csproj
#:property PublishAot=false
#:property AllowUnsafeBlocks=true
using System.Diagnostics;
using SwiftKV.Cuda;
using SwiftKV.Engine.Distillation;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;

string preset = args.Length > 0 ? args[0] : "llama-3.2-1b";
int sequences = args.Length > 1 ? int.Parse(args[1]) : 4, tokens = args.Length > 2 ? int.Parse(args[2]) : 2048;
string[] modes = (args.Length > 3 ? args[3] : "tf32,fp32").Split(',');
int[] packs = (args.Length > 4 ? args[4] : "0").Split(',').Select(int.Parse).ToArray();
bool bf16 = (args.Length > 5 ? args[5] : "fp32") switch { "fp32" => false, "bf16" => true, var w => throw new ArgumentException($"weights '{w}': fp32 or bf16") };
var baseConfig = ModelPresets.Get(preset);
var config = (baseConfig with { SwiftKv = true, ModelType = "llama_swiftkv", NumKeyValueLayers = baseConfig.NumHiddenLayers / 2, KeyValueGroupSize = 1 }).Validate();
if (!CudaRuntime.TryInitialize(out var why)) { Console.WriteLine("no CUDA: " + why); return 1; }

var sw = Stopwatch.StartNew();
var specs = LlamaTensorNames.ForModel(config, false).Concat(LlamaTensorNames.ForModel(config, true)).DistinctBy(s => s.Name).ToList();
var tensors = new System.Collections.Concurrent.ConcurrentDictionary<string, float[]>(StringComparer.Ordinal);
Parallel.ForEach(specs, (spec, _, index) =>
{
    var a = new float[spec.ElementCount];
    bool norm = spec.Name.EndsWith("norm.weight", StringComparison.Ordinal) || spec.Name.EndsWith("layernorm.weight", StringComparison.Ordinal)
        || spec.Name.EndsWith("norm_swiftkv.weight", StringComparison.Ordinal);
    ulong x = 0x9E3779B97F4A7C15UL * (ulong)(index + 1);
    for (long i = 0; i < a.LongLength; i++)
    {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        float u = (x >> 40) / (float)(1UL << 24) - 0.5f;   // uniform in [-0.5, 0.5): std 0.289
        a[i] = norm ? 1f + 0.1f * u : 0.0693f * u;          // std 0.02
        if (bf16) a[i] = BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(a[i]) & 0xFFFF0000u);
    }
    tensors[spec.Name] = a;
});
var teacher = LlamaWeightMap.Build(config, false, tensors);
var student = LlamaWeightMap.Build(config, true, tensors);
Console.WriteLine($"made {specs.Sum(s => s.ElementCount) / 1e9:F2}B random {(bf16 ? "bf16-exact" : "fp32")} values in {sw.Elapsed.TotalSeconds:F1} s");

var r = new Random(2);
var batch = Enumerable.Range(0, sequences).Select(_ =>
{
    var t = Enumerable.Range(0, tokens).Select(_ => r.Next(config.VocabSize)).ToArray();
    return new DistillationSequence(t, t.Select((_, i) => i < tokens - 1).ToArray());
}).ToList();

// FLOPs of one sequence's step as the trainer computes it (attention over the full T x T square, as materialised).
long T = tokens, n = tokens - 1, h = config.HiddenSize, q = config.QueryDim, kv = config.KeyValueDim, inter = config.IntermediateSize, vocab = config.VocabSize;
int L = config.NumHiddenLayers, l = config.NumKeyValueLayers, later = L - l;
double layerGemm = 2.0 * T * (h * q + 2 * h * kv + q * h + 3 * h * inter);          // a full layer's projections
double attn = 2.0 * 2 * T * T * config.HeadDim * config.NumAttentionHeads;       // Q·Kᵀ and P·V
double laterStudent = 2.0 * T * (h * q + q * h + 3 * h * inter);                  // q_swiftkv, o, MLP
double kvGemm = 2.0 * T * h * 2 * kv * later;                                      // SingleInputKV
double head = 2.0 * n * h * vocab;
double forward = L * (layerGemm + attn) + kvGemm + later * (laterStudent + attn) + 2 * head;
double backward = head + later * (laterStudent + 2.0 * T * q * h + 5 * attn / 2) + 2 * kvGemm;   // input grads, q weight grad, attention's 5 products + recompute
double stepFlops = sequences * (forward + backward), scoreFlops = sequences * forward;

double Ceiling(bool tf32)
{
    using var stream = new CudaStream();
    using var blas = new Cublas(stream);
    const int N = 8192;
    using var a = new DeviceBuffer<float>((long)N * N);
    using var b = new DeviceBuffer<float>((long)N * N);
    using var c = new DeviceBuffer<float>((long)N * N);
    void Run() => blas.GemmF32(false, false, N, N, N, a, N, b, N, c, N, 0f, tf32);
    Run();
    using var e0 = new CudaEvent();
    using var e1 = new CudaEvent();
    e0.Record(stream);
    for (int i = 0; i < 5; i++) Run();
    e1.Record(stream);
    e1.Synchronize();
    return 5 * 2.0 * N * N * N / (CudaEvent.ElapsedMs(e0, e1) / 1e3) / 1e12;
}

Console.WriteLine($"{CudaRuntime.Device}; {preset} ({L} layers, hidden {h}, vocab {vocab}), SwiftKV l={l} g=1, {sequences} x {tokens} tokens; " +
    $"{stepFlops / 1e12:F1} TFLOP a step, {scoreFlops / 1e12:F1} a score");
foreach (var mode in modes)
foreach (int pack in packs)
{
    bool tf32 = mode == "tf32";
    double ceiling = Ceiling(tf32);
    sw.Restart();
    using var trainer = new CudaDistillationTrainer(teacher, student, 2f, 0f, tf32, pack);
    double upload = sw.Elapsed.TotalSeconds;
    double Time(Action a)
    {
        a();
        var runs = new List<double>();
        for (int i = 0; i < 3; i++) { var s = Stopwatch.StartNew(); a(); runs.Add(s.Elapsed.TotalSeconds); }
        return runs.Order().ElementAt(1);
    }
    double score = Time(() => trainer.Score(batch));
    double step = Time(() => trainer.TrainStep(batch, 1e-6));
    var (free, total) = CudaRuntime.MemoryInfo();
    Console.WriteLine($"{mode}, pack {pack}, weights {(bf16 ? $"bf16 ({trainer.Bf16Values / 1e9:F2}B frozen values in bf16)" : "fp32")}: upload {upload:F1} s; score {score:F3} s ({scoreFlops / score / 1e12:F0} TFLOP/s); " +
        $"step {step:F3} s ({stepFlops / step / 1e12:F0} TFLOP/s, {100 * stepFlops / step / 1e12 / ceiling:F0}% of the {ceiling:F0} TFLOP/s {mode} GEMM ceiling); " +
        $"{sequences * tokens / step:F0} tokens/s trained; GPU memory in use {(total - free) / 1e9:F1} GB");
}
return 0;
