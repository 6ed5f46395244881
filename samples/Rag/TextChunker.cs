// Splits a document into retrieval chunks: whole paragraphs packed up to a character budget, so a citation points at
// readable text. A paragraph longer than the budget is split at sentence ends, a sentence at whitespace, and a word
// longer than the budget inside it (TextSplitter), so no chunk is ever over the budget.

namespace SwiftKV.Samples.Rag;

/// <summary>Paragraph-packing chunker.</summary>
public static class TextChunker
{
    /// <summary>The chunks of <paramref name="text"/>, each at most <paramref name="maxChars"/> long.</summary>
    public static IReadOnlyList<string> Chunk(string text, int maxChars)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxChars, 50);
        var paragraphs = text.Replace("\r\n", "\n")
            .Split("\n\n", StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(p => p.Replace('\n', ' '));
        return new TextSplitter(maxChars, s => s.Length).Chunk(paragraphs, "\n");
    }
}
