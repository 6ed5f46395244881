// Data-parallel distillation end to end (swiftkv distill --gpus 2): the CLI built beside this suite (SWIFTKV_CLI names
// its swiftkv.dll) distils one small checkpoint on one GPU and on two, in exact fp32 GEMMs, and the two results must be
// the same training: the ranks sum their shares' gradients over NCCL, so only the order of the float sums differs.
// Then the two ways a run can lose a process, provoked on real ranks: a rank killed mid-run (as the OOM killer would),
// which leaves its peer waiting in a collective for it, and the launcher killed, which must take its ranks with it.
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

    static void RequireTwoGpusAndCli()
    {
        Gpu.Require();
        Assert.SkipUnless(CudaRuntime.DeviceCount >= 2, $"needs two GPUs ({CudaRuntime.DeviceCount} visible)");
        Assert.SkipWhen(string.IsNullOrEmpty(Environment.GetEnvironmentVariable("SWIFTKV_CLI")), "SWIFTKV_CLI (the CLI's swiftkv.dll) is not set");
    }

    /// <summary>A small SwiftKV checkpoint and <paramref name="sequences"/> chats; returns (checkpoint, data).</summary>
    (string Model, string Data) MakeRun(int sequences, bool unequal)
    {
        string b = Path.Combine(_root, "base"), skv = Path.Combine(_root, "skv"), data = Path.Combine(_root, "chats.jsonl");
        Assert.Equal(0, Cli("make-model", "--preset", "llama-3.2-1b", "--layers", "4", "--out", b, "--seed", "1", "--dtype", "fp32").Code);
        Assert.Equal(0, Cli("transform", "--model", b, "--out", skv, "--swiftkv-layers", "2", "--group-size", "2").Code);
        var r = new Random(3);
        string[] words = "revenue costs margin growth quarter churn pipeline forecast region product launch delay budget".Split(' ');
        string Words(int n) => string.Join(' ', Enumerable.Range(0, n).Select(_ => words[r.Next(words.Length)]));
        File.WriteAllLines(data, Enumerable.Range(0, sequences).Select(i =>
            $"{{\"messages\": [{{\"role\": \"user\", \"content\": \"Summarize: {Words(10 + 5 * (i % 7))}\"}}, {{\"role\": \"assistant\", \"content\": \"{Words(unequal ? (i % 2 == 0 ? 2 : 60) : 20)}\"}}]}}"));
        return (skv, data);
    }

    /// <summary>The ranks the launcher <paramref name="launcherPid"/> started that are still alive, by rank (from /proc's command lines).</summary>
    static Dictionary<int, int> RanksOf(int launcherPid)
    {
        var found = new Dictionary<int, int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid)) continue;
            string[] argv;
            try { argv = File.ReadAllText(Path.Combine(dir, "cmdline")).Split('\0'); }
            catch (IOException) { continue; }
            catch (UnauthorizedAccessException) { continue; }
            int lp = Array.IndexOf(argv, "--launcher-pid"), rk = Array.IndexOf(argv, "--rank");
            if (lp < 0 || rk < 0 || lp + 1 >= argv.Length || rk + 1 >= argv.Length || argv[lp + 1] != launcherPid.ToString(System.Globalization.CultureInfo.InvariantCulture)) continue;
            // A zombie (exited, not yet reaped by the launcher) is not running.
            try { if (File.ReadAllText(Path.Combine(dir, "stat")).Split(") ")[^1].StartsWith('Z')) continue; }
            catch (IOException) { continue; }
            found[int.Parse(argv[rk + 1], System.Globalization.CultureInfo.InvariantCulture)] = pid;
        }
        return found;
    }

    /// <summary>Starts `distill --gpus 2` long enough to be stopped part-way, and waits for its third step line.</summary>
    (Process Launcher, StringWriter Out, StringWriter Err) StartLongRun()
    {
        var (model, data) = MakeRun(24, unequal: false);
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Environment.GetEnvironmentVariable("SWIFTKV_CLI")!, "distill", "--model", model, "--data", data, "--backend", "cuda",
                     "--batch-size", "6", "--epochs", "500", "--lr", "1e-4", "--out", Path.Combine(_root, "killed"), "--gpus", "2" })
            info.ArgumentList.Add(a);
        var p = Process.Start(info)!;
        StringWriter output = new(), errors = new();
        var stepped = new ManualResetEventSlim();
        int steps = 0;
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (output) output.WriteLine(e.Data);
            if (e.Data.StartsWith("step ", StringComparison.Ordinal) && Interlocked.Increment(ref steps) >= 3) stepped.Set();
        };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (errors) errors.WriteLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        if (!stepped.Wait(TimeSpan.FromMinutes(2)))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"the run did not reach its third step in 2 minutes (exited: {p.HasExited}).\n{output}\n{errors}");
        }
        return (p, output, errors);
    }

    /// <summary>
    /// Rank 1 killed mid-run: rank 0 is left in an all-reduce that will never complete. The launcher must name rank 1,
    /// stop rank 0 (asked, then killed) and fail, in seconds: not hang, and not leave rank 0 holding its GPU.
    /// </summary>
    [Fact]
    public void TwoGpus_RankKilledMidRun_LauncherNamesItAndStopsThePeer()
    {
        RequireTwoGpusAndCli();
        var (p, output, errors) = StartLongRun();
        using var _ = p;
        try
        {
            var ranks = RanksOf(p.Id);
            Assert.True(ranks.ContainsKey(0) && ranks.ContainsKey(1), $"ranks found: {string.Join(", ", ranks.Keys)}");
            var killedAt = Stopwatch.StartNew();
            using (var rank1 = Process.GetProcessById(ranks[1])) rank1.Kill();
            Assert.True(p.WaitForExit(TimeSpan.FromSeconds(60)), $"the launcher did not end within 60 s of rank 1's death.\n{errors}");
            p.WaitForExit();
            Gpu.Log($"rank 1 killed: the launcher ended {killedAt.Elapsed.TotalSeconds:F1} s later with {p.ExitCode}; " +
                    $"its last error line: {errors.ToString().Trim().Split('\n')[^1]}");
            Assert.NotEqual(0, p.ExitCode);
            Assert.Contains("rank 1 (GPU", errors.ToString());
            Assert.Empty(RanksOf(p.Id));
            string outDir = Path.Combine(_root, "killed");
            Assert.False(Directory.Exists(outDir) && Directory.EnumerateFiles(outDir, "*.safetensors").Any(), "a failed run wrote a checkpoint");
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
            foreach (var pid in RanksOf(p.Id).Values) try { Process.GetProcessById(pid).Kill(); } catch (ArgumentException) { }
        }
    }

    /// <summary>The launcher itself killed (SIGKILL: nothing of it runs): its ranks must end too (PR_SET_PDEATHSIG), not train on.</summary>
    [Fact]
    public void TwoGpus_LauncherKilled_RanksEndWithIt()
    {
        RequireTwoGpusAndCli();
        var (p, _, errors) = StartLongRun();
        using var _p = p;
        int launcher = p.Id;
        try
        {
            Assert.Equal(2, RanksOf(launcher).Count);
            var killedAt = Stopwatch.StartNew();
            p.Kill(entireProcessTree: false);
            p.WaitForExit();
            while (RanksOf(launcher).Count > 0 && killedAt.Elapsed < TimeSpan.FromSeconds(30)) Thread.Sleep(100);
            var left = RanksOf(launcher);
            Gpu.Log($"launcher killed: ranks left after {killedAt.Elapsed.TotalSeconds:F1} s: {left.Count}");
            Assert.True(left.Count == 0, $"ranks {string.Join(", ", left.Keys)} outlived their launcher by 30 s.\n{errors}");
        }
        finally
        {
            foreach (var pid in RanksOf(launcher).Values) try { Process.GetProcessById(pid).Kill(); } catch (ArgumentException) { }
        }
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
        RequireTwoGpusAndCli();
        var (skv, data) = MakeRun(sequences, unequal);

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
