// The demo tokenizer against Hugging Face: tests/reference/make_fixtures.py loads the tokenizer.json our CLI
// writes with transformers' PreTrainedTokenizerFast on the GPU machine and records its ids for fixed strings.
using System.Text.Json.Nodes;
using SwiftKV.Model.Tokenization;
using Xunit;

namespace SwiftKV.Model.Tests.Tokenization;

public sealed class HuggingFaceTokenizerParityTests
{
    [Fact]
    public void Encode_MatchesTransformers()
    {
        string path = Path.Combine(AppContext.BaseDirectory, "fixtures", "parity", "tokenizer.json");
        Assert.True(File.Exists(path), $"fixture missing: {path}");
        var cases = JsonNode.Parse(File.ReadAllText(path))!["cases"]!.AsArray();
        Assert.NotEmpty(cases);
        var tok = SwiftKV.Model.Tokenization.LlamaTokenizer.CreateDemo();
        foreach (var c in cases)
        {
            string text = c!["text"]!.GetValue<string>();
            int[] expected = c["ids"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray();
            // HF matches special-token text in plain input; ours does when asked to.
            Assert.Equal(expected, tok.Encode(text, parseSpecialTokens: true));
        }
    }
}
