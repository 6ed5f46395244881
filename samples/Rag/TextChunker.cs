// Splits a document into retrieval chunks: whole paragraphs packed up to a character budget, so a chunk never
// cuts a sentence in half and a citation points at readable text. A paragraph longer than the budget is split at
// sentence ends.
namespace SwiftKV.Samples.Rag;

/// <summary>Paragraph-packing chunker.</summary>
public static class TextChunker
{
    /// <summary>The chunks of <paramref name="text"/>, each at most <paramref name="maxChars"/> long (unless one sentence is longer).</summary>
    public static IReadOnlyList<string> Chunk(string text, int maxChars)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxChars, 50);
        var pieces = text.Replace("\r\n", "\n")
            .Split("\n\n", StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(p => p.Replace('\n', ' '))
            .SelectMany(p => p.Length <= maxChars ? [p] : Sentences(p));
        var chunks = new List<string>();
        var current = new System.Text.StringBuilder();
        foreach (string piece in pieces)
        {
            if (current.Length > 0 && current.Length + 1 + piece.Length > maxChars)
            {
                chunks.Add(current.ToString());
                current.Clear();
            }
            if (current.Length > 0) current.Append('\n');
            current.Append(piece);
        }
        if (current.Length > 0) chunks.Add(current.ToString());
        return chunks;
    }

    static IEnumerable<string> Sentences(string paragraph)
    {
        int start = 0;
        for (int i = 0; i < paragraph.Length - 1; i++)
        {
            if (paragraph[i] is '.' or '?' or '!' && paragraph[i + 1] == ' ')
            {
                yield return paragraph[start..(i + 1)];
                start = i + 2;
            }
        }
        if (start < paragraph.Length) yield return paragraph[start..];
    }
}
