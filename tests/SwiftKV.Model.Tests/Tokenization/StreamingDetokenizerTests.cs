// Streaming decode must never emit half a character and must add up to the one-shot Decode.
using SwiftKV.Model.Tokenization;
using Xunit;

namespace SwiftKV.Model.Tests.Tokenization;

public sealed class StreamingDetokenizerTests
{
    static readonly LlamaTokenizer Demo = LlamaTokenizer.CreateDemo();

    [Theory]
    [InlineData("🦙🙂")]
    [InlineData("Llamas 🦙 say 你好，世界 and 👨‍👩‍👧 ok")]
    [InlineData("龘龘 𠀀𠀁 ﷽")]
    public void Append_SplitCharacters_ConcatenatesToDecode(string text)
    {
        var ids = Demo.Encode(text);
        // The test is only meaningful when some token ends inside a character.
        Assert.Contains(ids, id => !IsValidUtf8(Demo.GetTokenBytes(id)));

        var stream = new StreamingDetokenizer(Demo);
        var pieces = new List<string>();
        foreach (int id in ids) pieces.Add(stream.Append(id));
        pieces.Add(stream.Flush());

        Assert.All(pieces, p =>
        {
            Assert.DoesNotContain('\uFFFD', p);
            if (p.Length > 0) Assert.False(char.IsHighSurrogate(p[^1]), "a piece ends in half a surrogate pair");
        });
        Assert.Equal(Demo.Decode(ids), string.Concat(pieces));
        Assert.Equal(text, string.Concat(pieces));
    }

    [Fact]
    public void Append_HoldsIncompleteCharacter_FlushReplacesIt()
    {
        var ids = Demo.Encode("🦙");
        var stream = new StreamingDetokenizer(Demo);
        Assert.Equal("", stream.Append(ids[0]));
        Assert.Equal("\uFFFD", stream.Flush());
        Assert.Equal("", stream.Flush());
    }

    [Fact]
    public void Append_SpecialTokensStreamAsText()
    {
        var stream = new StreamingDetokenizer(Demo);
        Assert.Equal("hello", stream.Append(15339));
        Assert.Equal("<|eot_id|>", stream.Append(128009));
    }

    static bool IsValidUtf8(ReadOnlySpan<byte> bytes) => System.Text.Unicode.Utf8.IsValid(bytes);
}
