// Ctrl-C (SIGINT) and SIGTERM for the commands that write checkpoints (make-model, transform, distill): the signal
// cancels a token the work checks between blocks, instead of killing the process part-way through a file, so the
// command can say what was left and exit 130 as a shell expects.
using System.Runtime.InteropServices;

namespace SwiftKV.Cli;

/// <summary>Turns SIGINT and SIGTERM into a cancellation while in scope.</summary>
internal sealed class Interrupt : IDisposable
{
    readonly CancellationTokenSource _stop = new();
    readonly PosixSignalRegistration _interrupt, _terminate;

    public Interrupt()
    {
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true;
            _stop.Cancel();
        }
        _interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        _terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
    }

    public CancellationToken Token => _stop.Token;

    /// <summary>True when <paramref name="e"/> is this interrupt's doing (not another cancellation).</summary>
    public bool Caused(Exception e) => e is OperationCanceledException && _stop.IsCancellationRequested;

    /// <summary>What a command says when interrupted, and the exit code (128 + SIGINT).</summary>
    public static int Report(string command, string outDir)
    {
        Console.Error.WriteLine($"swiftkv {command}: interrupted; nothing was written to {outDir}.");
        return 130;
    }

    /// <summary>An --out the command created and then wrote nothing into goes again, as if never asked for.</summary>
    public static void RemoveIfLeftEmpty(string outDir, bool existed)
    {
        if (existed || !Directory.Exists(outDir) || Directory.EnumerateFileSystemEntries(outDir).Any()) return;
        try { Directory.Delete(outDir); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    public void Dispose()
    {
        _interrupt.Dispose();
        _terminate.Dispose();
        _stop.Dispose();
    }
}
