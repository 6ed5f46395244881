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
        Assert.DoesNotContain("model calls", text);   // a few chunks: no note
        int maps = calls.Count(c => c.Stage == "map");
        Assert.True(maps >= 2, $"the quick document should need several chunks, got {maps}");
        Assert.Equal("reduce", calls[^1].Stage);
        Assert.Contains($"{maps} chunks of sections (target <= 512 tokens, longest ", text);
        Assert.Contains("per-stage prefill cost", text);
        foreach (string stage in new[] { "map", "reduce", "total" })
            Assert.Contains(text.Split('\n'), l => l.TrimStart().StartsWith(stage + " ", StringComparison.Ordinal) && l.Contains('%'));
        Assert.All(calls, c => Assert.True(c.PromptTokens > 0 && c.Off > TimeSpan.Zero && c.On > TimeSpan.Zero));
    }

    /// <summary>
    /// Chunks of 10 tokens: the summaries of 50 of them overflowed the reduce prompt's context (chunk + 1,024) after every
    /// map call had run; the context is now sized for the reduce prompt too, so the run completes.
    /// </summary>
    [Fact]
    public async Task RunAsync_ManySmallChunks_SizesTheContextForTheReduce()
    {
        var output = new StringWriter();
        var options = SummarizationOptions.Quick(model.Directory) with { ChunkTokens = 10, MaxChunks = 50, MapTokens = 24 };
        var calls = await SummarizationSample.RunAsync(options, output, TestContext.Current.CancellationToken);
        Assert.Equal(50, calls.Count(c => c.Stage == "map"));
        Assert.Contains("note: 50 chunks make 100 model calls", output.ToString());
        Assert.Equal("reduce", calls[^1].Stage);
        Assert.True(calls[^1].PromptTokens > 10 + 1024, $"the reduce prompt ({calls[^1].PromptTokens} tokens) should exceed the old context");
    }

    /// <summary>When the reduce prompt cannot fit the model's context at all, the run is refused before any map call, naming the options.</summary>
    [Fact]
    public async Task RunAsync_ReducePastTheModelsContext_IsRefusedBeforeMapping()
    {
        string dir = model.Plain("short-context", maxPositions: 2048);
        var output = new StringWriter();
        var e = await Assert.ThrowsAsync<ArgumentException>(() =>
            SummarizationSample.RunAsync(SummarizationOptions.Quick(dir) with { ChunkTokens = 10 }, output, TestContext.Current.CancellationToken));
        Assert.Contains("more than the model's context of 2,048 tokens", e.Message);
        Assert.Contains("--max-chunks", e.Message);
        Assert.DoesNotContain("map:", output.ToString());
        // The same chunks, fewer of them mapped: fits.
        var calls = await SummarizationSample.RunAsync(SummarizationOptions.Quick(dir) with { ChunkTokens = 10, MaxChunks = 20 }, output, TestContext.Current.CancellationToken);
        Assert.Equal(21, calls.Count);
    }

    /// <summary>
    /// A model of 256 positions with chunks that fit it: the warm-up prompt (a fixed 1,500 characters of the report, ~330
    /// tokens) did not fit and failed the run after the context check had passed; it is now part of a chunk.
    /// </summary>
    [Fact]
    public async Task RunAsync_ShortContextModel_WarmsUpWithinIt()
    {
        string dir = model.Plain("context-256", maxPositions: 256);
        var calls = await SummarizationSample.RunAsync(SummarizationOptions.Quick(dir) with { ChunkTokens = 100, MaxChunks = 2 }, new StringWriter(), TestContext.Current.CancellationToken);
        Assert.Equal(3, calls.Count);
    }

    /// <summary>
    /// The default run keeps the context it always had (chunk + 1,024); more mapped chunks need more, never less; past the
    /// model's positions the run is refused. (That a sized context really holds the reduce prompt is the end-to-end test
    /// above: its reduce prompt is longer than the old context.)
    /// </summary>
    [Fact]
    public void ContextLength_DefaultsAsBefore_AndGrowsWithTheChunksMapped()
    {
        var tokenizer = SwiftKV.Model.Tokenization.LlamaTokenizer.CreateDemo();
        var defaults = new SummarizationOptions();
        Assert.Equal(2048 + 1024, SummarizationSample.ContextLength(defaults, tokenizer, defaults.MaxChunks, 131072));
        var small = SummarizationOptions.Quick() with { ChunkTokens = 10, MapTokens = 24 };
        int[] contexts = [.. new[] { 1, 10, 50, 100, 200 }.Select(n => SummarizationSample.ContextLength(small, tokenizer, n, 131072))];
        Assert.Equal(contexts.Order(), contexts);
        Assert.True(contexts[^1] > contexts[2], "200 summaries need more room than 50");
        Assert.Throws<ArgumentException>(() => SummarizationSample.ContextLength(small, tokenizer, 200, 2048));
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
