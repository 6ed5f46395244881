// JSON Lines training data: which positions are scored (checked by decoding the tokens they predict) and the
// errors a user's file can cause.
using Xunit;
using SwiftKV.Engine.Distillation;
using SwiftKV.Model.Tokenization;

namespace SwiftKV.Engine.Tests.Distillation;

public sealed class DistillationDataTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("swiftkv-distill-data-").FullName;
    static readonly LlamaTokenizer Tok = LlamaTokenizer.CreateDemo();

    string File(params string[] lines)
    {
        string path = Path.Combine(_dir, Guid.NewGuid().ToString("N") + ".jsonl");
        System.IO.File.WriteAllLines(path, lines);
        return path;
    }

    /// <summary>The text of each run of scored positions' next tokens.</summary>
    static List<string> ScoredText(DistillationSequence s)
    {
        var runs = new List<string>();
        var run = new List<int>();
        for (int t = 0; t < s.Tokens.Length - 1; t++)
        {
            if (s.LossMask[t]) run.Add(s.Tokens[t + 1]);
            else if (run.Count > 0) { runs.Add(Tok.Decode(run)); run.Clear(); }
        }
        if (run.Count > 0) runs.Add(Tok.Decode(run));
        return runs;
    }

    [Fact]
    public void Chat_ScoresThePositionsThatPredictEachAssistantReply()
    {
        var data = DistillationData.Read(File(
            """{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Spain?"}, {"role": "assistant", "content": "Madrid, of course."}]}"""),
            Tok, 8192);
        var s = Assert.Single(data.Sequences);
        Assert.Equal(Llama31ChatFormat.Encode(Tok,
            [new("system", "Be brief."), new("user", "Capital of France?"), new("assistant", "Paris."), new("user", "And Spain?"), new("assistant", "Madrid, of course.")],
            addGenerationPrompt: false), s.Tokens);
        Assert.Equal(["Paris.<|eot_id|>", "Madrid, of course.<|eot_id|>"], ScoredText(s));
        Assert.False(s.LossMask[^1]);
    }

    [Fact]
    public void Text_ScoresEveryPositionButTheLast()
    {
        var s = Assert.Single(DistillationData.Read(File("""{"text": "Hello world, hello distillation."}""", ""), Tok, 8192).Sequences);
        Assert.Equal(Tok.GetSpecialTokenId(Llama31ChatFormat.BeginOfText), s.Tokens[0]);
        Assert.Equal(["Hello world, hello distillation."], ScoredText(s));
        Assert.Equal(s.Tokens.Length - 1, s.LossPositions);
    }

    [Fact]
    public void LongSequences_KeepTheirStart_AndOnesLeftWithoutReplyAreSkipped()
    {
        string longUser = string.Join(' ', Enumerable.Repeat("word", 300));
        var data = DistillationData.Read(File(
            """{"text": "one two three four five six seven eight nine ten eleven twelve"}""",
            $$"""{"messages": [{"role": "user", "content": "{{longUser}}"}, {"role": "assistant", "content": "ok"}]}"""), Tok, 8);
        var s = Assert.Single(data.Sequences);
        Assert.Equal(8, s.Tokens.Length);
        Assert.Equal((2, 1), (data.Truncated, data.SkippedWithoutLoss));
    }

    [Theory]
    [InlineData("{not json", ":1: not JSON")]
    [InlineData("""["a"]""", ":1: expected a JSON object")]
    [InlineData("""{"text": "a", "messages": []}""", "exactly one of")]
    [InlineData("""{"text": ""}""", "non-empty string")]
    [InlineData("""{"messages": []}""", "non-empty array")]
    [InlineData("""{"messages": [{"role": "user"}]}""", "messages[0] must be an object")]
    [InlineData("""{"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}""", "role \"bot\"")]
    [InlineData("""{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}, {"role": "assistant", "content": "z"}]}""", "only the first")]
    [InlineData("""{"messages": [{"role": "user", "content": "x"}]}""", "no assistant message")]
    [InlineData("""{"text": "hello \ud800 world"}""", ":1: the string at $.text holds a \\u escape of half a UTF-16 surrogate pair")]   // Python's json.dumps writes these
    public void BadLines_AreNamedWithTheirLine(string line, string expected)
    {
        string path = File("", line);
        var e = Assert.Throws<InvalidDataException>(() => DistillationData.Read(path, Tok, 8192));
        Assert.Contains(expected.Replace(":1:", ":2:"), e.Message);
        Assert.Contains(path + ":2", e.Message);
    }

    [Fact]
    public void TokensOutsideTheModelsVocabulary_AreNamedWithTheirLine()
    {
        string path = File("""{"text": "a"}""", """{"text": "Hello world"}""");
        var e = Assert.Throws<InvalidDataException>(() => DistillationData.Read(path, Tok, 8192, vocabSize: 128000));
        Assert.Contains(path + ":1: token 128000", e.Message);   // <|begin_of_text|> is past a 128000-token vocabulary
    }

    [Fact]
    public void Encoding_BomAndCrlfAreRead_InvalidUtf8IsNamedWithItsLine()
    {
        string path = Path.Combine(_dir, "enc.jsonl");
        var ok = "\uFEFF{\"text\": \"caf\u00e9\"}\r\n{\"text\": \"two\"}\r\n"u8.ToArray();
        System.IO.File.WriteAllBytes(path, ok);
        var data = DistillationData.Read(path, Tok, 8192);
        Assert.Equal(2, data.Sequences.Count);
        Assert.Equal(["café"], ScoredText(data.Sequences[0]));

        System.IO.File.WriteAllBytes(path, [.. "{\"text\": \"a\"}\n"u8, .. "{\"text\": \"b"u8, 0xFF, .. "\"}\n"u8]);
        Assert.Contains(path + ":2: not valid UTF-8", Assert.Throws<InvalidDataException>(() => DistillationData.Read(path, Tok, 8192)).Message);
    }

    [Fact]
    public void EmptyOrMissingFiles_AreRefused()
    {
        Assert.Contains("holds no sequences", Assert.Throws<InvalidDataException>(() => DistillationData.Read(File("", " "), Tok, 8192)).Message);
        Assert.Throws<FileNotFoundException>(() => DistillationData.Read(Path.Combine(_dir, "none.jsonl"), Tok, 8192));
        Assert.Contains("is a directory", Assert.Throws<FileNotFoundException>(() => DistillationData.Read(_dir, Tok, 8192)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => DistillationData.Read(File("""{"text": "a"}"""), Tok, 1));
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
