// The samples' chunking on text that has no natural boundaries (no blank lines, no punctuation, words longer than
// the budget, surrogate pairs): every chunk fits, checked by measuring the chunks themselves (their length, or the
// tokenizer's count of the whole chunk), and no word is lost or reordered.
using SwiftKV.Model.Tokenization;
using SwiftKV.Samples.Rag;
using SwiftKV.Samples.Summarization;
using Xunit;

namespace SwiftKV.Samples.Tests;

public sealed class TextSplitterTests
{
    static string[] Words(IEnumerable<string> texts) =>
        texts.SelectMany(t => t.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)).ToArray();

    static string UnpunctuatedLine(int words) =>
        string.Join(" ", Enumerable.Range(0, words).Select(i => $"entry{i} status{i % 7} value{i * 37 % 1000}"));

    [Fact]
    public void RagChunker_OneLineWithoutPunctuation_IsCutAtWhitespaceUnderBudget()
    {
        string log = UnpunctuatedLine(400);   // ~10,000 characters, one line, not one sentence end
        var chunks = TextChunker.Chunk(log, 200);

        Assert.True(chunks.Count >= log.Length / 200);
        Assert.All(chunks, c => Assert.InRange(c.Length, 1, 200));
        Assert.Equal(Words([log]), Words(chunks));
    }

    [Fact]
    public void RagChunker_WordLongerThanBudget_IsCutInsideAndReassembles()
    {
        string blob = string.Concat(Enumerable.Range(0, 300).Select(i => (char)('a' + i % 26)));
        string text = "Intro sentence. " + blob + " tail words here.";
        var chunks = TextChunker.Chunk(text, 64);

        Assert.All(chunks, c => Assert.InRange(c.Length, 1, 64));
        Assert.Equal(text.Replace(" ", ""), string.Concat(chunks).Replace(" ", "").Replace("\n", ""));
    }

    /// <summary>A long word is cut in time linear in its length: a 4 MB base64 line by characters, 100 KB by tokens
    /// (each took 16-19 s when every cut measured the whole rest of the word; the bounds here are generous).</summary>
    [Fact]
    public void Cut_LongWord_IsLinear()
    {
        string base64 = Convert.ToBase64String(Enumerable.Range(0, 3_000_000).Select(i => (byte)(i * 2654435761u >> 24)).ToArray());
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var chunks = TextChunker.Chunk(base64, 1000);
        Assert.Equal(base64, string.Concat(chunks));
        Assert.All(chunks, c => Assert.InRange(c.Length, 1, 1000));

        var tokenizer = LlamaTokenizer.CreateDemo();
        string line = base64[..100_000];
        var byTokens = new TextSplitter(256, s => tokenizer.Encode(s).Count).Chunk([line], "\n\n");
        Assert.Equal(line, string.Concat(byTokens));
        Assert.All(byTokens, c => Assert.True(tokenizer.Encode(c).Count <= 256));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"took {clock.Elapsed.TotalSeconds:F1} s");
    }

    [Fact]
    public void Cut_NeverSeparatesASurrogatePair()
    {
        string emoji = string.Concat(Enumerable.Repeat("\U0001F600", 300));   // 600 UTF-16 units, no whitespace
        var chunks = TextChunker.Chunk(emoji, 51);

        Assert.All(chunks, c =>
        {
            Assert.InRange(c.Length, 2, 51);
            Assert.False(char.IsLowSurrogate(c[0]), "a chunk starts with the second half of a pair");
            Assert.False(char.IsHighSurrogate(c[^1]), "a chunk ends with the first half of a pair");
        });
        Assert.Equal(emoji, string.Concat(chunks));
    }

    [Fact]
    public void RagChunker_LongParagraph_EndsChunksAtSentenceEnds()
    {
        string paragraph = string.Join(" ", Enumerable.Range(0, 40).Select(i => $"Sentence number {i} says something short."));
        var chunks = TextChunker.Chunk(paragraph, 120);

        Assert.True(chunks.Count > 5);
        Assert.All(chunks, c => Assert.True(c.Length <= 120 && c.EndsWith('.'), $"chunk of {c.Length}: {c}"));
        Assert.Equal(Words([paragraph]), Words(chunks));
    }

    [Fact]
    public void SummarizationChunks_SectionWithoutPunctuation_FitTheTokenBudget()
    {
        var tokenizer = LlamaTokenizer.CreateDemo();
        string document = LongReport.Generate(3) + "\n\n" + UnpunctuatedLine(600) + "\n\n" + LongReport.Generate(2);
        Assert.True(tokenizer.Encode(UnpunctuatedLine(600)).Count > 3 * 256, "the unpunctuated section should be several budgets long");

        var chunks = SummarizationSample.ChunkByTokens(document, tokenizer, 256);

        Assert.All(chunks, c => Assert.True(tokenizer.Encode(c).Count <= 256, $"chunk of {tokenizer.Encode(c).Count} tokens"));
        Assert.Equal(Words([document]), Words(chunks));
    }

    [Fact]
    public void Constructor_RefusesAnEmptyBudget()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new TextSplitter(0, s => s.Length));
        Assert.Throws<ArgumentNullException>(() => new TextSplitter(10, null!));
    }
}
