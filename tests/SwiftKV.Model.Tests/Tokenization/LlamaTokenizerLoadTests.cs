// Loading small hand-written checkpoints: special tokens, BOS and stop tokens come from the files (not from
// built-in knowledge), the byte-level alphabet of tokenizer.json, and clear errors for bad inputs.
using SwiftKV.Model.Tokenization;
using Xunit;

namespace SwiftKV.Model.Tests.Tokenization;

public sealed class LlamaTokenizerLoadTests
{
    const string UnusualConfig = """
        {
          "bos_token": "<|my_bos|>",
          "eos_token": { "content": "<|my_eos|>", "special": true },
          "added_tokens_decoder": {
            "300": { "content": "<|my_bos|>", "special": true },
            "301": { "content": "<|my_eos|>", "special": true },
            "302": { "content": "<|eot_id|>", "special": true },
            "305": { "content": "<|stop_me|>", "special": true }
          }
        }
        """;

    [Fact]
    public void Load_ReadsSpecialsBosAndStopsFromFiles()
    {
        using var dir = new TokenizerTempDir();
        dir.WriteByteTiktoken("ab", "abc");
        dir.Write("tokenizer_config.json", UnusualConfig);
        dir.Write("generation_config.json", """{ "eos_token_id": [305, 301] }""");
        dir.Write("config.json", """{ "eos_token_id": 7, "bos_token_id": 999 }""");

        var tok = LlamaTokenizer.Load(dir.Path);

        Assert.Equal(306, tok.VocabularySize);
        Assert.Equal(300, tok.BosTokenId);     // tokenizer_config wins over config.json
        Assert.Equal(301, tok.EosTokenId);
        Assert.Equal([305, 301, 7, 302], tok.StopTokenIds);
        Assert.Equal(4, tok.SpecialTokens.Count);
        Assert.Null(tok.GetSpecialTokenId("<|begin_of_text|>"));
        Assert.Equal([257, 300], tok.Encode("abc<|my_bos|>", parseSpecialTokens: true));
        Assert.Equal("abc<|stop_me|>", tok.Decode([257, 305]));
    }

    /// <summary>
    /// tokenizer.json is what transformers encodes with: when original/tokenizer.model sits beside it, the two must give
    /// every id the same bytes. Two ids swapped in tokenizer.json, or its model object gone, is refused naming the
    /// files, where it used to load from the tiktoken file and encode unlike transformers without a word.
    /// </summary>
    [Fact]
    public void Load_TokenizerJsonAndTiktokenFileDisagree_IsRefused()
    {
        using var dir = new TokenizerTempDir();
        var demo = LlamaTokenizer.CreateDemo();
        demo.Save(dir.Path);
        int hello = demo.Encode("Hello")[0], world = demo.Encode(" world")[0];
        Assert.Equal(demo.Encode("Hello world"), LlamaTokenizer.Load(dir.Path).Encode("Hello world"));   // both files, agreeing

        // The tiktoken file gives the two ids each other's bytes; tokenizer.json (merges and all) stays as it was.
        string tiktoken = System.IO.Path.Combine(dir.Path, "original", "tokenizer.model");
        var lines = File.ReadAllLines(tiktoken).Select(l => l.Split(' ')).ToArray();
        foreach (var l in lines)
            l[1] = l[1] == $"{hello}" ? $"{world}" : l[1] == $"{world}" ? $"{hello}" : l[1];
        File.WriteAllLines(tiktoken, lines.Select(l => string.Join(' ', l)));
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains("tokenizer.json and ", e.Message);
        Assert.Contains("tokenizer.model disagree", e.Message);
        Assert.Contains($"id {Math.Min(hello, world)}", e.Message);

        // A tokenizer.json without its model object was passed over while the tiktoken file was read instead.
        string json = System.IO.Path.Combine(dir.Path, "tokenizer.json");
        string original = File.ReadAllText(json);
        var root = System.Text.Json.Nodes.JsonNode.Parse(original)!;
        root.AsObject().Remove("model");
        File.WriteAllText(json, root.ToJsonString());
        Assert.Contains("missing 'model'", Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path)).Message);

        File.WriteAllText(json, original);
        Directory.Delete(System.IO.Path.Combine(dir.Path, "original"), recursive: true);   // tokenizer.json alone
        Assert.Equal(demo.Encode("Hello world"), LlamaTokenizer.Load(dir.Path).Encode("Hello world"));
    }

    [Fact]
    public void Load_TiktokenOnly_FallsBackToLlama3SpecialLayout()
    {
        using var dir = new TokenizerTempDir();
        dir.WriteByteTiktoken("ab");
        var tok = LlamaTokenizer.Load(dir.Path);
        Assert.Equal(257 + 256, tok.VocabularySize);
        Assert.Equal(257, tok.BosTokenId);
        Assert.Equal(257 + 9, tok.GetSpecialTokenId("<|eot_id|>"));
        Assert.Equal([257 + 9, 257 + 8, 257 + 1], tok.StopTokenIds);
    }

    /// <summary>
    /// A small byte-level tokenizer.json: h e l o Ġ w r d Ċ at ids 0..8, merges up to "hello" and "Ġw" at 9..13, the special
    /// &lt;|end|&gt; at 20, and the other single bytes from id 21 on (all but <paramref name="dropByte"/>).
    /// </summary>
    static string ToyTokenizerJson(string? added = null, string? merges = null, int? dropByte = null)
    {
        string[] toy = ["h", "e", "l", "o", "Ġ", "w", "r", "d", "Ċ"];
        var bytes = Enumerable.Range(0, 256).Where(b => b != dropByte).Select(b => ByteLevelAlphabet.Encode([(byte)b])).Where(t => !toy.Contains(t));
        string rest = string.Join(", ", bytes.Select((t, i) => $"{System.Text.Json.JsonSerializer.Serialize(t)}: {21 + i}"));
        if (dropByte is int d && toy.Contains(ByteLevelAlphabet.Encode([(byte)d]))) throw new ArgumentException("the toy's own bytes stay");
        return """
            {
              "added_tokens": [ ADDED ],
              "pre_tokenizer": { "type": "Sequence", "pretokenizers": [
                { "type": "Split", "pattern": { "Regex": PATTERN }, "behavior": "Isolated", "invert": false },
                { "type": "ByteLevel", "add_prefix_space": false, "use_regex": false } ] },
              "decoder": { "type": "ByteLevel" },
              "model": {
                "type": "BPE",
                "vocab": { "h": 0, "e": 1, "l": 2, "o": 3, "Ġ": 4, "w": 5, "r": 6, "d": 7, "Ċ": 8,
                           "he": 9, "ll": 10, "hell": 11, "hello": 12, "Ġw": 13, "<|end|>": 20, REST },
                "merges": MERGES
              }
            }
            """.Replace("PATTERN", System.Text.Json.JsonSerializer.Serialize(LlamaTokenizer.Llama3Pattern))
            .Replace("ADDED", added ?? """{ "id": 20, "content": "<|end|>", "special": true }""")
            .Replace("MERGES", merges ?? """[ "h e", "l l", "he ll", "hell o", "Ġ w" ]""")
            .Replace("REST", rest);
    }

    [Fact]
    public void Load_TokenizerJson_MapsByteLevelAlphabet()
    {
        using var dir = new TokenizerTempDir();
        dir.Write("tokenizer.json", ToyTokenizerJson());
        var tok = LlamaTokenizer.Load(dir.Path);
        Assert.Equal([12, 13, 3, 6, 2, 7, 8], tok.Encode("hello world\n"));
        Assert.Equal([12, 20], tok.Encode("hello<|end|>", parseSpecialTokens: true));
        Assert.Equal("hello world\n<|end|>", tok.Decode([12, 13, 3, 6, 2, 7, 8, 20]));
        Assert.Equal(21 + 256 - 9, tok.VocabularySize);
        Assert.Equal("z", tok.Decode(tok.Encode("z")));
    }

    /// <summary>
    /// Byte-level BPE needs every single byte: a vocabulary without one is refused at load naming the file and the byte
    /// as that file spells it. It loaded, and the first text holding the byte threw an InvalidOperationException.
    /// </summary>
    [Fact]
    public void Load_VocabularyWithoutASingleByte_IsRefusedNamingTheByte()
    {
        using (var dir = new TokenizerTempDir())
        {
            dir.Write("tokenizer.json", ToyTokenizerJson(dropByte: 'z'));
            var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
            Assert.Contains(Path.Combine(dir.Path, "tokenizer.json"), e.Message);
            Assert.Contains("lacks the single-byte token for byte 0x7A ('z')", e.Message);
        }
        using (var dir = new TokenizerTempDir())
        {
            dir.WriteByteTiktoken("ab");
            string model = Path.Combine(dir.Path, "original", "tokenizer.model");
            // Drop the lines of '!' (IQ==) and of byte 0xFF (/w==).
            File.WriteAllLines(model, File.ReadAllLines(model).Where(l => !l.StartsWith("IQ== ", StringComparison.Ordinal) && !l.StartsWith("/w== ", StringComparison.Ordinal)));
            var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
            Assert.Contains(model, e.Message);
            Assert.Contains("lacks the single-byte tokens for bytes 0x21 ('IQ=='), 0xFF ('/w==')", e.Message);
        }
    }

    /// <summary>
    /// An added token on the id of an ordinary vocab token replaced it without a word (the vocab entry at an added
    /// token's id was skipped, whatever it held): refused naming both tokens and the id, as for tiktoken files.
    /// </summary>
    [Fact]
    public void Load_AddedTokenOnAnOrdinaryVocabId_IsRefused()
    {
        using var dir = new TokenizerTempDir();
        dir.Write("tokenizer.json", ToyTokenizerJson(added: """{ "id": 1, "content": "<|end|>", "special": true }"""));
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains("tokenizer.json", e.Message);
        Assert.Contains("special token '<|end|>' has id 1, which is already the vocab token 'e'", e.Message);
    }

    /// <summary>
    /// merges as a list of pairs (tokenizers >= 0.20 writes them so) with something other than two strings is named by
    /// index and content; [1, 2] threw an InvalidOperationException from the JSON reader.
    /// </summary>
    [Theory]
    [InlineData("""[ ["h", "e"], [1, 2] ]""", "model.merges[1] must be", "got [1, 2]")]
    [InlineData("""[ ["h", "e"], ["l"] ]""", "model.merges[1] must be", "got [\"l\"]")]
    [InlineData("""[ "h e", null ]""", "model.merges[1] must be", "got null")]
    [InlineData("""[ ["h", "e"], ["e", "h"] ]""", "model.merges[1] ([\"e\", \"h\"]) is not a pair of tokens", "in the vocabulary")]
    public void Load_MergesEntryNotTwoTokens_NamesIndexAndContent(string merges, string expected, string found)
    {
        using var dir = new TokenizerTempDir();
        dir.Write("tokenizer.json", ToyTokenizerJson(merges: merges));
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains("tokenizer.json", e.Message);
        Assert.Contains(expected, e.Message);
        Assert.Contains(found, e.Message);
    }

    [Fact]
    public void Load_MergesAsListsOfPairs_ReadAsStrings()
    {
        using var dir = new TokenizerTempDir();
        dir.Write("tokenizer.json", ToyTokenizerJson(merges: """[ ["h", "e"], ["l", "l"], ["he", "ll"], ["hell", "o"], ["Ġ", "w"] ]"""));
        Assert.Equal([12, 13, 3, 6, 2, 7, 8], LlamaTokenizer.Load(dir.Path).Encode("hello world\n"));
    }

    /// <summary>
    /// Every JSON file of a checkpoint may start with a UTF-8 byte order mark: config.json's parser took one, the
    /// tokenizer's read of the same file said "not valid JSON ('0xEF' ...)".
    /// </summary>
    [Fact]
    public void Load_JsonFilesWithUtf8Bom_ReadAsWithout()
    {
        using var plain = new TokenizerTempDir();
        using var bom = new TokenizerTempDir();
        var files = new Dictionary<string, string>
        {
            ["tokenizer.json"] = ToyTokenizerJson(),
            ["tokenizer_config.json"] = """{ "eos_token": "<|end|>" }""",
            ["generation_config.json"] = """{ "eos_token_id": 5 }""",
            ["config.json"] = """{ "eos_token_id": 6, "bos_token_id": 7 }""",
        };
        foreach (var (name, text) in files)
        {
            plain.Write(name, text);
            File.WriteAllText(Path.Combine(bom.Path, name), text, new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: true));
        }
        var expected = LlamaTokenizer.Load(plain.Path);
        var actual = LlamaTokenizer.Load(bom.Path);
        Assert.Equal([5, 6, 20], expected.StopTokenIds);
        Assert.Equal(expected.StopTokenIds, actual.StopTokenIds);
        Assert.Equal((7, 20), (actual.BosTokenId, actual.EosTokenId));
    }

    /// <summary>
    /// An id written as a float with no fraction (Python's json writes 128001.0 for a float) reads as the integer in the
    /// side files as it does in config.json; a fraction or a value past int is refused by both, naming the key.
    /// </summary>
    [Theory]
    [InlineData("265.0", 265)]
    [InlineData("2.65e2", 265)]
    [InlineData("1.5", null)]
    [InlineData("3000000000", null)]
    public void Load_IntegralFloatIds_ReadAsConfigJsonReadsThem(string written, int? expected)
    {
        using var dir = new TokenizerTempDir();
        dir.WriteByteTiktoken();
        dir.Write("generation_config.json", $$"""{ "eos_token_id": {{written}} }""");
        string config = $$"""{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":512,"eos_token_id":{{written}}}""";
        if (expected is int id)
        {
            Assert.Equal(id, LlamaTokenizer.Load(dir.Path).StopTokenIds[0]);
            Assert.Equal([id], LlamaConfig.Parse(config).EosTokenIds);
        }
        else
        {
            var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
            Assert.Contains($"generation_config.json: 'eos_token_id' must hold non-negative integers, got {written}", e.Message);
            Assert.Contains($"'eos_token_id' must be an integer, got {written}", Assert.Throws<InvalidModelException>(() => LlamaConfig.Parse(config)).Message);
        }
    }

    /// <summary>A directory where a tokenizer file belongs is named as one; a tokenizer_config.json directory was skipped as absent.</summary>
    [Theory]
    [InlineData("tokenizer.json")]
    [InlineData("tokenizer_config.json")]
    [InlineData("original/tokenizer.model")]
    public void Load_TokenizerFileIsADirectory_SaysSo(string name)
    {
        using var dir = new TokenizerTempDir();
        dir.Write("tokenizer.json", ToyTokenizerJson());
        string path = Path.Combine(dir.Path, name);
        if (File.Exists(path)) File.Delete(path);
        Directory.CreateDirectory(path);
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains($"{path} is a directory, not a file", e.Message);
    }

    /// <summary>
    /// A tokenizer.json whose pipeline this reader would encode differently from Hugging Face is refused, naming what
    /// differs: a normalizer, another split regex, ByteLevel's own GPT-2 regex, a prefix space, a non-special added
    /// token, merges out of id order, an absurd id. (Each once loaded and encoded silently otherwise.)
    /// </summary>
    [Theory]
    [InlineData("normalizer", "a normalizer is not supported")]
    [InlineData("split", "another pattern than Llama 3's")]
    [InlineData("gpt2-regex", "its own (GPT-2) regex")]
    [InlineData("prefix-space", "add_prefix_space = true")]
    [InlineData("non-special", "'<think>' is not special")]
    [InlineData("merge-order", "merges out of id order")]
    [InlineData("huge-id", "outside 0..16777215")]
    [InlineData("digits", "a pre-tokenizer step of type 'Digits' is not supported")]
    [InlineData("behavior", "behavior must be \"Isolated\"")]
    [InlineData("invert", "invert = true is not supported")]
    [InlineData("no-split", "has no Split step with Llama 3's pattern")]
    [InlineData("split-after-bytelevel", "must split once with Llama 3's pattern before its ByteLevel step")]
    public void Load_TokenizerJsonItWouldMisencode_IsRefused(string variant, string expected)
    {
        string split = $$"""{ "type": "Split", "pattern": { "Regex": {{(variant == "split" ? "\"\\\\d\"" : System.Text.Json.JsonSerializer.Serialize(LlamaTokenizer.Llama3Pattern))}} }, "behavior": {{(variant == "behavior" ? "\"Removed\"" : "\"Isolated\"")}}, "invert": {{(variant == "invert" ? "true" : "false")}} }""";
        if (variant == "digits") split = """{ "type": "Digits", "individual_digits": true }, """ + split;
        string byteLevel = variant switch
        {
            "gpt2-regex" => """{ "type": "ByteLevel", "add_prefix_space": false }""",
            "prefix-space" => """{ "type": "ByteLevel", "add_prefix_space": true, "use_regex": false }""",
            _ => """{ "type": "ByteLevel", "add_prefix_space": false, "use_regex": false }""",
        };
        string normalizer = variant == "normalizer" ? """{ "type": "Lowercase" }""" : "null";
        string added = variant == "non-special" ? """{ "id": 20, "content": "<think>", "special": false }""" : """{ "id": 20, "content": "<|end|>", "special": true }""";
        string merges = variant == "merge-order" ? """[ "l l", "h e" ]""" : """[ "h e", "l l" ]""";
        string hugeId = variant == "huge-id" ? ", \"x\": 2147483647" : "";
        string steps = variant switch
        {
            "no-split" => byteLevel,
            "split-after-bytelevel" => $"{byteLevel}, {split}",
            _ => $"{split}, {byteLevel}",
        };
        using var dir = new TokenizerTempDir();
        dir.Write("tokenizer.json", $$"""
            {
              "added_tokens": [ {{added}} ],
              "normalizer": {{normalizer}},
              "pre_tokenizer": { "type": "Sequence", "pretokenizers": [ {{steps}} ] },
              "decoder": { "type": "ByteLevel" },
              "model": { "type": "BPE", "vocab": { "h": 0, "e": 1, "l": 2, "he": 9, "ll": 10{{hugeId}} }, "merges": {{merges}} }
            }
            """);
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains(expected, e.Message);
    }

    /// <summary>
    /// A clone made without git-lfs holds pointers in place of the tokenizer files; the chat client and generate load
    /// the tokenizer first, so it is there that the pointer must be named (it read as bad base64 or bad JSON).
    /// </summary>
    [Theory]
    [InlineData("tokenizer.json")]
    [InlineData("original/tokenizer.model")]
    public void Load_GitLfsPointer_SaysToFetchTheFiles(string file)
    {
        using var dir = new TokenizerTempDir();
        dir.Write(file, "version https://git-lfs.github.com/spec/v1\noid sha256:7d4f0e1b3c2a\nsize 9085657\n");
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains("Git LFS pointer", e.Message);
        Assert.Contains(file.Split('/')[^1], e.Message);
    }

    [Fact]
    public void Load_MissingDirectory_NamesIt()
    {
        string path = Path.Combine(Path.GetTempPath(), "swiftkv-no-such-dir-" + Guid.NewGuid().ToString("N"));
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(path));
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void Load_NoTokenizerFile_SaysWhatIsExpected()
    {
        using var dir = new TokenizerTempDir();
        dir.Write("config.json", "{}");
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains("tokenizer.model", e.Message);
        Assert.Contains("tokenizer.json", e.Message);
    }

    [Fact]
    public void Load_MalformedTokenizerJson_NamesFile()
    {
        using var dir = new TokenizerTempDir();
        dir.Write("tokenizer.json", """{ "model": { "type": "BPE", "vocab": { "a": 0, } """);
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains("tokenizer.json", e.Message);
        Assert.Contains("not valid JSON", e.Message);
    }

    [Fact]
    public void Load_MalformedSideFile_NamesFile()
    {
        using var dir = new TokenizerTempDir();
        dir.WriteByteTiktoken();
        dir.Write("generation_config.json", "{ eos_token_id: 1 }");
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains("generation_config.json", e.Message);
    }

    [Fact]
    public void Load_UnsupportedModelType_NamesType()
    {
        using var dir = new TokenizerTempDir();
        dir.Write("tokenizer.json", """{ "model": { "type": "WordPiece", "vocab": { "a": 0 } } }""");
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains("WordPiece", e.Message);
    }

    [Fact]
    public void Load_NonByteLevelBpe_IsRejected()
    {
        using var dir = new TokenizerTempDir();
        dir.Write("tokenizer.json", """{ "model": { "type": "BPE", "vocab": { "a": 0 }, "merges": [] }, "decoder": { "type": "Metaspace" } }""");
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains("byte-level", e.Message);
    }

    [Fact]
    public void Load_BadBase64Line_NamesFileAndLine()
    {
        using var dir = new TokenizerTempDir();
        dir.Write("original/tokenizer.model", "IQ== 0\nIg== 1\n!!notbase64!! 2\n");
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains("tokenizer.model, line 3", e.Message);
        Assert.Contains("base64", e.Message);
    }

    [Fact]
    public void Load_BadRank_NamesFileAndLine()
    {
        using var dir = new TokenizerTempDir();
        dir.Write("original/tokenizer.model", "IQ== 0\nIg==\n");
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains("tokenizer.model, line 2", e.Message);
    }

    [Theory]
    [InlineData("2147483647")]   // + 1 wraps: the table was sized by the ranks and the write ran off its end
    [InlineData("16777216")]     // would size a table of gigabytes
    public void Load_RankPastTheLargestId_NamesTheToken(string rank)
    {
        using var dir = new TokenizerTempDir();
        dir.Write("original/tokenizer.model", $"IQ== 0\nIg== {rank}\n");
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains($"has rank {rank}, outside 0..16777215", e.Message);
    }

    [Theory]
    [InlineData("2147483647")]
    [InlineData("16777216")]
    public void Load_SpecialTokenIdPastTheLargestId_NamesTheToken(string id)
    {
        using var dir = new TokenizerTempDir();
        dir.WriteByteTiktoken();
        dir.Write("tokenizer_config.json", $$"""{ "added_tokens_decoder": { "{{id}}": { "content": "<|eot_id|>", "special": true } } }""");
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains($"'<|eot_id|>' has id {id}, outside 0..16777215", e.Message);
    }

    [Fact]
    public void Load_StopTokenOutsideVocabulary_NamesFile()
    {
        using var dir = new TokenizerTempDir();
        dir.WriteByteTiktoken();
        dir.Write("generation_config.json", """{ "eos_token_id": 100000 }""");
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains("generation_config.json", e.Message);
        Assert.Contains("100000", e.Message);
    }

    [Fact]
    public void Load_SpecialTokenOnOrdinaryId_IsRejected()
    {
        using var dir = new TokenizerTempDir();
        dir.WriteByteTiktoken();
        dir.Write("tokenizer_config.json", """{ "added_tokens_decoder": { "65": { "content": "<|oops|>" } } }""");
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains("<|oops|>", e.Message);
    }

    [Fact]
    public void Load_UnknownBosToken_NamesKey()
    {
        using var dir = new TokenizerTempDir();
        dir.WriteByteTiktoken();
        dir.Write("tokenizer_config.json", """{ "bos_token": "<s>" }""");
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains("bos_token", e.Message);
        Assert.Contains("<s>", e.Message);
    }
}
