// Sending Ctrl-C to a command run in its own process, as a user's terminal does: shared by the samples' tests and the
// CLI's (linked there).
using System.Runtime.InteropServices;

namespace SwiftKV.Samples.Tests;

public static class Interrupts
{
    [DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int signal);

    /// <summary>Sends SIGINT (what Ctrl-C sends) to <paramref name="pid"/>; 0 on success.</summary>
    public static int SendSigInt(int pid) => kill(pid, 2);

    /// <summary>The dotnet host running these tests, to start .dll apps with.</summary>
    public static string DotnetHost => Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h ? h
        : Path.GetFullPath(Path.Combine(RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", "..", "dotnet"));

    /// <summary>Waits for <paramref name="process"/> to exit, failing the test (by cancellation) after <paramref name="seconds"/>.</summary>
    public static async Task WaitForExit(System.Diagnostics.Process process, int seconds, CancellationToken ct)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(seconds));
        await process.WaitForExitAsync(timeout.Token);
    }

    /// <summary>Whether this process began with SIGINT ignored (Linux: bit 2 of SigIgn in /proc/self/status).</summary>
    public static bool SigIntIgnored()
    {
        if (!File.Exists("/proc/self/status")) return false;
        string? mask = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("SigIgn:", StringComparison.Ordinal));
        return mask is not null && (Convert.ToUInt64(mask["SigIgn:".Length..].Trim(), 16) & 0b10) != 0;
    }

    /// <summary>
    /// <paramref name="command"/> as it must start so that SIGINT reaches it, or null when it cannot: started in the
    /// background by a shell without job control (`dotnet test ... &amp;` in a script), this process and its children begin
    /// with SIGINT ignored, and .NET keeps an ignored SIGINT ignored, as nohup expects. A user's Ctrl-C comes to a process
    /// with the default disposition, which /usr/bin/env restores.
    /// </summary>
    public static string[]? Interruptible(string[] command)
    {
        if (!SigIntIgnored()) return command;
        return File.Exists("/usr/bin/env") ? ["/usr/bin/env", "--default-signal=INT", .. command] : null;
    }
}
