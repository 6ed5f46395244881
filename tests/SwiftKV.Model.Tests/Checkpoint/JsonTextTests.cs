// JSON in a checkpoint that parses but is not text: bytes that are not UTF-8 (a file saved as Latin-1 or cp1252) and
// \u escapes of half a UTF-16 surrogate pair. System.Text.Json accepts both while parsing and throws an
// InvalidOperationException, naming neither file nor key, at the first read of the string; every reader of checkpoint
// JSON (config.json, the safetensors header, the shard index, the tokenizer files) must refuse them with an
// InvalidModelException that says where.
using System.Text;
using SwiftKV.Model.Checkpoint;
using SwiftKV.Model.Tokenization;
using Xunit;

namespace SwiftKV.Model.Tests.Checkpoint;

public sealed class JsonTextTests
{
    const string Config = """
    { "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
      "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
      "vocab_size": 300, "max_position_embeddings": 256, "EXTRA": "value" }
    """;

    /// <summary>UTF-8 of <paramref name="text"/> with the first '#' replaced by the byte 0xFF (never valid in UTF-8).</summary>
    static byte[] WithBadByte(string text)
    {
        byte[] b = Encoding.UTF8.GetBytes(text);
        b[Array.IndexOf(b, (byte)'#')] = 0xFF;
        return b;
    }

    [Fact]
    public void ConfigJson_BadByteInAKey_IsRefusedNamingTheFileAndByte()
    {
        using var dir = new TempDirectory();
        byte[] bytes = WithBadByte(Config.Replace("\"EXTRA\"", "\"use_#cache\""));
        File.WriteAllBytes(dir.File("config.json"), bytes);
        var e = Assert.Throws<InvalidModelException>(() => LlamaConfig.Load(dir.Path));
        Assert.Contains("config.json: not UTF-8 text: byte " + Array.IndexOf(bytes, (byte)0xFF) + " (0xFF)", e.Message);
    }

    [Theory]
    [InlineData("\"EXTRA\"", "\"\\ud800x\"", "a key of $")]                            // an unused key
    [InlineData("\"value\"", "\"\\udc00\"", "the string at $.EXTRA")]                    // an unused string
    [InlineData("\"llama\"", "\"lla\\ud83dma\"", "the string at $.model_type")]         // a string that is read
    public void ConfigJson_UnpairedSurrogateEscape_IsRefusedNamingWhere(string find, string replace, string where)
    {
        string json = Config.Replace(find, replace);
        var e = Assert.Throws<InvalidModelException>(() => LlamaConfig.Parse(json));
        Assert.Contains("config.json: " + where, e.Message);
        Assert.Contains("half a UTF-16 surrogate pair", e.Message);
    }

    /// <summary>A surrogate pair written as two escapes is text, and so is an escaped backslash before "ud800".</summary>
    [Fact]
    public void ConfigJson_PairedEscapesAndEscapedBackslashes_Load()
    {
        var c = LlamaConfig.Parse(Config.Replace("\"value\"", "\"\\ud83d\\ude00 and \\\\ud800\""));
        Assert.Equal(64, c.HiddenSize);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void SafetensorsHeader_TensorNameNotText_IsRefusedNamingTheFile(bool badByte)
    {
        using var dir = new TempDirectory();
        string header = """{"a#":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""";
        byte[] file = RawSafetensors.Build(badByte ? header : header.Replace("#", "\\ud800"), RawSafetensors.F32(1f));
        if (badByte) file[Array.IndexOf(file, (byte)'#')] = 0xFF;
        string path = dir.File("model.safetensors");
        File.WriteAllBytes(path, file);
        var e = Assert.Throws<InvalidModelException>(() => SafetensorsFile.Open(path));
        Assert.Contains(path + " (header): ", e.Message);
        Assert.Contains(badByte ? "not UTF-8 text: byte 3 (0xFF)" : "a key of $ holds", e.Message);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ShardIndex_NotText_IsRefusedNamingTheFile(bool badByte)
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("model-00001-of-00001.safetensors"),
            RawSafetensors.Build("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", RawSafetensors.F32(1f)));
        string index = """{"weight_map": {"a": "model-00001-of-00001.safetensors#"}}""";
        string path = dir.File("model.safetensors.index.json");
        File.WriteAllBytes(path, badByte ? WithBadByte(index) : Encoding.UTF8.GetBytes(index.Replace("#", "\\udfff")));
        var e = Assert.Throws<InvalidModelException>(() => SafetensorsCheckpoint.Open(dir.Path));
        Assert.Contains(path + ": ", e.Message);
        Assert.Contains(badByte ? "not UTF-8 text" : "the string at $.weight_map.a holds", e.Message);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void TokenizerFiles_NotText_AreRefusedNamingTheFile(bool badByte)
    {
        using var dir = new Tokenization.TokenizerTempDir();
        dir.WriteByteTiktoken("ab");
        string config = """{ "bos_token": "<|b#|>", "added_tokens_decoder": { "300": { "content": "<|b#|>", "special": true } } }""";
        string path = System.IO.Path.Combine(dir.Path, "tokenizer_config.json");
        File.WriteAllBytes(path, badByte ? WithBadByte(config) : Encoding.UTF8.GetBytes(config.Replace("#", "\\ud800")));
        var e = Assert.Throws<InvalidModelException>(() => LlamaTokenizer.Load(dir.Path));
        Assert.Contains(path + ": ", e.Message);
        Assert.Contains(badByte ? "not UTF-8 text" : "the string at $.bos_token holds", e.Message);
    }

    /// <summary>A chat template that cannot be read is told, not thrown: info and generate --chat go on.</summary>
    [Fact]
    public void ChatTemplate_NotUtf8_IsANote()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("tokenizer_config.json"), WithBadByte("""{ "chat_template": "{{ messages }}#" }"""));
        Assert.Contains("unreadable", CheckpointChatTemplate.Describe(dir.Path));
        Assert.Contains("not UTF-8 text", CheckpointChatTemplate.Mismatch(dir.Path));
    }
}
