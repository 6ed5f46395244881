// A deliberately small command-line parser: `--name value`, `--flag`, and positional words.
// NOTE: unknown or repeated options are errors, so a typo never silently runs the wrong experiment.
using System.Globalization;

namespace SwiftKV.Cli;

internal sealed class CliArgs
{
    readonly Dictionary<string, string?> _options = new(StringComparer.Ordinal);
    readonly HashSet<string> _used = new(StringComparer.Ordinal);

    public CliArgs(IEnumerable<string> args)
    {
        var list = args.ToList();
        for (int i = 0; i < list.Count; i++)
        {
            string a = list[i];
            if (!a.StartsWith("--", StringComparison.Ordinal))
                throw new UsageException($"unexpected argument '{a}'");
            string name = a[2..];
            string? value = i + 1 < list.Count && !list[i + 1].StartsWith("--", StringComparison.Ordinal) ? list[++i] : null;
            if (!_options.TryAdd(name, value)) throw new UsageException($"option --{name} given twice");
        }
    }

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

    public string Required(string name) => String(name) ?? throw new UsageException($"--{name} is required");

    public int? Int(string name) => Parse(name, s => int.Parse(s, CultureInfo.InvariantCulture));
    // NumberStyles.Float: no thousands separators, so "0,7" is an error rather than 7.
    public float? Float(string name) => Parse(name, s => float.Parse(s, NumberStyles.Float, CultureInfo.InvariantCulture));
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
        _ => throw new UsageException($"--{name}: {meaning}"),
    };

    T? Parse<T>(string name, Func<string, T> parse) where T : struct
    {
        string? s = String(name);
        if (s is null) return null;
        try { return parse(s); }
        catch (FormatException) { throw new UsageException($"--{name}: '{s}' is not a valid {typeof(T).Name}"); }
        catch (OverflowException) { throw new UsageException($"--{name}: '{s}' is out of range"); }
    }

    /// <summary>Call after reading every option a command knows: anything left is a typo.</summary>
    public void RejectUnknown()
    {
        var unknown = _options.Keys.Where(k => !_used.Contains(k)).ToList();
        if (unknown.Count > 0) throw new UsageException("unknown option(s): " + string.Join(", ", unknown.Select(u => "--" + u)));
    }
}

internal sealed class UsageException(string message) : Exception(message);
