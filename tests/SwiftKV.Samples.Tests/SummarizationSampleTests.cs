// The summarization sample's quick path end to end on the tiny model: every stage measured with SwiftKV off and
// on, and the FLOP table consistent with the engine's PrefillCost.
using SwiftKV.Samples.Summarization;
using Xunit;

namespace SwiftKV.Samples.Tests;

public sealed class SummarizationSampleTests(TinySampleModel model)
{
    [Fact]
    public async Task RunAsync_Quick_MapsEveryChunkReducesAndReportsPerStageCost()
    {
        var output = new StringWriter();
        var calls = await SummarizationSample.RunAsync(SummarizationOptions.Quick(model.Directory), output, TestContext.Current.CancellationToken);
        string text = output.ToString();

        int maps = calls.Count(c => c.Stage == "map");
        Assert.True(maps >= 2, $"the quick document should need several chunks, got {maps}");
        Assert.Equal("reduce", calls[^1].Stage);
        Assert.Contains($"{maps} chunks of sections (target <= 512 tokens, longest ", text);
        Assert.Contains("per-stage prefill cost", text);
        foreach (string stage in new[] { "map", "reduce", "total" })
            Assert.Contains(text.Split('\n'), l => l.TrimStart().StartsWith(stage + " ", StringComparison.Ordinal) && l.Contains('%'));
        Assert.All(calls, c => Assert.True(c.PromptTokens > 0 && c.Off > TimeSpan.Zero && c.On > TimeSpan.Zero));
    }

    [Fact]
    public void LongReport_Generate_IsDeterministicAndLong()
    {
        string a = LongReport.Generate(), b = LongReport.Generate();
        Assert.Equal(a, b);
        int tokens = SwiftKV.Model.Tokenization.LlamaTokenizer.CreateDemo().Encode(a).Count;
        Assert.InRange(tokens, 20_000, 60_000);
    }

    [Fact]
    public void ChunkByTokens_KeepsSectionsWholeAndUnderBudget()
    {
        var tokenizer = SwiftKV.Model.Tokenization.LlamaTokenizer.CreateDemo();
        string report = LongReport.Generate(10);
        var chunks = SummarizationSample.ChunkByTokens(report, tokenizer, 600);

        Assert.True(chunks.Count > 1);
        Assert.All(chunks, c => Assert.True(tokenizer.Encode(c).Count <= 600));
        Assert.Equal(report.Split("\n\n", StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
            chunks.SelectMany(c => c.Split("\n\n")));
    }

    [Theory]
    [InlineData(50, true)]
    [InlineData(400, false)]
    public void CostTable_NotesAStageTooShortToTime(int reduceMs, bool noted)
    {
        var config = SwiftKV.Model.Checkpoint.ModelPresets.Get("tiny") with { SwiftKv = true, ModelType = "llama_swiftkv", NumKeyValueLayers = 2 };
        StageCall[] calls =
        [
            new("map", 900, TimeSpan.FromMilliseconds(500), TimeSpan.FromMilliseconds(260)),
            new("reduce", 120, TimeSpan.FromMilliseconds(reduceMs), TimeSpan.FromMilliseconds(reduceMs + 3)),
        ];
        var output = new StringWriter();
        SummarizationSample.WriteCostTable(output, config, calls, hasSwiftKv: true);
        Assert.Equal(noted, output.ToString().Contains("is within timing noise here", StringComparison.Ordinal));
    }
}
