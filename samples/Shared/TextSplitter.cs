// Cuts a document into chunks that fit a budget (characters or tokens: the caller's measure) at the most natural
// boundary there is: whole blocks (paragraphs or sections) packed together; a block over the budget at its sentence
// ends; a sentence over the budget at whitespace; and a word over the budget (a URL, a base64 line) inside it. Text
// without punctuation or blank lines (a log, a table, one long line) so still yields chunks that fit a prompt.
using System.Text;

namespace SwiftKV.Samples;

/// <summary>Splits text into chunks of at most <c>budget</c> by <c>measure</c>, at the coarsest boundary that fits.</summary>
/// <remarks>
/// Sizes are added up piece by piece (the measure of each piece plus the measure of each separator), so a token
/// budget is met exactly only by a tokenizer whose count is additive at those boundaries; Llama 3's pre-tokenizer
/// splits at the whitespace this class joins on, so the sum is close. Callers that must stay under a hard limit
/// leave a margin.
/// </remarks>
public sealed class TextSplitter
{
    readonly int _budget;
    readonly Func<string, int> _measure;

    /// <param name="budget">Largest chunk, in the measure's units (at least 1).</param>
    /// <param name="measure">The size of a piece of text: its length, or its token count.</param>
    public TextSplitter(int budget, Func<string, int> measure)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(budget, 1);
        ArgumentNullException.ThrowIfNull(measure);
        _budget = budget;
        _measure = measure;
    }

    /// <summary>The blocks packed in order into chunks, joined by <paramref name="separator"/>. A block that does not
    /// fit alone is split first (sentences, then words, then characters) and its pieces rejoined by single spaces
    /// (its line breaks and tabs become spaces), so a chunk may end inside one block and the next go on with it.</summary>
    public List<string> Chunk(IEnumerable<string> blocks, string separator)
    {
        ArgumentNullException.ThrowIfNull(blocks);
        ArgumentNullException.ThrowIfNull(separator);
        var joints = new Dictionary<string, int>();
        int Joint(string joiner) => joints.TryGetValue(joiner, out int n) ? n : joints[joiner] = _measure(joiner);

        var chunks = new List<string>();
        var current = new StringBuilder();
        int size = 0;
        foreach (var (text, joiner) in blocks.Where(b => b.Length > 0).SelectMany(b => Fit(b, separator, Level.Sentences)))
        {
            int n = _measure(text);
            if (current.Length > 0 && size + Joint(joiner) + n > _budget)
            {
                chunks.Add(current.ToString());
                current.Clear();
                size = 0;
            }
            if (current.Length > 0) { current.Append(joiner); size += Joint(joiner); }
            current.Append(text);
            size += n;
        }
        if (current.Length > 0) chunks.Add(current.ToString());
        return chunks;
    }

    enum Level { Sentences, Words, Characters }

    // The pieces of one block, each within the budget, with what joins each to the piece before it: the block
    // separator for the block's first piece, a space between sentences and words, nothing between the cuts of a word.
    IEnumerable<(string Text, string Joiner)> Fit(string text, string joiner, Level level)
    {
        if (_measure(text) <= _budget)
            return [(text, joiner)];
        return level switch
        {
            Level.Sentences => Sentences(text).SelectMany((s, i) => Fit(s, i == 0 ? joiner : " ", Level.Words)),
            Level.Words => text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)
                .SelectMany((w, i) => Fit(w, i == 0 ? joiner : " ", Level.Characters)),
            _ => Cut(text).Select((c, i) => (c, i == 0 ? joiner : "")),
        };
    }

    // A sentence ends at '.', '?' or '!' followed by whitespace; the whitespace goes.
    static IEnumerable<string> Sentences(string text)
    {
        int start = 0;
        for (int i = 0; i < text.Length - 1; i++)
        {
            if (text[i] is '.' or '?' or '!' && char.IsWhiteSpace(text[i + 1]))
            {
                yield return text[start..(i + 1)];
                start = i + 2;
                while (start < text.Length && char.IsWhiteSpace(text[start])) start++;
                i = start - 1;
            }
        }
        if (start < text.Length) yield return text[start..];
    }

    // The longest prefixes within the budget, never between the two halves of a surrogate pair; a single character
    // over the budget (a budget of one token against a rare character) is still one piece, so nothing is lost. The
    // search gallops from a short prefix, so each piece costs measures of about its own length, not the word's: a
    // megabyte of base64 stays linear.
    IEnumerable<string> Cut(string word)
    {
        int start = 0;
        while (start < word.Length)
        {
            int rest = word.Length - start;
            int lo = 1, hi = Math.Min(rest, Math.Max(1, _budget));
            if (_measure(word.Substring(start, hi)) <= _budget)
            {
                // Grow while the prefix still fits (a token budget covers several characters per token).
                lo = hi;
                while (lo < rest)
                {
                    int next = Math.Min(rest, lo * 2);
                    if (_measure(word.Substring(start, next)) > _budget) { hi = next - 1; break; }
                    lo = hi = next;
                }
            }
            while (lo < hi)
            {
                int mid = (lo + hi + 1) / 2;
                if (_measure(word.Substring(start, mid)) <= _budget) lo = mid; else hi = mid - 1;
            }
            int end = start + lo;
            if (end < word.Length && char.IsLowSurrogate(word[end]) && end - start > 1) end--;
            else if (end < word.Length && char.IsLowSurrogate(word[end])) end++;
            yield return word[start..end];
            start = end;
        }
    }
}
