// Save the demo tokenizer once, then load it back through tokenizer.json alone and through
// original/tokenizer.model alone, and check the written Hugging Face file: structure, and merges that
// reproduce the tokenizer's encodings when applied the way HF's BPE applies them.
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using SwiftKV.Model.Tokenization;
using Xunit;

namespace SwiftKV.Model.Tests.Tokenization;

public sealed class SavedDemoTokenizer : IDisposable
{
    readonly TokenizerTempDir _dir = new();

    public SavedDemoTokenizer()
    {
        var watch = Stopwatch.StartNew();
        LlamaTokenizer.CreateDemo().Save(_dir.Path);
        SaveSeconds = watch.Elapsed.TotalSeconds;
    }

    public string Path => _dir.Path;
    public double SaveSeconds { get; }

    /// <summary>A copy of the saved checkpoint without the files named.</summary>
    public TokenizerTempDir CopyWithout(params string[] omitted)
    {
        var copy = new TokenizerTempDir();
        foreach (string file in Directory.EnumerateFiles(Path, "*", SearchOption.AllDirectories))
        {
            string relative = System.IO.Path.GetRelativePath(Path, file).Replace('\\', '/');
            if (omitted.Contains(relative)) continue;
            string target = System.IO.Path.Combine(copy.Path, relative);
            Directory.CreateDirectory(System.IO.Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }
        return copy;
    }

    public void Dispose() => _dir.Dispose();
}

public sealed class LlamaTokenizerSaveLoadTests(SavedDemoTokenizer saved) : IClassFixture<SavedDemoTokenizer>
{
    static readonly string[] Texts =
    [
        "Hello, world! The quick brown fox jumps over the lazy dog.",
        "Café crème brûlée, naïve façade, Ångström",
        "日本語のテキストと中文文本，还有한국어.",
        "Emoji: 🦙🙂👍🏽 👨‍👩‍👧",
        "   spaces\t\ttabs\n\n\nnewlines\r\n  code: for (int i = 0; i < 10; i++) { x += i * 2; }",
        "Numbers 1234567 3.14159 and don't we'll they're I'M",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    ];

    [Fact]
    public void Save_IsFastEnough()
    {
        Assert.True(saved.SaveSeconds < 20, $"Save took {saved.SaveSeconds:F1} s");
    }

    [Theory]
    [InlineData("original/tokenizer.model")]
    [InlineData("tokenizer.json")]
    [InlineData("none")]
    public void Load_SavedDemo_EncodesLikeDemo(string omitted)
    {
        using var copy = saved.CopyWithout(omitted);
        var demo = LlamaTokenizer.CreateDemo();
        var loaded = LlamaTokenizer.Load(copy.Path);

        Assert.Equal(demo.VocabularySize, loaded.VocabularySize);
        Assert.Equal(demo.BosTokenId, loaded.BosTokenId);
        Assert.Equal(demo.EosTokenId, loaded.EosTokenId);
        Assert.Equal(demo.StopTokenIds.Order(), loaded.StopTokenIds.Order());
        Assert.Equal(demo.SpecialTokens.OrderBy(kv => kv.Value), loaded.SpecialTokens.OrderBy(kv => kv.Value));
        foreach (string text in Texts)
        {
            Assert.Equal(demo.Encode(text), loaded.Encode(text));
            Assert.Equal(demo.Encode(text, parseSpecialTokens: true), loaded.Encode(text, parseSpecialTokens: true));
        }
    }

    [Fact]
    public void Save_WritesHuggingFaceTokenizerJson()
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(saved.Path, "tokenizer.json")));
        var root = doc.RootElement;
        var model = root.GetProperty("model");
        Assert.Equal("BPE", model.GetProperty("type").GetString());
        Assert.True(model.GetProperty("ignore_merges").GetBoolean());
        Assert.False(model.GetProperty("byte_fallback").GetBoolean());
        // cl100k's 100256 ranks plus the 256 specials: `tokenizers` takes an added token's id from the vocab,
        // and would renumber specials that follow a gap in ids if they were missing there.
        Assert.Equal(100256 + 256, model.GetProperty("vocab").EnumerateObject().Count());
        Assert.Equal(128009, model.GetProperty("vocab").GetProperty("<|eot_id|>").GetInt32());
        Assert.Equal(1917, model.GetProperty("vocab").GetProperty("Ġworld").GetInt32()); // GPT-2 alphabet: space = Ġ
        Assert.Equal(198, model.GetProperty("vocab").GetProperty("Ċ").GetInt32());      // newline = Ċ

        var added = root.GetProperty("added_tokens").EnumerateArray().ToList();
        Assert.Equal(256, added.Count);
        Assert.All(added, t => Assert.True(t.GetProperty("special").GetBoolean()));
        Assert.Contains(added, t => t.GetProperty("id").GetInt32() == 128009 && t.GetProperty("content").GetString() == "<|eot_id|>");

        var steps = root.GetProperty("pre_tokenizer").GetProperty("pretokenizers").EnumerateArray().ToList();
        Assert.Equal("Split", steps[0].GetProperty("type").GetString());
        Assert.Equal(LlamaTokenizer.Llama3Pattern, steps[0].GetProperty("pattern").GetProperty("Regex").GetString());
        Assert.Equal("ByteLevel", steps[1].GetProperty("type").GetString());
        Assert.Equal("ByteLevel", root.GetProperty("decoder").GetProperty("type").GetString());

        using var config = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(saved.Path, "tokenizer_config.json")));
        Assert.Equal("<|begin_of_text|>", config.RootElement.GetProperty("bos_token").GetString());
        Assert.Equal("<|eot_id|>", config.RootElement.GetProperty("eos_token").GetString());
        Assert.Contains("Cutting Knowledge Date", config.RootElement.GetProperty("chat_template").GetString());
        Assert.Equal(256, config.RootElement.GetProperty("added_tokens_decoder").EnumerateObject().Count());
    }

    [Fact]
    public void Save_MergesAreRankOrderedAndBuildEachToken()
    {
        var (vocab, merges) = ReadModel();
        // Every multi-byte token has exactly one merge; merge i builds a token of higher id than merge i-1
        // from two tokens of lower id.
        Assert.Equal(vocab.Count(kv => kv.Key.Length > 1 && kv.Value < 128000), merges.Count);
        int previous = -1;
        foreach (var (left, right) in merges)
        {
            int id = vocab[left + right];
            Assert.True(id > previous, $"merge '{left} {right}' is out of rank order");
            Assert.True(vocab[left] < id && vocab[right] < id);
            previous = id;
        }
        Assert.Single(merges, m => m.Left + m.Right == "Ġworld");
    }

    [Fact]
    public void Save_MergesReproduceEncodingUnderHuggingFaceBpe()
    {
        var (vocab, merges) = ReadModel();
        var priority = new Dictionary<(string, string), int>();
        for (int i = 0; i < merges.Count; i++) priority[merges[i]] = i;
        var tokenizer = LlamaTokenizer.CreateDemo();
        var pattern = new Regex(LlamaTokenizer.Llama3Pattern);

        foreach (string text in Texts.Take(6))
        {
            var expected = tokenizer.Encode(text);
            var actual = new List<int>();
            foreach (Match piece in pattern.Matches(text))
                actual.AddRange(HuggingFaceBpe(ByteLevel(piece.Value), vocab, priority));
            Assert.Equal(expected, actual);
        }
    }

    /// <summary>HF BPE with ignore_merges: whole word if in vocab, else lowest-priority merge first.</summary>
    static IEnumerable<int> HuggingFaceBpe(string word, Dictionary<string, int> vocab, Dictionary<(string, string), int> priority)
    {
        if (vocab.TryGetValue(word, out int whole)) return [whole];
        var symbols = word.Select(c => c.ToString()).ToList();
        while (true)
        {
            int best = -1, bestPriority = int.MaxValue;
            for (int i = 0; i + 1 < symbols.Count; i++)
            {
                if (priority.TryGetValue((symbols[i], symbols[i + 1]), out int p) && p < bestPriority) { bestPriority = p; best = i; }
            }
            if (best < 0) break;
            symbols[best] += symbols[best + 1];
            symbols.RemoveAt(best + 1);
        }
        return symbols.Select(s => vocab[s]);
    }

    /// <summary>GPT-2 bytes_to_unicode, written out independently of the production table.</summary>
    static string ByteLevel(string text)
    {
        var printable = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range(0xA1, 0xAC - 0xA1 + 1))
            .Concat(Enumerable.Range(0xAE, 0xFF - 0xAE + 1)).ToHashSet();
        var map = new Dictionary<int, char>();
        int n = 0;
        for (int b = 0; b < 256; b++) map[b] = printable.Contains(b) ? (char)b : (char)(256 + n++);
        return string.Concat(Encoding.UTF8.GetBytes(text).Select(b => map[b]));
    }

    (Dictionary<string, int> Vocab, List<(string Left, string Right)> Merges) ReadModel()
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(saved.Path, "tokenizer.json")));
        var model = doc.RootElement.GetProperty("model");
        var vocab = model.GetProperty("vocab").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetInt32());
        var merges = model.GetProperty("merges").EnumerateArray().Select(m =>
        {
            string[] parts = m.GetString()!.Split(' ');
            Assert.Equal(2, parts.Length);
            return (parts[0], parts[1]);
        }).ToList();
        return (vocab, merges);
    }
}
