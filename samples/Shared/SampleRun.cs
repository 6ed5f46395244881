// The samples' one line of error handling around their run: what a newcomer can get wrong (a model path that does not
// exist, a truncated checkpoint or one whose weights hold NaN, an option value the library refuses, no GPU for
// Backend=Cuda) is printed as one line naming the problem, exit code 2, instead of a stack trace. Anything else is a
// bug and keeps its stack trace.
// A sample with something to clean up (the RAG sample's temporary store) takes a token that Ctrl-C or SIGTERM cancel,
// so its finally blocks run before the exit code 130.
using System.Runtime.InteropServices;
using Microsoft.Extensions.Options;
using SwiftKV.Model;

namespace SwiftKV.Samples;

public static class SampleRun
{
    /// <summary>
    /// Runs <paramref name="run"/> with a token that the first Ctrl-C (SIGINT) or SIGTERM cancels instead of ending the
    /// process, so the run unwinds through its finally blocks and exits as the shell expects of that signal (130 for
    /// SIGINT, 143 for SIGTERM); a second signal ends it at once.
    /// </summary>
    public static async Task<int> Guarded(string name, Func<CancellationToken, Task> run)
    {
        ArgumentNullException.ThrowIfNull(run);
        using var stop = new CancellationTokenSource();
        int exitCode = 130;
        void OnSignal(PosixSignalContext context)
        {
            if (stop.IsCancellationRequested) return;   // the second signal: the default, which ends the process
            context.Cancel = true;
            exitCode = context.Signal == PosixSignal.SIGTERM ? 143 : 130;
            Console.Error.WriteLine($"{name}: stopping (press Ctrl-C again to end at once)");
            stop.Cancel();
        }
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        int code = await Guarded(name, () => run(stop.Token));
        return code == 130 && stop.IsCancellationRequested ? exitCode : code;
    }

    /// <summary>
    /// Reads a sample's command line with <paramref name="parse"/>: --help (or -h) prints <paramref name="usage"/> and
    /// gives exit code 0, a bad option prints "<paramref name="name"/>: problem" and the usage and gives 2; null when the
    /// sample should run with <paramref name="options"/>.
    /// </summary>
    public static int? ParseArgs<T>(string name, string usage, string[] args, Func<SampleArgs, T> parse, out T options) where T : class
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(parse);
        options = null!;
        if (WantsHelp(args))
        {
            Console.WriteLine("usage: " + usage);
            return 0;
        }
        try
        {
            options = parse(new SampleArgs(args));
            return null;
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"{name}: {ErrorText.ForConsole(e)}\nusage: {usage}");
            return 2;
        }
    }

    /// <summary>
    /// --help anywhere, or -h as the first argument: elsewhere "-h" may be a value (--question -h), which a value never
    /// starting with "--" makes unambiguous for --help.
    /// </summary>
    public static bool WantsHelp(IReadOnlyList<string> args) => args.Contains("--help") || args is ["-h", ..];

    /// <summary>Runs <paramref name="run"/>; a usage or model error becomes "<paramref name="name"/>: message" on stderr and exit code 2.</summary>
    public static async Task<int> Guarded(string name, Func<Task> run)
    {
        ArgumentNullException.ThrowIfNull(run);
        try
        {
            await run();
            return 0;
        }
        catch (Exception e) when (e is ArgumentException or InvalidModelException or IOException or UnauthorizedAccessException
            or NotSupportedException or OptionsValidationException or InvalidOperationException { Source: "Microsoft.Extensions.Configuration.Binder" }
            or SwiftKV.Engine.Sampling.NoFiniteLogitsException)
        {
            Console.Error.WriteLine($"{name}: {ErrorText.ForConsole(e)}");
            return 2;
        }
        catch (OperationCanceledException e)
        {
            // Ctrl-C in a sample that handles it (the hosting sample's host stops gracefully): the shell's 130.
            Console.Error.WriteLine($"{name}: {e.Message}");
            return 130;
        }
    }
}
