// Reads and writes tiktoken rank files (Meta's original/tokenizer.model): one "<base64 bytes> <rank>" per line.
// NOTE: parsed here rather than by Microsoft.ML.Tokenizers so that a bad line is reported with file and line
// number, and so every load path (tiktoken file, tokenizer.json, built-in demo) ends in the same rank table.
using System.Text;

namespace SwiftKV.Model.Tokenization;

internal static class TiktokenFile
{
    /// <summary>Parses a rank file into token bytes indexed by rank (null where a rank is unused).</summary>
    public static byte[]?[] Read(string path)
    {
        Checkpoint.GitLfsPointer.Refuse(path);
        var ranks = new List<(byte[] Bytes, int Rank)>();
        int lineNumber = 0;
        foreach (string line in File.ReadLines(path))
        {
            lineNumber++;
            if (line.Length == 0) continue;
            string[] fields = line.Split(' ');
            if (fields.Length != 2)
                throw new InvalidModelException($"{path}, line {lineNumber}: expected '<base64 token> <rank>', got '{Clip(line)}'.");
            byte[] bytes;
            try { bytes = Convert.FromBase64String(fields[0]); }
            catch (FormatException)
            {
                throw new InvalidModelException($"{path}, line {lineNumber}: '{Clip(fields[0])}' is not valid base64.");
            }
            if (bytes.Length == 0)
                throw new InvalidModelException($"{path}, line {lineNumber}: empty token.");
            if (!int.TryParse(fields[1], System.Globalization.NumberStyles.None, null, out int rank))
                throw new InvalidModelException($"{path}, line {lineNumber}: rank '{Clip(fields[1])}' is not a non-negative integer.");
            ranks.Add((bytes, rank));
        }
        if (ranks.Count == 0) throw new InvalidModelException($"{path}: no tokens.");
        return ToTable(ranks, path);
    }

    /// <summary>
    /// Reads the compressed rank data embedded in Microsoft.ML.Tokenizers.Data.* packages: an optional
    /// "Capacity: N" header, then one base64 token per line whose rank is its position (or "base64 rank").
    /// </summary>
    public static byte[]?[] ReadEmbedded(Stream stream, string source)
    {
        using var reader = new StreamReader(stream, Encoding.UTF8);
        var ranks = new List<(byte[] Bytes, int Rank)>();
        int lineNumber = 0;
        string? line;
        while ((line = reader.ReadLine()) is not null)
        {
            lineNumber++;
            if (line.Length == 0 || line.StartsWith("Capacity:", StringComparison.Ordinal)) continue;
            string[] fields = line.Split(' ');
            try
            {
                int rank = fields.Length == 2 ? int.Parse(fields[1], System.Globalization.CultureInfo.InvariantCulture) : ranks.Count;
                ranks.Add((Convert.FromBase64String(fields[0]), rank));
            }
            catch (FormatException)
            {
                throw new InvalidModelException($"{source}, line {lineNumber}: unexpected rank line '{Clip(line)}'.");
            }
        }
        if (ranks.Count == 0) throw new InvalidModelException($"{source}: no tokens.");
        return ToTable(ranks, source);
    }

    /// <summary>Builds the rank-indexed table, rejecting duplicate ranks or duplicate byte strings.</summary>
    public static byte[]?[] ToTable(IReadOnlyList<(byte[] Bytes, int Rank)> ranks, string source)
    {
        foreach (var (bytes, rank) in ranks)
            if (rank < 0 || rank > LlamaTokenizer.MaxTokenId)
                throw new InvalidModelException($"{source}: token '{Convert.ToBase64String(bytes)}' has rank {rank}, outside 0..{LlamaTokenizer.MaxTokenId}.");
        int max = ranks.Max(r => r.Rank);
        var table = new byte[]?[max + 1];
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (bytes, rank) in ranks)
        {
            if (table[rank] is not null) throw new InvalidModelException($"{source}: rank {rank} appears twice.");
            if (!seen.Add(Encoding.Latin1.GetString(bytes)))
                throw new InvalidModelException($"{source}: token bytes '{Convert.ToBase64String(bytes)}' appear twice (rank {rank}).");
            table[rank] = bytes;
        }
        return table;
    }

    /// <summary>Writes the table in tiktoken format (unused ranks skipped).</summary>
    public static void Write(Stream stream, IReadOnlyList<byte[]?> table)
    {
        using var writer = new StreamWriter(stream, new UTF8Encoding(false), 1 << 16, leaveOpen: true) { NewLine = "\n" };
        for (int rank = 0; rank < table.Count; rank++)
        {
            if (table[rank] is not { } bytes) continue;
            writer.Write(Convert.ToBase64String(bytes));
            writer.Write(' ');
            writer.WriteLine(rank);
        }
    }

    static string Clip(string s) => s.Length <= 40 ? s : s[..40] + "...";
}
