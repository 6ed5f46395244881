// The heap-based merge of long pieces (LlamaTokenizer.MergeLongPiece) against the library's own merge
// (Microsoft.ML.Tokenizers' tiktoken port, the reference the rest of the tokenizer tests pin to Hugging Face): the
// same ids for random long pieces and for random texts mixing long runs with ordinary text.
using System.Text;
using SwiftKV.Model.Tokenization;
using Xunit;

namespace SwiftKV.Model.Tests.Tokenization;

public sealed class LongPieceTests
{
    static readonly LlamaTokenizer Demo = LlamaTokenizer.CreateDemo();

    static string RandomText(Random rng, int segments)
    {
        string[] words = ["the", " quick", " brown", "fox", " über", " naïve", "日本語", " 😀", "12345", "3.14", "don't", "WE'LL"];
        var sb = new StringBuilder();
        for (int s = 0; s < segments; s++)
        {
            switch (rng.Next(7))
            {
                case 0: sb.Append((char)('a' + rng.Next(26)), 1 + rng.Next(1200)); break;        // a run of one letter
                case 1: for (int i = 0, n = 300 + rng.Next(900); i < n; i++) sb.Append((char)('a' + rng.Next(3))); break; // a long word of a, b, c
                case 2: sb.Append(' ', 1 + rng.Next(600)); break;                                   // a run of spaces
                case 3: sb.Append('\n', 1 + rng.Next(50)); break;
                case 4: sb.Append('!', 1 + rng.Next(400)); break;                                   // a punctuation run
                case 5: sb.Append('é', 1 + rng.Next(500)); break;                                   // a 2-byte letter run
                default: for (int i = 0, n = 1 + rng.Next(20); i < n; i++) sb.Append(words[rng.Next(words.Length)]); break;
            }
        }
        return sb.ToString();
    }

    [Fact]
    public void LongPieces_MergeAsTheLibraryDoes()
    {
        var rng = new Random(11);
        for (int t = 0; t < 60; t++)
        {
            var piece = new StringBuilder();
            int n = LlamaTokenizer.LongPiece + 1 + rng.Next(1500);
            int alphabet = 1 + rng.Next(6);
            for (int i = 0; i < n; i++) piece.Append((char)('a' + rng.Next(alphabet)));
            string text = piece.ToString();
            var ids = new List<int>();
            Demo.MergeLongPiece(Encoding.UTF8.GetBytes(text), ids);
            Assert.Equal(Demo.EncodeWithLibraryOnly(text), ids);
        }
    }

    [Fact]
    public void MixedTextWithLongRuns_EncodesAsTheLibraryDoes()
    {
        var rng = new Random(12);
        for (int t = 0; t < 80; t++)
        {
            string text = RandomText(rng, 1 + rng.Next(12));
            Assert.Equal(Demo.EncodeWithLibraryOnly(text), Demo.Encode(text));
        }
    }

    /// <summary>Texts of several runs' length: cutting a run every RunChars chars (between pieces) changes no id.</summary>
    [Fact]
    public void TextsLongerThanARun_EncodeAsTheLibraryDoes()
    {
        var rng = new Random(13);
        string[] parts = ["the", " quick", "  brown", "\t fox", " über", "日本語", " 😀", "12345", "3.14", "don't", "WE'LL", "\n", "\r\n  ", "   ", "!?", " (x)", "\n\n\t"];
        for (int t = 0; t < 12; t++)
        {
            var sb = new StringBuilder();
            while (sb.Length < 3 * LlamaTokenizer.RunChars + rng.Next(LlamaTokenizer.RunChars)) sb.Append(parts[rng.Next(parts.Length)]);
            string text = t % 2 == 0 ? sb.ToString() : sb + RandomText(rng, 6);
            Assert.Equal(Demo.EncodeWithLibraryOnly(text), Demo.Encode(text));
        }
    }

    /// <summary>A budget stops the encoding within a run of its limit; a text that fits is encoded whole.</summary>
    [Fact]
    public void TryEncodeInto_StopsSoonAfterTheBudget()
    {
        string text = string.Concat(Enumerable.Repeat("The shipment left the warehouse on time. ", 50_000));   // ~2 MB, ~450K tokens
        var ids = new List<int>();
        Assert.False(Demo.TryEncodeInto(text, ids, maxCount: 1000, cancellationToken: TestContext.Current.CancellationToken));
        Assert.InRange(ids.Count, 1001, 1000 + LlamaTokenizer.RunChars);
        Assert.Equal(Demo.Encode(text[..20_000]).Take(1000), ids.Take(1000));

        var all = new List<int> { 7 };
        Assert.True(Demo.TryEncodeInto("short text", all, maxCount: 100, cancellationToken: TestContext.Current.CancellationToken));
        Assert.Equal([7, .. Demo.Encode("short text")], all);
    }

    [Fact]
    public void TryEncodeInto_ObservesCancellation()
    {
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var e = Assert.ThrowsAny<OperationCanceledException>(() => Demo.TryEncodeInto(new string('x', 10_000) + " y", [], int.MaxValue, cancellationToken: cts.Token));
        Assert.Equal(cts.Token, e.CancellationToken);
    }

    /// <summary>
    /// Where a run is cut matters: Llama 3's <c>\s+(?!\S)</c> looks past whitespace, so a span ending in whitespace
    /// would join what the whole text splits (the review's cases: two spaces before a digit, tabs before a long piece).
    /// </summary>
    [Fact]
    public void CutsNextToWhitespace_KeepTheWholeTextsSplit()
    {
        string[] texts =
        [
            string.Concat(Enumerable.Repeat("ab ", 1364)) + "cc  1 end",
            "x\t\t" + new string('!', 300),
            "a\n  " + new string('b', 400) + "  \t7",
            string.Concat(Enumerable.Repeat("word\t\t", 900)) + "\n\n  42",
        ];
        foreach (string text in texts)
            Assert.Equal(Demo.EncodeWithLibraryOnly(text), Demo.Encode(text));
    }

    /// <summary>Runs cut at every possible size over whitespace-heavy text give the library's ids.</summary>
    [Fact]
    public void RunsCutAnywhere_EncodeAsTheLibraryDoes()
    {
        var rng = new Random(14);
        string[] parts = [" ", "  ", "\t", "\n", "\r\n", " \n ", "1", "23", "4567", "a", "bc", "'s", "'", "!", "?!", "(", "é", "日本", "😀", "\u00a0", "\u2028", " x", "\t9"];
        for (int t = 0; t < 40; t++)
        {
            var sb = new StringBuilder();
            int n = 300 + rng.Next(1500);
            while (sb.Length < n) sb.Append(parts[rng.Next(parts.Length)]);
            if (t % 4 == 3) sb.Append(' ', LlamaTokenizer.LongPiece + 10).Append('z');   // a long whitespace piece
            string text = sb.ToString();
            var expected = Demo.EncodeWithLibraryOnly(text);
            foreach (int runChars in new[] { 1, 2, 3, 7, 64 })
                Assert.Equal(expected, Demo.EncodeWithRunChars(text, runChars));
        }
    }

    /// <summary>One piece far past the budget is refused from its length alone, before any merging.</summary>
    [Fact]
    public void OnePieceFarPastTheBudget_IsRefusedWithoutMerging()
    {
        var ids = new List<int>();
        Assert.False(Demo.TryEncodeInto("x " + new string('a', 4_000_000), ids, maxCount: 255, cancellationToken: TestContext.Current.CancellationToken));
        Assert.Equal(Demo.Encode("x"), ids);
    }
}
