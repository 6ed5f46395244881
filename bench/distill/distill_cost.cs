// What a distillation step costs against an inference forward of the same tokens, on this machine's CPU.
// Run: dotnet run bench/distill/distill_cost.cs -c Release -- [preset] [sequences] [tokens] [l] [g]
// Makes a random checkpoint of the preset, transforms it to SwiftKV (l, g), then times on the same random sequences:
//   forward: CpuBackend, SwiftKV off, logits of every token (the teacher's inference);
//   score:   DistillationModel.Run without gradients (teacher and student, the loss);
//   step:    Distiller.TrainStep (score + backward + Adam).
// Median of 3 after a warm-up.
#:project ../../src/SwiftKV.Engine/SwiftKV.Engine.csproj
#:property PublishAot=false
using System.Diagnostics;
using SwiftKV.Engine;
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Distillation;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;

string preset = args.Length > 0 ? args[0] : "demo";
int sequences = args.Length > 1 ? int.Parse(args[1]) : 4, tokens = args.Length > 2 ? int.Parse(args[2]) : 256;
int l = args.Length > 3 ? int.Parse(args[3]) : 4, g = args.Length > 4 ? int.Parse(args[4]) : 1;
string root = Directory.CreateTempSubdirectory("swiftkv-distill-cost-").FullName;
try
{
    string baseDir = Path.Combine(root, "base"), dir = Path.Combine(root, "skv");
    ModelMaker.Write(baseDir, ModelPresets.Get(preset), new ModelMakerOptions { Seed = 1, Dtype = TensorDtype.BF16 });
    var config = SwiftKvConverter.Convert(baseDir, dir, l, g);
    var r = new Random(2);
    var batch = Enumerable.Range(0, sequences).Select(_ =>
    {
        var t = Enumerable.Range(0, tokens).Select(_ => r.Next(config.VocabSize)).ToArray();
        return new DistillationSequence(t, t.Select((_, i) => i < tokens - 1).ToArray());
    }).ToList();

    using var checkpoint = SafetensorsCheckpoint.Open(dir);
    var (teacher, student) = Distiller.LoadTeacherAndStudent(dir, config, checkpoint);
    var model = new DistillationModel(teacher, student, 2f);
    using var backend = new CpuBackend(teacher);
    var grads = model.Parameters.ZerosLike();
    var adam = new Adam(model.Parameters);

    double Time(Action a)
    {
        a();
        var runs = new List<double>();
        for (int i = 0; i < 3; i++) { var sw = Stopwatch.StartNew(); a(); runs.Add(sw.Elapsed.TotalSeconds); }
        return runs.Order().ElementAt(1);
    }
    double forward = Time(() =>
    {
        foreach (var s in batch)
        {
            using var cache = backend.CreateCache(tokens);
            backend.Forward(cache, s.Tokens, LogitsSelection.AllTokens);
        }
    });
    double score = Time(() => { foreach (var s in batch) model.Run(s.Tokens, s.LossMask); });
    double step = Time(() => Distiller.TrainStep(model, adam, grads, batch, 1e-5));
    Console.WriteLine($"{preset} ({config.NumHiddenLayers} layers, hidden {config.HiddenSize}, vocab {config.VocabSize}), SwiftKV l={l} g={g}, " +
        $"{sequences} x {tokens} tokens, {Environment.ProcessorCount} cores, .NET {Environment.Version}");
    Console.WriteLine($"forward (teacher inference, all logits): {forward:F2} s; score (teacher + student): {score:F2} s = {score / forward:F2}x; " +
        $"train step: {step:F2} s = {step / forward:F2}x forward; {sequences * tokens / step:F0} tokens/s trained");
}
finally
{
    Directory.Delete(root, recursive: true);
}
