// Data-parallel distillation end to end (swiftkv distill --gpus 2): the CLI built beside this suite (SWIFTKV_CLI names
// its swiftkv.dll) distils one small checkpoint on one GPU and on two, in exact fp32 GEMMs, and the two results must be
// the same training: the ranks sum their shares' gradients over NCCL, so only the order of the float sums differs.
// Needs two GPUs; skips otherwise.
using System.Diagnostics;
using SwiftKV.Model;
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Cuda.Tests;

public sealed class DataParallelDistillTests : IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("swiftkv-dp-").FullName;

    static (int Code, string Out, string Err) Cli(params string[] args)
    {
        string cli = Environment.GetEnvironmentVariable("SWIFTKV_CLI")!;
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        info.ArgumentList.Add(cli);
        foreach (var a in args) info.ArgumentList.Add(a);
        using var p = Process.Start(info)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(4))) p.Kill(entireProcessTree: true);
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <param name="sequences">24: whole batches of 6; 25: the last batch holds one sequence, so one rank's share is empty.</param>
    /// <param name="unequal">Replies of 2 or 60 words: the ranks' shares score very different numbers of positions, so a
    /// rank that scaled its gradient by its own share instead of the whole batch would step in another direction (Adam
    /// hides a uniform scale, not that).</param>
    [Theory]
    [InlineData(24, false)]
    [InlineData(25, true)]
    public void TwoGpus_TrainAsOne(int sequences, bool unequal)
    {
        Gpu.Require();
        Assert.SkipUnless(CudaRuntime.DeviceCount >= 2, $"needs two GPUs ({CudaRuntime.DeviceCount} visible)");
        Assert.SkipWhen(string.IsNullOrEmpty(Environment.GetEnvironmentVariable("SWIFTKV_CLI")), "SWIFTKV_CLI (the CLI's swiftkv.dll) is not set");
        string b = Path.Combine(_root, "base"), skv = Path.Combine(_root, "skv"), data = Path.Combine(_root, "chats.jsonl");
        Assert.Equal(0, Cli("make-model", "--preset", "llama-3.2-1b", "--layers", "4", "--out", b, "--seed", "1", "--dtype", "fp32").Code);
        Assert.Equal(0, Cli("transform", "--model", b, "--out", skv, "--swiftkv-layers", "2", "--group-size", "2").Code);
        var r = new Random(3);
        string[] words = "revenue costs margin growth quarter churn pipeline forecast region product launch delay budget".Split(' ');
        string Words(int n) => string.Join(' ', Enumerable.Range(0, n).Select(_ => words[r.Next(words.Length)]));
        File.WriteAllLines(data, Enumerable.Range(0, sequences).Select(i =>
            $"{{\"messages\": [{{\"role\": \"user\", \"content\": \"Summarize: {Words(10 + 5 * (i % 7))}\"}}, {{\"role\": \"assistant\", \"content\": \"{Words(unequal ? (i % 2 == 0 ? 2 : 60) : 20)}\"}}]}}"));

        string[] common = ["distill", "--model", skv, "--data", data, "--backend", "cuda", "--gemm", "fp32", "--batch-size", "6", "--epochs", "2", "--lr", "1e-3"];
        var one = Cli([.. common, "--out", Path.Combine(_root, "one")]);
        var two = Cli([.. common, "--out", Path.Combine(_root, "two"), "--gpus", "2"]);
        Gpu.Log($"one GPU: {one.Out.Trim().Split('\n')[^1]}");
        Gpu.Log($"two GPUs: {two.Out.Trim().Split('\n')[^1]}");
        Assert.True(one.Code == 0, one.Err);
        Assert.True(two.Code == 0, two.Err);
        Assert.Contains("data parallel: 2 GPUs", two.Out);
        // The score before training is summed over both ranks' shares: the same loss and agreement as one GPU's.
        string Before((int, string Out, string) run) => run.Out.Split('\n').Single(l => l.StartsWith("before,", StringComparison.Ordinal));
        Assert.Equal(Before(one), Before(two));
        Assert.Equal(one.Out.Split('\n').Count(l => l.StartsWith("step ", StringComparison.Ordinal)), two.Out.Split('\n').Count(l => l.StartsWith("step ", StringComparison.Ordinal)));

        // The trained tensors (fp32 checkpoint: nothing rounded on writing): their change from the start agrees.
        using var start = SafetensorsCheckpoint.Open(skv);
        using var a = SafetensorsCheckpoint.Open(Path.Combine(_root, "one"));
        using var c = SafetensorsCheckpoint.Open(Path.Combine(_root, "two"));
        int compared = 0;
        double worst = 0;
        foreach (var name in a.TensorNames.Where(n => n.Contains("swiftkv", StringComparison.Ordinal)))
        {
            float[] s0 = start.ReadFloat32(name), x = a.ReadFloat32(name), y = c.ReadFloat32(name);
            double diff = 0, moved = 0;
            for (int i = 0; i < x.Length; i++)
            {
                diff += (double)(x[i] - y[i]) * (x[i] - y[i]);
                moved += (double)(x[i] - s0[i]) * (x[i] - s0[i]);
            }
            Assert.True(moved > 0, $"{name} did not train");
            double rel = Math.Sqrt(diff / moved);
            worst = Math.Max(worst, rel);
            Assert.True(rel < 1e-3, $"{name}: two GPUs' update differs from one GPU's by {rel:E2} of its size");
            compared++;
        }
        Assert.True(compared > 0);
        Gpu.Log($"{compared} trained tensors: two GPUs' updates differ from one GPU's by at most {worst:E2} of their size (relative L2)");
    }

    public void Dispose() => Directory.Delete(_root, recursive: true);
}
