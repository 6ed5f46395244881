// JSON allows any amount of white space between its tokens, and a grammar alone lets a model spend its whole budget
// on it: a random-weight model writes hundreds of tabs before a one-byte answer, and real models under grammars fall
// into white-space loops (llama.cpp's JSON grammars bound it for that reason). A constraint therefore caps each run of
// white space between JSON tokens (not inside strings) at MaxRun bytes, which holds a newline and an indent 39 deep.
using System.Runtime.CompilerServices;

namespace SwiftKV.Engine.Sampling;

/// <summary>The tokens that begin with white space, by how much (built once per token table and shared).</summary>
public sealed class WhitespaceRuns
{
    /// <summary>The most white-space bytes a constraint allows in a row between JSON tokens.</summary>
    public const int MaxRun = 40;

    static readonly ConditionalWeakTable<IReadOnlyList<byte[]?>, WhitespaceRuns> s_shared = new();

    readonly int[] _ids;        // ids that begin with white space, the longest lead first
    readonly int[] _lead;       // their leading white-space bytes, in the same order

    WhitespaceRuns(IReadOnlyList<byte[]?> tokenBytes)
    {
        var ids = new List<int>();
        var lead = new List<int>();
        for (int id = 0; id < tokenBytes.Count; id++)
        {
            int n = tokenBytes[id] is { } b ? LeadingWhitespace(b) : 0;
            if (n == 0) continue;
            ids.Add(id);
            lead.Add(n);
        }
        _ids = [.. ids];
        _lead = [.. lead];
        Array.Sort(_lead, _ids, Comparer<int>.Create((a, b) => b.CompareTo(a)));
    }

    /// <summary>The runs of <paramref name="tokenBytes"/>, made on first use and kept while the table lives.</summary>
    public static WhitespaceRuns For(IReadOnlyList<byte[]?> tokenBytes) => s_shared.GetValue(tokenBytes, t => new WhitespaceRuns(t));

    /// <summary>JSON's white space: space, tab, line feed, carriage return.</summary>
    public static bool IsWhitespace(byte b) => b is (byte)' ' or (byte)'\t' or (byte)'\n' or (byte)'\r';

    /// <summary>White-space bytes at the start of <paramref name="bytes"/>.</summary>
    public static int LeadingWhitespace(ReadOnlySpan<byte> bytes)
    {
        int n = 0;
        while (n < bytes.Length && IsWhitespace(bytes[n])) n++;
        return n;
    }

    /// <summary>Masks in <paramref name="logits"/> every token that begins with more than <paramref name="room"/> white-space bytes.</summary>
    public void MaskLongerThan(int room, Span<float> logits)
    {
        for (int k = 0; k < _ids.Length && _lead[k] > room; k++)
            if (_ids[k] < logits.Length) logits[_ids[k]] = float.NegativeInfinity;
    }
}
