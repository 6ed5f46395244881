// GPT-2's byte <-> unicode table, used by Hugging Face "ByteLevel" BPE files (tokenizer.json) to store
// arbitrary bytes as printable characters: printable Latin-1 bytes map to themselves, the other 68 bytes
// (controls, space, 0x7F-0xA0, 0xAD) map to U+0100.. in byte order. Llama 3's tokenizer.json vocab and merges
// are written in this alphabet ("Ġ" is the space byte).
namespace SwiftKV.Model.Tokenization;

internal static class ByteLevelAlphabet
{
    static readonly char[] s_byteToChar = BuildByteToChar();
    static readonly Dictionary<char, byte> s_charToByte =
        Enumerable.Range(0, 256).ToDictionary(b => s_byteToChar[b], b => (byte)b);

    static char[] BuildByteToChar()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            map[b] = printable ? (char)b : (char)next++;
        }
        return map;
    }

    public static string Encode(ReadOnlySpan<byte> bytes)
    {
        Span<char> chars = bytes.Length <= 256 ? stackalloc char[bytes.Length] : new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) chars[i] = s_byteToChar[bytes[i]];
        return new string(chars);
    }

    /// <summary>Maps a byte-level string back to bytes; null when it holds a character outside the alphabet.</summary>
    public static byte[]? TryDecode(string text)
    {
        var bytes = new byte[text.Length];
        for (int i = 0; i < text.Length; i++)
        {
            if (!s_charToByte.TryGetValue(text[i], out bytes[i])) return null;
        }
        return bytes;
    }
}
