// A Hugging Face repository cloned without git-lfs holds, in place of each large file (weights, tokenizer.json,
// original/tokenizer.model), a ~130-byte text pointer: "version https://git-lfs.github.com/spec/v1", then the oid
// and size. Read as the file it stands for, it failed as bad base64, bad JSON or a huge header length, none of which
// says what to do.
namespace SwiftKV.Model.Checkpoint;

internal static class GitLfsPointer
{
    static ReadOnlySpan<byte> Version => "version https://git-lfs"u8;

    /// <summary>Throws naming <paramref name="path"/> as a Git LFS pointer when its bytes (<paramref name="start"/>, the file's first ones) are one.</summary>
    public static void Refuse(string path, ReadOnlySpan<byte> start, long fileLength)
    {
        if (fileLength < 1024 && start.StartsWith(Version))
            throw new InvalidModelException($"{path}: a Git LFS pointer file ({fileLength} bytes), not the file itself: fetch the large files (git lfs install, then git lfs pull in the clone) or download them directly.");
    }

    /// <summary><see cref="Refuse(string, ReadOnlySpan{byte}, long)"/> reading the file's first bytes.</summary>
    public static void Refuse(string path)
    {
        var info = new FileInfo(path);
        if (!info.Exists || info.Length >= 1024) return;
        Refuse(path, File.ReadAllBytes(path), info.Length);
    }
}
