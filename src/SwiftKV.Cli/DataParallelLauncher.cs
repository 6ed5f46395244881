// `swiftkv distill --gpus N`: one worker process per GPU (this same command with --rank R --world N --rendezvous DIR,
// CUDA_VISIBLE_DEVICES naming its one GPU), as torchrun starts PyTorch's ranks. One process per GPU keeps the CUDA
// layer's one-device-per-process model; the ranks sum their gradients over NCCL. This process only supervises: it
// passes rank 0's output through, names a rank that fails, and stops the others then (a rank left waiting in a
// collective for a dead peer would wait forever).
using System.Diagnostics;
using System.Reflection;

namespace SwiftKV.Cli;

internal static class DataParallelLauncher
{
    /// <summary>The GPUs the ranks run on: CUDA_VISIBLE_DEVICES's entries when it is set, else 0..N-1.</summary>
    internal static string[] Devices(int world, string? visible)
    {
        if (string.IsNullOrWhiteSpace(visible)) return Enumerable.Range(0, world).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray();
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
        var ranks = new List<Process>();
        try
        {
            for (int r = 0; r < world; r++) ranks.Add(Start(r, world, devices[r], rendezvous, args));
            // Rank 0's lines go to this console as they come; the others' stderr is named by rank.
            var pumps = ranks.Select((p, r) => Task.WhenAll(
                Pump(p.StandardOutput, r == 0 ? Console.Out : null, ""),
                Pump(p.StandardError, Console.Error, r == 0 ? "" : $"[rank {r}] "))).ToArray();
            int code = 0;
            var alive = new List<Process>(ranks);
            DateTime? stopBy = null;
            while (alive.Count > 0)
            {
                // Ctrl-C reaches the ranks too (one process group); a signal sent to this process alone is passed on by
                // stopping them once they have had time to stop on their own.
                if (cancellationToken.IsCancellationRequested)
                {
                    stopBy ??= DateTime.UtcNow.AddSeconds(10);
                    if (code == 0) code = 130;
                    if (DateTime.UtcNow > stopBy) foreach (var p in alive.Where(p => !p.HasExited)) p.Kill(entireProcessTree: true);
                }
                var exited = alive.FirstOrDefault(p => p.WaitForExit(0));
                if (exited is null)
                {
                    Thread.Sleep(100);
                    continue;
                }
                alive.Remove(exited);
                if (exited.ExitCode == 0 || code != 0) continue;
                code = exited.ExitCode;
                int r = ranks.IndexOf(exited);
                if (alive.Count == 0) break;
                Console.Error.WriteLine($"swiftkv distill: rank {r} (GPU {devices[r]}) exited with {exited.ExitCode}; stopping the other rank{(alive.Count == 1 ? "" : "s")}.");
                // The others may wait in a collective for it forever: give them a moment to fail on their own, then stop them.
                var deadline = DateTime.UtcNow.AddSeconds(5);
                while (DateTime.UtcNow < deadline && alive.Any(p => !p.HasExited)) Thread.Sleep(100);
                foreach (var p in alive.Where(p => !p.HasExited)) p.Kill(entireProcessTree: true);
            }
            Task.WaitAll(pumps, TimeSpan.FromSeconds(5));
            return code;
        }
        finally
        {
            foreach (var p in ranks)
            {
                if (!p.HasExited) p.Kill(entireProcessTree: true);
                p.Dispose();
            }
            try { Directory.Delete(rendezvous, recursive: true); } catch (IOException) { }
        }
    }

    static Process Start(int rank, int world, string device, string rendezvous, IReadOnlyList<string> args)
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
        info.Environment["CUDA_VISIBLE_DEVICES"] = device;
        return Process.Start(info) ?? throw new InvalidOperationException($"rank {rank} did not start.");
    }

    /// <summary>Whether args[i] is --gpus, --gpus=N, or --gpus's value (the ranks must not start ranks of their own).</summary>
    static bool IsGpusOption(IReadOnlyList<string> args, int i) =>
        args[i] == "--gpus" || args[i].StartsWith("--gpus=", StringComparison.Ordinal) || (i > 0 && args[i - 1] == "--gpus");

    static async Task Pump(StreamReader from, TextWriter? to, string prefix)
    {
        while (await from.ReadLineAsync().ConfigureAwait(false) is { } line)
            if (to is not null) await to.WriteLineAsync(prefix + line).ConfigureAwait(false);
    }
}
