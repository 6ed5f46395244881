// Turns a stream of generated token ids into text without ever emitting half a character: byte-level BPE
// tokens may end inside a multi-byte UTF-8 sequence (an emoji is often two or three tokens). A stateful UTF-8
// decoder holds the incomplete tail until the next token completes it; invalid bytes become U+FFFD exactly
// as Encoding.UTF8.GetString would, so the concatenated output equals LlamaTokenizer.Decode(all ids).
using System.Text;

namespace SwiftKV.Model.Tokenization;

/// <summary>Incremental token -> text decoding for streaming generation. Not thread-safe.</summary>
public sealed class StreamingDetokenizer
{
    readonly LlamaTokenizer _tokenizer;
    readonly Decoder _decoder = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetDecoder();
    char[] _chars = new char[64];

    public StreamingDetokenizer(LlamaTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        _tokenizer = tokenizer;
    }

    /// <summary>Adds one token; returns the text it completes (possibly empty).</summary>
    public string Append(int tokenId) => DecodeChunk(_tokenizer.GetTokenBytes(tokenId), flush: false);

    /// <summary>Returns whatever is still held (an incomplete sequence becomes U+FFFD) and resets.</summary>
    public string Flush() => DecodeChunk([], flush: true);

    string DecodeChunk(ReadOnlySpan<byte> bytes, bool flush)
    {
        int needed = _decoder.GetCharCount(bytes, flush);
        if (_chars.Length < needed) _chars = new char[Math.Max(needed, _chars.Length * 2)];
        int written = _decoder.GetChars(bytes, _chars, flush);
        return new string(_chars, 0, written);
    }
}
