// Encoding facts of the demo tokenizer (cl100k_base ranks + Llama 3 specials). Independent references:
// token ids published by tiktoken for cl100k_base, and Microsoft.ML.Tokenizers' own cl100k_base tokenizer
// (its own rank loading and cl100k regex) on text where the cl100k and Llama 3 regexes split alike.
using TiktokenTokenizer = Microsoft.ML.Tokenizers.TiktokenTokenizer;
using SwiftKV.Model.Tokenization;
using Xunit;

namespace SwiftKV.Model.Tests.Tokenization;

public sealed class LlamaTokenizerTests
{
    static readonly LlamaTokenizer Demo = LlamaTokenizer.CreateDemo();

    public static readonly TheoryData<string> RoundTripTexts = new(
        "Hello, world! The quick brown fox jumps over the lazy dog.",
        "Café crème brûlée, naïve façade, Ångström, Øresund",
        "日本語のテキストと中文文本，还有한국어.",
        "Emoji: 🦙🙂👍🏽 👨‍👩‍👧 and flags 🇫🇷",
        "   leading spaces, trailing tabs\t\t",
        "line one\nline two\r\n\n\n  indented\n",
        "mixed 12345 67.89 x=3*(4+5) {\"json\": [1, 2]}",
        "");

    [Theory]
    [InlineData("hello world", new[] { 15339, 1917 })]
    [InlineData("Hello World", new[] { 9906, 4435 })]
    [InlineData("hello ", new[] { 15339, 220 })]
    [InlineData("rer", new[] { 38149 })]
    [InlineData("'rer", new[] { 2351, 81 })]
    [InlineData("today\n ", new[] { 31213, 198, 220 })]
    [InlineData("today\n \n", new[] { 31213, 27907 })]
    public void Encode_KnownCl100kIds(string text, int[] expected)
    {
        Assert.Equal(expected, Demo.Encode(text));
    }

    [Theory]
    [MemberData(nameof(RoundTripTexts))]
    public void Encode_MatchesLibraryCl100k(string text)
    {
        var reference = TiktokenTokenizer.CreateForEncoding("cl100k_base");
        Assert.Equal(reference.EncodeToIds(text), Demo.Encode(text));
    }

    [Theory]
    [MemberData(nameof(RoundTripTexts))]
    public void Decode_InvertsEncode(string text)
    {
        Assert.Equal(text, Demo.Decode(Demo.Encode(text)));
    }

    [Fact]
    public void PreTokenizer_SupplementaryLettersAndDigitsAreLettersAndDigits()
    {
        // Code-point semantics of the Llama 3 regex (what tiktoken and HF tokenizers do): 𠀀 and 𝐇 are \p{L},
        // 𝟏 is \p{N}, 🦙 is neither. .NET's plain \p{L} would see each as two surrogates and split differently.
        string text = "a𠀀b 𝐇𝐞𝐥𝐥𝐨 𝟏𝟐𝟑𝟒 🦙x 𠀀'll";
        var pieces = Llama3PreTokenizerRegex.Create().Matches(text).Select(m => m.Value);
        Assert.Equal(["a𠀀b", " 𝐇𝐞𝐥𝐥𝐨", " ", "𝟏𝟐𝟑", "𝟒", " 🦙", "x", " 𠀀", "'ll"], pieces);
    }

    [Fact]
    public void CreateDemo_HasLlama3SpecialLayout()
    {
        Assert.Equal(128256, Demo.VocabularySize);
        Assert.Equal(256, Demo.SpecialTokens.Count);
        Assert.Equal(128000, Demo.BosTokenId);
        Assert.Equal(128009, Demo.EosTokenId);
        Assert.Equal([128001, 128008, 128009], Demo.StopTokenIds.Order());
        Assert.Equal(128000, Demo.GetSpecialTokenId("<|begin_of_text|>"));
        Assert.Equal(128001, Demo.GetSpecialTokenId("<|end_of_text|>"));
        Assert.Equal(128002, Demo.GetSpecialTokenId("<|reserved_special_token_0|>"));
        Assert.Equal(128005, Demo.GetSpecialTokenId("<|reserved_special_token_3|>"));
        Assert.Equal(128006, Demo.GetSpecialTokenId("<|start_header_id|>"));
        Assert.Equal(128007, Demo.GetSpecialTokenId("<|end_header_id|>"));
        Assert.Equal(128008, Demo.GetSpecialTokenId("<|eom_id|>"));
        Assert.Equal(128009, Demo.GetSpecialTokenId("<|eot_id|>"));
        Assert.Equal(128010, Demo.GetSpecialTokenId("<|python_tag|>"));
        Assert.Equal(128011, Demo.GetSpecialTokenId("<|reserved_special_token_4|>"));
        Assert.Equal(128255, Demo.GetSpecialTokenId("<|reserved_special_token_248|>"));
        Assert.Null(Demo.GetSpecialTokenId("<|endoftext|>"));
    }

    [Fact]
    public void Encode_SpecialTokenTextIsPlainByDefault()
    {
        var plain = Demo.Encode("a<|eot_id|>b");
        Assert.DoesNotContain(128009, plain);
        Assert.True(plain.Count > 3);
        Assert.Equal("a<|eot_id|>b", Demo.Decode(plain));
    }

    [Fact]
    public void Encode_ParsesSpecialTokensWhenAsked()
    {
        Assert.Equal([128009], Demo.Encode("<|eot_id|>", parseSpecialTokens: true));
        var ids = Demo.Encode("hello world<|eot_id|><|start_header_id|>hello world", parseSpecialTokens: true);
        Assert.Equal([15339, 1917, 128009, 128006, 15339, 1917], ids);
        // Text that only resembles a special token is ordinary text.
        Assert.DoesNotContain(128009, Demo.Encode("<|eot_id |>", parseSpecialTokens: true));
    }

    /// <summary>A lone surrogate encodes as U+FFFD (as UTF-8 writes it), not as three invalid bytes; pairs are untouched.</summary>
    [Fact]   // not a Theory: xunit's data serialization itself turns a lone surrogate into replacement characters
    public void Encode_LoneSurrogate_IsReplacementCharacter()
    {
        foreach (var (text, expected) in new[]
        {
            ("hi\uD800there", "hi\uFFFDthere"), ("x\uDC00", "x\uFFFD"), ("\uD83D", "\uFFFD"),
            ("ok \uD83D\uDE00 \uD800\uD83D\uDE00", "ok \uD83D\uDE00 \uFFFD\uD83D\uDE00"),
        })
        {
            Assert.Equal(Demo.Encode(expected), Demo.Encode(text));
            Assert.Equal(expected, Demo.Decode(Demo.Encode(text)));
            Assert.Equal(Demo.Encode(expected, parseSpecialTokens: true), Demo.Encode(text, parseSpecialTokens: true));
        }
    }

    [Fact]
    public void GetTokenBytes_CoversSpecialsUnusedAndOutOfRange()
    {
        Assert.Equal("<|eot_id|>"u8.ToArray(), Demo.GetTokenBytes(128009).ToArray());
        Assert.Equal(" world"u8.ToArray(), Demo.GetTokenBytes(1917).ToArray());
        Assert.True(Demo.GetTokenBytes(100300).IsEmpty); // between cl100k's last rank and 128000: unused
        Assert.Throws<ArgumentOutOfRangeException>(() => Demo.GetTokenBytes(128256));
        Assert.Throws<ArgumentOutOfRangeException>(() => Demo.GetTokenBytes(-1));
    }

    [Fact]
    public void Decode_PartialCharacterBecomesReplacement()
    {
        var ids = Demo.Encode("🦙");
        Assert.True(ids.Count > 1, "expected the emoji to span several tokens");
        Assert.Contains('\uFFFD', Demo.Decode([ids[0]]));
        Assert.Equal("🦙", Demo.Decode(ids));
    }
}
