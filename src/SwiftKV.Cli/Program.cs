// swiftkv: the command-line face of the engine. Each command is one small function below; the demo lives in
// DemoCommand.cs. Errors a user can cause (bad options, bad checkpoints) print one clear message (a list of problems one
// per line) and exit 2.
using SwiftKV.Model;

namespace SwiftKV.Cli;

/// <summary>The command table and dispatcher; Main is one line so tests can run commands in-process.</summary>
internal static class CliApp
{
    public static int Main(string[] args) => Run(args);

    public static int Run(string[] args)
    {
        var commands = new Dictionary<string, (string Help, Func<CliArgs, int> Run)>
        {
            ["demo"] = ("prompt-heavy summarization through IChatClient, SwiftKV on vs off [--model DIR] [--max-tokens N]", DemoCommand.Run),
            ["make-model"] = ("write a random-weight HF checkpoint: --out DIR [--preset tiny (default)|demo|llama-3.2-1b|llama-3.1-8b|llama-3.1-70b] [--force: replace a checkpoint already in DIR]\n" +
                "              overrides of the preset: --layers N --hidden N --heads N --kv-heads N --head-dim N --ffn N --vocab-size N --max-positions N\n" +
                "              --tie | --untie, --attention-bias, --no-rope-scaling | --rope-original-max N, --swiftkv-layers L [--group-size G]\n" +
                "              weights: --seed S --dtype bf16|fp16|fp32 --init-std X, --no-tokenizer (vocabularies smaller than the demo tokenizer's)", ModelCommands.MakeModel),
            ["transform"] = ("Llama -> SwiftKV checkpoint (undistilled): --model DIR --out DIR --swiftkv-layers L [--group-size G] [--force]", ModelCommands.Transform),
            ["distill"] = ("train a SwiftKV checkpoint's SwiftKV tensors against the same weights with SwiftKV off: " + DistillCommand.Usage, DistillCommand.Run),
            ["generate"] = ("--model DIR (--prompt TEXT | --chat TEXT [--system TEXT]) [--max-tokens N --temperature T --top-k K --top-p P --seed S --no-swiftkv --backend auto|cpu|cuda --fp8-weights auto|dequantize|keep|keep-w8a8 --show-special: print special tokens, which are skipped by default]", GenerateCommand.Run),
            ["logits"] = ("--model DIR --tokens 1,2,3 --out FILE.f32 [--backend cpu] [--no-swiftkv] [--last-only] [--fp8-weights auto|dequantize|keep|keep-w8a8]", LogitsCommand.Run),
            ["info"] = ("--model DIR: print the config and what SwiftKV saves, after checking the weights' headers and shapes", ModelCommands.Info),
            ["bench"] = ("CUDA benchmark at a preset's shape, random weights on the GPU: " + BenchCommand.Usage, BenchCommand.Run),
            ["serve-bench"] = ("serving engine on CUDA (continuous batching, paged KV), random weights: " + ServeBenchCommand.Usage, ServeBenchCommand.Run),
        };

        if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
        {
            Console.WriteLine("swiftkv — run Llama / SwiftKV checkpoints\n\ncommands:");
            foreach (var (name, c) in commands) Console.WriteLine($"  {name,-11} {c.Help}");
            return args.Length == 0 ? 1 : 0;
        }
        if (!commands.TryGetValue(args[0], out var command))
        {
            string near = SwiftKV.Model.Spelling.Nearest(args[0], commands.Keys.ToList()) is { } n ? $"did you mean '{n}'? " : "";
            Console.Error.WriteLine($"swiftkv: unknown command '{args[0]}' ({near}try: {string.Join(", ", commands.Keys)})");
            return 2;
        }
        // "--help" is always an option name (a value never starts with "--"); "-h" only right after the command, since
        // it may be a value ("--prompt -h").
        if (args.Skip(1).Contains("--help") || args is [_, "-h", ..])
        {
            Console.WriteLine($"swiftkv {args[0]} {command.Help}");
            return 0;
        }
        try
        {
            return command.Run(new CliArgs(args.Skip(1)));
        }
        catch (Exception e) when (e is UsageException or InvalidModelException or ArgumentException or IOException or UnauthorizedAccessException
                                       or NotSupportedException or InvalidDataException or NotFiniteNumberException or TimeoutException or SwiftKV.Engine.Sampling.NoFiniteLogitsException
                                       or SwiftKV.Cuda.CudaException)
        {
            // IOException covers missing files and directories, and an --out path that is an existing file. A CudaException
            // names the driver call and its error (a GPU out of memory part-way through a distill, say).
            Console.Error.WriteLine($"swiftkv {args[0]}: {SwiftKV.Model.ErrorText.ForConsole(e)}");
            return 2;
        }
        catch (InsufficientMemoryException e)
        {
            // Raised before allocating, with the sizes: more useful than the general advice below.
            Console.Error.WriteLine($"swiftkv {args[0]}: {e.Message}");
            return 2;
        }
        catch (OutOfMemoryException)
        {
            Console.Error.WriteLine($"swiftkv {args[0]}: out of memory (a model or KV cache larger than this machine holds: lower --context / --max-tokens, or use a smaller model).");
            return 2;
        }
    }
}
