// Shared helpers for the tokenizer tests: a self-deleting temp directory and writers for small checkpoint files.
using System.Text;

namespace SwiftKV.Model.Tests.Tokenization;

public sealed class TokenizerTempDir : IDisposable
{
    public TokenizerTempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "swiftkv-tok-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string Write(string relativePath, string content)
    {
        string full = System.IO.Path.Combine(Path, relativePath);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(full)!);
        File.WriteAllText(full, content, new UTF8Encoding(false));
        return full;
    }

    /// <summary>A tiktoken file with the 256 single bytes at ranks 0..255 followed by <paramref name="merged"/>.</summary>
    public void WriteByteTiktoken(params string[] merged)
    {
        var sb = new StringBuilder();
        for (int b = 0; b < 256; b++) sb.Append(Convert.ToBase64String([(byte)b])).Append(' ').Append(b).Append('\n');
        for (int i = 0; i < merged.Length; i++)
            sb.Append(Convert.ToBase64String(Encoding.UTF8.GetBytes(merged[i]))).Append(' ').Append(256 + i).Append('\n');
        Write("original/tokenizer.model", sb.ToString());
    }

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
