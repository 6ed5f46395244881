// The samples' command line: `--name value` options and `--flag` switches, nothing more, so a newcomer sees every
// option in the sample's own Parse method. Unknown or malformed options are errors that name the option.
namespace SwiftKV.Samples;

/// <summary>Parsed <c>--name value</c> options and <c>--flag</c> switches.</summary>
public sealed class SampleArgs
{
    readonly Dictionary<string, string?> _values = new(StringComparer.Ordinal);
    readonly HashSet<string> _used = new(StringComparer.Ordinal);

    public SampleArgs(IEnumerable<string> args)
    {
        ArgumentNullException.ThrowIfNull(args);
        var list = args.ToList();
        for (int i = 0; i < list.Count; i++)
        {
            string a = list[i];
            if (!a.StartsWith("--", StringComparison.Ordinal) || a.Length == 2)
                throw new ArgumentException($"unexpected argument '{a}' (options look like --name value)");
            string name = a[2..];
            string? value;
            // --name=value, as the CLI and the hosting sample's configuration take it (and the only way to pass a value
            // that starts with "--").
            if (name.IndexOf('=') is int eq and > 0)
                (name, value) = (name[..eq], name[(eq + 1)..]);
            else
                value = i + 1 < list.Count && !list[i + 1].StartsWith("--", StringComparison.Ordinal) ? list[++i] : null;
            if (!_values.TryAdd(name, value)) throw new ArgumentException($"option --{name} given twice");
        }
    }

    /// <summary>Every option name given, as typed (without the leading --).</summary>
    public IEnumerable<string> Names => _values.Keys;

    /// <summary>A string option, or null when absent; every option a sample takes (a path, a question) needs a non-blank value.</summary>
    public string? String(string name)
    {
        _used.Add(name);
        if (!_values.TryGetValue(name, out var v)) return null;
        if (v is null) throw new ArgumentException($"--{name} needs a value");
        return string.IsNullOrWhiteSpace(v) ? throw new ArgumentException($"--{name} needs a value (got an empty string)") : v;
    }

    /// <summary>A positive integer option, or <paramref name="fallback"/> when absent.</summary>
    public int PositiveInt(string name, int fallback)
    {
        string? s = String(name);
        if (s is null) return fallback;
        if (!int.TryParse(s, out int v) || v <= 0) throw new ArgumentException($"--{name} must be a positive integer (got '{s}')");
        return v;
    }

    /// <summary>True when the switch is present.</summary>
    public bool Flag(string name)
    {
        _used.Add(name);
        if (!_values.TryGetValue(name, out var v)) return false;
        return v is null ? true : throw new ArgumentException($"--{name} takes no value (got '{v}')");
    }

    /// <summary>Throws when an option was given that the sample never asked about (a typo, usually).</summary>
    public void RejectUnknown()
    {
        var unknown = _values.Keys.Where(k => !_used.Contains(k)).ToList();
        string Describe(string k) => SwiftKV.Model.Spelling.Nearest(k, _used) is { } near ? $"--{k} (did you mean --{near}?)" : "--" + k;
        if (unknown.Count > 0) throw new ArgumentException($"unknown option(s): {string.Join(", ", unknown.Select(Describe))}");
    }
}
