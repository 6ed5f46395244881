// `swiftkv distill --gpus N`: one worker process per GPU (this same command with --rank R --world N --rendezvous DIR,
// CUDA_VISIBLE_DEVICES naming its one GPU), as torchrun starts PyTorch's ranks. One process per GPU keeps the CUDA
// layer's one-device-per-process model; the ranks sum their gradients over NCCL. This process only supervises: it
// passes rank 0's output through, names a rank that fails, and stops the others then (a rank left waiting in a
// collective for a dead peer would wait forever).
using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;

namespace SwiftKV.Cli;

internal static partial class DataParallelLauncher
{
    const int SigTerm = 15;

    [LibraryImport("libc", SetLastError = true)] private static partial int kill(int pid, int signal);
    [LibraryImport("libc", SetLastError = true)] private static partial int prctl(int option, nuint arg2);

    /// <summary>
    /// In a rank: ends this process when the launcher dies (killed with SIGKILL, it cannot stop the ranks itself), so no
    /// rank is left holding a GPU. Linux only (prctl PR_SET_PDEATHSIG); the check after it covers a launcher already gone.
    /// </summary>
    public static void EndWithTheLauncher(int launcherPid)
    {
        if (!OperatingSystem.IsLinux()) return;
        const int PrSetPdeathsig = 1;
        _ = prctl(PrSetPdeathsig, SigTerm);
        try
        {
            using var launcher = Process.GetProcessById(launcherPid);
        }
        catch (ArgumentException)
        {
            Environment.Exit(130);   // the launcher is gone already
        }
    }

    /// <summary>Asks a rank to stop as Ctrl-C does (SIGTERM: it stops at the next sequence and writes nothing), where it can.</summary>
    static void AskToStop(Process p)
    {
        if (!p.HasExited && !OperatingSystem.IsWindows()) _ = kill(p.Id, SigTerm);
    }

    /// <summary>Asks the ranks still running to stop, then kills those that have not within <paramref name="grace"/> (one waiting in a collective for a dead peer never would).</summary>
    static void Stop(IEnumerable<Process> ranks, TimeSpan grace)
    {
        var left = ranks.Where(p => !p.HasExited).ToList();
        foreach (var p in left) AskToStop(p);
        var deadline = DateTime.UtcNow + grace;
        while (DateTime.UtcNow < deadline && left.Any(p => !p.HasExited)) Thread.Sleep(100);
        foreach (var p in left.Where(p => !p.HasExited)) p.Kill(entireProcessTree: true);
    }
    /// <summary>The GPUs the ranks run on: CUDA_VISIBLE_DEVICES's entries when it is set, else 0..N-1.</summary>
    internal static string[] Devices(int world, string? visible)
    {
        if (visible is not null && visible.Trim().Length == 0)
            throw new UsageException("--gpus: CUDA_VISIBLE_DEVICES is set but empty, which hides every GPU");
        if (visible is null) return Enumerable.Range(0, world).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        var listed = visible.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (listed.Length < world)
            throw new UsageException($"--gpus {world}: CUDA_VISIBLE_DEVICES={visible} lists {listed.Length} GPU{(listed.Length == 1 ? "" : "s")}");
        return listed[..world];
    }

    /// <summary>Runs <paramref name="world"/> ranks of `distill` with <paramref name="args"/> and waits; the exit code is the first failure's, else 0.</summary>
    public static int Run(int world, IReadOnlyList<string> args, CancellationToken cancellationToken)
    {
        var devices = Devices(world, Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES"));
        string rendezvous = Directory.CreateTempSubdirectory("swiftkv-distill-ranks-").FullName;
        try
        {
            return Supervise(Enumerable.Range(0, world).Select(r => RankStart(r, world, devices[r], rendezvous, args)).ToList(), devices, cancellationToken);
        }
        finally
        {
            try { Directory.Delete(rendezvous, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>
    /// Starts the ranks and waits for them: rank 0's output passed through, a failure named and the others stopped (asked,
    /// then killed after <paramref name="grace"/>); the first failure's exit code, else 0.
    /// </summary>
    internal static int Supervise(IReadOnlyList<ProcessStartInfo> starts, IReadOnlyList<string> devices, CancellationToken cancellationToken,
        TimeSpan? grace = null)
    {
        var wait = grace ?? TimeSpan.FromSeconds(5);
        var ranks = new List<Process>();
        try
        {
            foreach (var info in starts) ranks.Add(Process.Start(info) ?? throw new InvalidOperationException($"rank {ranks.Count} did not start."));
            // Rank 0's lines go to this console as they come; the others' stderr is named by rank.
            var pumps = ranks.Select((p, r) => Task.WhenAll(
                Pump(p.StandardOutput, r == 0 ? Console.Out : null, ""),
                Pump(p.StandardError, Console.Error, r == 0 ? "" : $"[rank {r}] "))).ToArray();
            int code = 0;
            var alive = new List<Process>(ranks);
            bool stopping = false;
            while (alive.Count > 0)
            {
                // Ctrl-C reaches the ranks too (one process group); a signal sent to this process alone (SIGTERM from a
                // scheduler, say) is passed on, and ranks that do not stop in time are killed.
                if (cancellationToken.IsCancellationRequested && !stopping)
                {
                    stopping = true;
                    Stop(alive, 2 * wait);
                }
                // The earliest to exit first: a peer that died of the failing rank's error within the same poll is not
                // the one to blame.
                var exited = alive.Where(p => p.WaitForExit(0)).OrderBy(p => p.ExitTime).FirstOrDefault();
                if (exited is null)
                {
                    Thread.Sleep(100);
                    continue;
                }
                alive.Remove(exited);
                if (exited.ExitCode == 0 || code != 0) continue;
                code = exited.ExitCode;
                int r = ranks.IndexOf(exited);
                if (stopping) continue;
                if (alive.Count == 0)
                {
                    Console.Error.WriteLine($"swiftkv distill: rank {r} (GPU {devices[r]}) exited with {exited.ExitCode}.");
                    continue;
                }
                Console.Error.WriteLine($"swiftkv distill: rank {r} (GPU {devices[r]}) exited with {exited.ExitCode}; stopping the other rank{(alive.Count == 1 ? "" : "s")}.");
                // The others may wait in a collective for it forever: a moment to fail on their own, then asked, then killed.
                var deadline = DateTime.UtcNow + wait;
                while (DateTime.UtcNow < deadline && alive.Any(p => !p.HasExited)) Thread.Sleep(100);
                stopping = true;
                Stop(alive, wait);
            }
            Task.WaitAll(pumps, TimeSpan.FromSeconds(5));
            // Stopped because this process was: the run was interrupted, whichever way each rank ended (one left waiting
            // in a collective is killed, 137).
            return cancellationToken.IsCancellationRequested && code != 0 ? 130 : code;
        }
        finally
        {
            foreach (var p in ranks)
            {
                try
                {
                    if (!p.HasExited) p.Kill(entireProcessTree: true);
                }
                catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception or AggregateException)
                {
                    // Gone meanwhile, or part of its tree could not be killed: the other ranks must still go.
                }
                p.Dispose();
            }
        }
    }

    static ProcessStartInfo RankStart(int rank, int world, string device, string rendezvous, IReadOnlyList<string> args)
    {
        // `dotnet swiftkv.dll ...` (or `dotnet run`) runs under the dotnet host; the apphost `swiftkv` is the command itself.
        string host = Environment.ProcessPath ?? throw new InvalidOperationException("the path of this process is unknown.");
        var info = new ProcessStartInfo(host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(host) == "dotnet")
            info.ArgumentList.Add(Assembly.GetEntryAssembly()?.Location ?? throw new InvalidOperationException("the entry assembly is unknown."));
        info.ArgumentList.Add("distill");
        foreach (var a in args.Where((_, i) => !IsGpusOption(args, i))) info.ArgumentList.Add(a);
        foreach (var a in new[] { "--rank", rank.ToString(System.Globalization.CultureInfo.InvariantCulture), "--world", world.ToString(System.Globalization.CultureInfo.InvariantCulture), "--rendezvous", rendezvous })
            info.ArgumentList.Add(a);
        info.ArgumentList.Add("--launcher-pid");
        info.ArgumentList.Add(Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture));
        info.Environment["CUDA_VISIBLE_DEVICES"] = device;
        return info;
    }

    /// <summary>Whether args[i] is --gpus, --gpus=N, or --gpus's value (the ranks must not start ranks of their own).</summary>
    static bool IsGpusOption(IReadOnlyList<string> args, int i) =>
        args[i] == "--gpus" || args[i].StartsWith("--gpus=", StringComparison.Ordinal) || (i > 0 && args[i - 1] == "--gpus");

    /// <summary>Passes a rank's lines on; keeps draining when the console cannot be written (a full disk), since a rank whose pipe fills stops, and its peers with it.</summary>
    static async Task Pump(StreamReader from, TextWriter? to, string prefix)
    {
        while (await from.ReadLineAsync().ConfigureAwait(false) is { } line)
        {
            if (to is null) continue;
            try { await to.WriteLineAsync(prefix + line).ConfigureAwait(false); }
            catch (IOException) { to = null; }
        }
    }
}
