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
}
