// Near-miss suggestions for option and key names ("--layer": did you mean --layers?), shared by the command line and
// the configuration binding so a typo is answered the same way everywhere.
namespace SwiftKV.Model;

/// <summary>Edit distance and the nearest known name to a misspelt one.</summary>
public static class Spelling
{
    /// <summary>Levenshtein distance with an adjacent transposition counted as one edit ("mdoel" is one from "model").</summary>
    public static int EditDistance(string a, string b, StringComparison comparison = StringComparison.Ordinal)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        bool Same(char x, char y) => string.Equals(x.ToString(), y.ToString(), comparison);
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
            {
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (Same(a[i - 1], b[j - 1]) ? 0 : 1));
                if (i > 1 && j > 1 && Same(a[i - 1], b[j - 2]) && Same(a[i - 2], b[j - 1])) d[i, j] = Math.Min(d[i, j], d[i - 2, j - 2] + 1);
            }
        return d[a.Length, b.Length];
    }

    /// <summary>
    /// The known name closest to <paramref name="name"/> if one is close enough to be what was meant: within one edit
    /// for short names, two for names of six characters or more, or one of the two a prefix (3+ characters) of the other
    /// ("--layer" for --layers, "--output" for --out).
    /// </summary>
    public static string? Nearest(string name, IEnumerable<string> known, StringComparison comparison = StringComparison.Ordinal)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(known);
        int allowed = Math.Max(1, Math.Min(2, name.Length / 3));
        return known.Select(k => (Name: k, Distance: EditDistance(k, name, comparison)))
            .Where(c => c.Distance <= allowed || name.Length >= 3 && c.Name.Length >= 3 && (c.Name.StartsWith(name, comparison) || name.StartsWith(c.Name, comparison)))
            .OrderBy(c => c.Distance).ThenBy(c => c.Name, StringComparer.Ordinal).Select(c => c.Name).FirstOrDefault();
    }
}
