// A deliberately small command-line parser: `--name value`, `--name=value` (the form for a value that itself starts
// with "--"), and `--flag`.
// NOTE: unknown or repeated options are errors, so a typo never silently runs the wrong experiment.
using System.Globalization;
using SwiftKV.Model;

namespace SwiftKV.Cli;

internal sealed class CliArgs
{
    readonly Dictionary<string, string?> _options = new(StringComparer.Ordinal);
    readonly HashSet<string> _used = new(StringComparer.Ordinal);

    public CliArgs(IEnumerable<string> args)
    {
        var list = args.ToList();
        Raw = list;
        for (int i = 0; i < list.Count; i++)
        {
            string a = list[i];
            if (!a.StartsWith("--", StringComparison.Ordinal))
                throw new UsageException($"unexpected argument '{a}'");
            string name = a[2..];
            string? value;
            if (name.IndexOf('=') is int eq and > 0)
                (name, value) = (name[..eq], name[(eq + 1)..]);
            else
                value = i + 1 < list.Count && !list[i + 1].StartsWith("--", StringComparison.Ordinal) ? list[++i] : null;
            if (!_options.TryAdd(name, value)) throw new UsageException($"option --{name} given twice");
        }
    }

    /// <summary>The arguments as given (a command that starts copies of itself passes them on).</summary>
    public IReadOnlyList<string> Raw { get; }

    public bool Flag(string name)
    {
        _used.Add(name);
        if (!_options.TryGetValue(name, out var v)) return false;
        if (v is not null) throw new UsageException($"--{name} takes no value (got '{v}')");
        return true;
    }

    public string? String(string name)
    {
        _used.Add(name);
        if (!_options.TryGetValue(name, out var v)) return null;
        return v ?? throw new UsageException($"--{name} needs a value");
    }

    /// <summary>An option that must be given, with a non-empty value (a path, a model): "" is refused by name.</summary>
    public string Required(string name) => String(name) switch
    {
        null => throw Missing(name),
        "" => throw new UsageException($"--{name} needs a value (got an empty string)"),
        var v => v,
    };

    /// <summary>
    /// --model: a checkpoint directory that exists. A path to a file in it (config.json) or a missing path is named here,
    /// before anything is printed or loaded.
    /// </summary>
    /// <remarks>Called after <see cref="RejectUnknown"/>, so a mistyped option is reported before a path.</remarks>
    public static string CheckModelDirectory(string path, string option = "model")
    {
        if (File.Exists(path))
            throw new UsageException($"--{option} {path} is a file; give the checkpoint directory that holds it ({Path.GetDirectoryName(Path.GetFullPath(path))}).");
        if (!Directory.Exists(path))
            throw new UsageException($"--{option} {path}: no such directory (expected a Hugging Face checkpoint: config.json, *.safetensors, tokenizer).");
        return path;
    }

    /// <summary>
    /// Refuses an output file that could not be written before any work: a directory, or a file in a directory that does
    /// not exist (a benchmark would otherwise run for minutes and fail at the end).
    /// </summary>
    public static string CheckOutputFile(string option, string path)
    {
        if (Directory.Exists(path)) throw new UsageException($"--{option} {path} is a directory; give a file name.");
        if (Path.GetDirectoryName(Path.GetFullPath(path)) is { } parent && !Directory.Exists(parent))
            throw new UsageException($"--{option} {path}: the directory {parent} does not exist.");
        return path;
    }

    /// <summary>
    /// "--name is required", naming a given option that looks like a misspelling of it: the unknown-option check
    /// runs only after every option is read, so without this a typo would be reported as a missing option.
    /// </summary>
    public UsageException Missing(string name) => new($"--{name} is required" + NearMisses(name));

    /// <summary>" (--chta is not an option: a misspelling of --chat?)" for given options that look like misspellings of one of <paramref name="names"/>; "" when none do.</summary>
    public string NearMisses(params string[] names)
    {
        var near = _options.Keys.Where(k => !names.Contains(k)).Select(k => (Given: k, Meant: Spelling.Nearest(k, names)))
            .Where(p => p.Meant is not null).Select(p => $"--{p.Given} is not an option: a misspelling of --{p.Meant}?").ToList();
        return near.Count > 0 ? $" ({string.Join("; ", near)})" : "";
    }

    public int? Int(string name) => Parse(name, s => int.Parse(s, CultureInfo.InvariantCulture));
    // NumberStyles.Float: no thousands separators, so "0,7" is an error rather than 7.
    public float? Float(string name) => Parse(name, s => float.Parse(s, NumberStyles.Float, CultureInfo.InvariantCulture));
    public double? Double(string name) => Parse(name, s => double.Parse(s, NumberStyles.Float, CultureInfo.InvariantCulture));
    public ulong? ULong(string name) => Parse(name, s => ulong.Parse(s, CultureInfo.InvariantCulture));

    /// <summary>
    /// A benchmark switch: "on" (the default) or "off" gives that one mode, "both" gives on then off (timed alternately);
    /// anything else is a usage error that says <paramref name="meaning"/>.
    /// </summary>
    public bool[] OnOffBoth(string name, string meaning) => (String(name) ?? "on") switch
    {
        "on" => [true],
        "off" => [false],
        "both" => [true, false],
        var v => throw new UsageException($"--{name}: '{v}' is not one of {meaning}"),
    };

    T? Parse<T>(string name, Func<string, T> parse) where T : struct
    {
        string? s = String(name);
        if (s is null) return null;
        try { return parse(s); }
        catch (FormatException)
        {
            string kind = typeof(T) == typeof(float) ? "a number" : typeof(T) == typeof(ulong) ? "a whole number >= 0" : "a whole number";
            throw new UsageException($"--{name}: '{s}' is not {kind}");
        }
        catch (OverflowException)
        {
            // A seed takes every ulong, so its range is the rule; other options check their own range after parsing.
            throw new UsageException(typeof(T) == typeof(ulong)
                ? $"--{name}: '{s}' is out of range (0..{ulong.MaxValue})"
                : $"--{name}: '{s}' is too {(s.TrimStart().StartsWith('-') ? "small" : "large")}");
        }
    }

    /// <summary>
    /// Call after reading every option a command knows: anything left is a typo. The error names the nearest known option
    /// of each unknown one and lists the options this command read, so a misspelled override shows what is valid.
    /// </summary>
    public void RejectUnknown()
    {
        var unknown = _options.Keys.Where(k => !_used.Contains(k)).ToList();
        if (unknown.Count == 0) return;
        var known = _used.Order(StringComparer.Ordinal).ToList();
        string Describe(string u) => Spelling.Nearest(u, known) is { } near ? $"--{u} (did you mean --{near}?)" : "--" + u;
        throw new UsageException("unknown option(s): " + string.Join(", ", unknown.Select(Describe))
            + "; this command takes " + string.Join(" ", known.Select(k => "--" + k)));
    }
}

internal sealed class UsageException(string message) : Exception(message);
