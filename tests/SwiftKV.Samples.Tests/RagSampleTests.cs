// The RAG sample end to end on the tiny model, and its parts: the arctic-embed-xs wrapper (real model, real
// similarity), the SQLite store (against hand-made vectors) and the chunker.
using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.Extensions.AI;
using SwiftKV.Samples.Rag;
using Xunit;

namespace SwiftKV.Samples.Tests;

public sealed class RagSampleTests(TinySampleModel model)
{
    static readonly string Documents = Path.Combine(AppContext.BaseDirectory, "rag-documents");

    [Fact]
    public async Task RunAsync_TinyModel_ReportsRetrievalCitationsAndPrefillNumbers()
    {
        var output = new StringWriter();
        await RagSample.RunAsync(new RagOptions { Model = model.Directory, Database = model.TempFile("rag.db"), MaxTokens = 4 }, output,
            TestContext.Current.CancellationToken);
        string text = output.ToString();

        Assert.Contains("ingested 8 documents as", text);
        Assert.Contains("[1] warranty.md#", text);
        Assert.Contains("sources:", text);
        var report = Assert.Single(text.Split('\n'), l => l.StartsWith("prompt tokens: ", StringComparison.Ordinal));
        Assert.Contains("| skipped by SwiftKV: ", report);
        Assert.Contains("| TTFT: ", report);
        // SwiftKV lets every prompt token but the last skip the later layers.
        int prompt = int.Parse(report.Split('|')[0].Replace("prompt tokens:", "").Trim());
        int skipped = int.Parse(report.Split('|')[1].Replace("skipped by SwiftKV:", "").Trim());
        Assert.True(prompt > 200, $"the retrieved context should make a long prompt, got {prompt} tokens");
        Assert.Equal(prompt - 1, skipped);
        Assert.DoesNotContain("gibberish", text); // --model was given: no demo-model note
    }

    /// <summary>
    /// A --model folder without a tokenizer is refused before anything is ingested (RAG embedded every chunk first, 44 s
    /// on a few hundred KB, then failed); no database is written.
    /// </summary>
    [Fact]
    public async Task RunAsync_ModelWithoutTokenizer_IsRefusedBeforeIngesting()
    {
        string dir = model.Plain("no-tokenizer");
        foreach (var f in Directory.EnumerateFiles(dir, "tokenizer*.json")) File.Delete(f);
        if (Directory.Exists(Path.Combine(dir, "original"))) Directory.Delete(Path.Combine(dir, "original"), recursive: true);
        string db = model.TempFile("never.db");
        var e = await Assert.ThrowsAsync<SwiftKV.Model.InvalidModelException>(() =>
            RagSample.RunAsync(new RagOptions { Model = dir, Database = db, MaxTokens = 2 }, new StringWriter(), TestContext.Current.CancellationToken));
        Assert.StartsWith("No tokenizer in ", e.Message);
        Assert.False(File.Exists(db), "nothing should be ingested");
    }

    /// <summary>On a plain Llama checkpoint the report said "SwiftKV let 0 of N prompt tokens skip layers 0..3"; it now says what ran.</summary>
    [Fact]
    public async Task RunAsync_PlainLlama_SaysEveryLayerRan()
    {
        string dir = model.Plain("plain-llama");
        var output = new StringWriter();
        await RagSample.RunAsync(new RagOptions { Model = dir, Database = model.TempFile("plain.db"), MaxTokens = 2 }, output, TestContext.Current.CancellationToken);
        Assert.Contains("SwiftKV off: every prompt token ran all 4 layers (this checkpoint has no SwiftKV layers", output.ToString());
        Assert.DoesNotContain("skip layers", output.ToString());
    }

    /// <summary>A prompt past the model's context: the error names the limit, and the "answer:" line is ended so it prints on a line of its own.</summary>
    [Fact]
    public async Task RunAsync_PromptPastTheContext_EndsTheAnswerLine()
    {
        string dir = model.Plain("context-64", maxPositions: 64);
        var output = new StringWriter();
        var e = await Assert.ThrowsAnyAsync<ArgumentException>(() =>
            RagSample.RunAsync(new RagOptions { Model = dir, Database = model.TempFile("short.db"), MaxTokens = 2 }, output, TestContext.Current.CancellationToken));
        Assert.Contains("max_position_embeddings", e.Message);
        Assert.Contains("retrieve fewer with --top (now 3)", e.Message);   // what the sample lets one change
        Assert.EndsWith("streamed): " + Environment.NewLine, output.ToString());
    }

    /// <summary>
    /// The store's file is recreated, so --db refuses what it would destroy or cannot open: an existing file that is not a
    /// store this sample made (kept as it was), a folder, a file in a missing folder; a store from an earlier run is
    /// replaced. Without --db the run uses a file of its own and removes it. Documents with no text, or a file given as
    /// the folder, are named too.
    /// </summary>
    [Fact]
    public async Task RunAsync_DatabasePath_RefusesWhatItWouldDestroy()
    {
        var ct = TestContext.Current.CancellationToken;
        string precious = model.TempFile("notes.txt");
        File.WriteAllText(precious, "precious notes");
        var e = await Assert.ThrowsAsync<ArgumentException>(() => RagSample.RunAsync(new RagOptions { Model = model.Directory, Database = precious, MaxTokens = 1 }, new StringWriter(), ct));
        Assert.Contains("is not a vector store this sample made", e.Message);
        Assert.Equal("precious notes", File.ReadAllText(precious));
        e = await Assert.ThrowsAsync<ArgumentException>(() => RagSample.RunAsync(new RagOptions { Model = model.Directory, Database = model.Directory, MaxTokens = 1 }, new StringWriter(), ct));
        Assert.Contains("is a folder", e.Message);
        e = await Assert.ThrowsAsync<ArgumentException>(() => RagSample.RunAsync(new RagOptions { Model = model.Directory, Database = Path.Combine(model.Directory, "no-such-dir", "x.db"), MaxTokens = 1 }, new StringWriter(), ct));
        Assert.Contains("does not exist", e.Message);

        string store = model.TempFile("again.db");
        for (int run = 0; run < 2; run++)   // the second run replaces the first one's store
            await RagSample.RunAsync(new RagOptions { Model = model.Directory, Database = store, MaxTokens = 1 }, new StringWriter(), ct);
        Assert.True(SqliteVectorStore.IsStore(store));

        // A store with a 'chunks' table that another program made is not this sample's: kept.
        string foreign = model.TempFile("foreign.db");
        using (var other = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={foreign};Pooling=False"))
        {
            other.Open();
            using var cmd = other.CreateCommand();
            cmd.CommandText = "CREATE TABLE chunks (x TEXT); CREATE TABLE users (pw TEXT); INSERT INTO users VALUES ('secret')";
            cmd.ExecuteNonQuery();
        }
        var foreignBytes = File.ReadAllBytes(foreign);
        Assert.False(SqliteVectorStore.IsStore(foreign));
        await Assert.ThrowsAsync<ArgumentException>(() => RagSample.RunAsync(new RagOptions { Model = model.Directory, Database = foreign, MaxTokens = 1 }, new StringWriter(), ct));
        Assert.Equal(foreignBytes, File.ReadAllBytes(foreign));
        File.WriteAllBytes(foreign, [.. "SQLite format 3\0"u8, .. new byte[100]]);   // corrupt past the header: not a store, no crash
        Assert.False(SqliteVectorStore.IsStore(foreign));

        string temp = Path.Combine(model.Directory, "tmp-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(temp);
        var output = new StringWriter();
        await RagSample.RunAsync(new RagOptions { Model = model.Directory, MaxTokens = 1, TemporaryFolder = temp }, output, ct);
        Assert.Contains("into a temporary store", output.ToString());
        Assert.Empty(Directory.GetFiles(temp));   // the run's own store is gone

        string blank = Path.Combine(model.Directory, "blank-docs-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(blank);
        File.WriteAllText(Path.Combine(blank, "a.md"), "");
        File.WriteAllText(Path.Combine(blank, "b.txt"), "  \n ");
        e = await Assert.ThrowsAsync<ArgumentException>(() => RagSample.RunAsync(new RagOptions { Model = model.Directory, Documents = blank, MaxTokens = 1 }, new StringWriter(), ct));
        Assert.Contains("hold no text", e.Message);
        e = await Assert.ThrowsAsync<ArgumentException>(() => RagSample.RunAsync(new RagOptions { Model = model.Directory, Documents = precious, MaxTokens = 1 }, new StringWriter(), ct));
        Assert.Contains("is a file", e.Message);
        File.WriteAllBytes(Path.Combine(blank, "c.txt"), [0x41, 0xff, 0xfe, 0x00, 0x42]);   // a binary saved as .txt
        e = await Assert.ThrowsAsync<ArgumentException>(() => RagSample.RunAsync(new RagOptions { Model = model.Directory, Documents = blank, MaxTokens = 1 }, new StringWriter(), ct));
        Assert.Contains("'c.txt'", e.Message);
        Assert.Contains("is not UTF-8 text", e.Message);
        string utf16 = Path.Combine(model.Directory, "utf16-docs-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(utf16);
        File.WriteAllText(Path.Combine(utf16, "note.txt"), "The Mow-3 battery is covered for two years.", System.Text.Encoding.Unicode);
        output = new StringWriter();
        await RagSample.RunAsync(new RagOptions { Model = model.Directory, Documents = utf16, MaxTokens = 1, TemporaryFolder = temp }, output, ct);
        Assert.Contains("ingested 1 documents as 1 chunks", output.ToString());   // UTF-16 with its byte-order mark is text
        // A folder that is no checkpoint fails before anything is ingested.
        output = new StringWriter();
        await Assert.ThrowsAnyAsync<Exception>(() => RagSample.RunAsync(new RagOptions { Model = blank, MaxTokens = 1 }, output, ct));
        Assert.DoesNotContain("ingested", output.ToString());
    }

    /// <summary>
    /// Cancelled while ONNX Runtime runs (Ctrl-C during ingestion): the run stops by its terminate flag, and the caller
    /// sees a cancellation, not a failed run. It used to surface as an OnnxRuntimeException and end the sample with a
    /// stack trace (exit 134) when the signal came during ingestion.
    /// </summary>
    [Fact]
    public async Task ArcticEmbeddingGenerator_CancelledMidRun_ThrowsCancellation()
    {
        using var embedder = new ArcticEmbeddingGenerator();
        // Enough text to keep the encoder busy for seconds, cancelled a moment after it starts.
        var texts = Enumerable.Range(0, 4000).Select(i => $"Quarter {i}: revenue grew while costs fell in region {i % 17}, and the pipeline filled.").ToList();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        stop.CancelAfter(TimeSpan.FromMilliseconds(200));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => embedder.GenerateAsync(texts, cancellationToken: stop.Token));
    }

    [Fact]
    public async Task ArcticEmbeddingGenerator_GenerateAsync_ReturnsUnitVectorsThatSeparateTopics()
    {
        using var embedder = new ArcticEmbeddingGenerator();
        var vectors = await embedder.GenerateAsync(
            ["The cat slept on the warm windowsill.", "A kitten dozed in the sun by the window.", "Interest rates rose by half a point."],
            cancellationToken: TestContext.Current.CancellationToken);

        Assert.Equal(3, vectors.Count);
        foreach (var v in vectors)
        {
            Assert.Equal(ArcticEmbeddingGenerator.Dimensions, v.Vector.Length);
            double norm = Math.Sqrt(v.Vector.ToArray().Sum(x => (double)x * x));
            Assert.InRange(norm, 0.999, 1.001);
        }
        float Cos(int a, int b) => System.Numerics.Tensors.TensorPrimitives.CosineSimilarity(vectors[a].Vector.Span, vectors[b].Vector.Span);
        Assert.True(Cos(0, 1) > Cos(0, 2) + 0.1f, $"paraphrases {Cos(0, 1):F3} should be closer than unrelated texts {Cos(0, 2):F3}");
        Assert.Equal("Snowflake/snowflake-arctic-embed-xs", embedder.GetService<EmbeddingGeneratorMetadata>()?.DefaultModelId);
    }

    [Theory]
    [InlineData("What does error E-17 mean?", "error-codes.md")]
    [InlineData("How often should I replace the blades?", "cleaning.md")]
    [InlineData("Can I return a mower after mowing with it?", "shipping-returns.md")]
    [InlineData("Which city was the company founded in?", "company.md")]
    public async Task Retrieval_ObviousQuestion_RanksItsDocumentFirst(string question, string expected)
    {
        using var embedder = new ArcticEmbeddingGenerator();
        using var store = new SqliteVectorStore(model.TempFile("retrieval.db"), ArcticEmbeddingGenerator.Dimensions);
        await RagSample.IngestAsync(Documents, 500, embedder, store, TestContext.Current.CancellationToken);
        var query = await embedder.GenerateVectorAsync(ArcticEmbeddingGenerator.QueryPrefix + question, cancellationToken: TestContext.Current.CancellationToken);

        var hits = store.Search(query.Span, 3);

        Assert.Equal(expected, hits[0].Chunk.Source);
        Assert.True(hits[0].Score >= hits[1].Score && hits[1].Score >= hits[2].Score);
    }

    [Fact]
    public void SqliteVectorStore_Search_RanksByCosineAndSurvivesReopen()
    {
        string path = model.TempFile("store.db");
        using (var store = new SqliteVectorStore(path, 3))
        {
            store.Upsert([
                new StoredChunk("a.md", 0, "x axis", [1, 0, 0]),
                new StoredChunk("b.md", 0, "mostly y", [0.1f, 1, 0]),
                new StoredChunk("c.md", 0, "long x", [10, 1, 0]),
            ]);
        }
        using var reopened = new SqliteVectorStore(path, 3);
        var hits = reopened.Search([1, 0, 0], 2);

        Assert.Equal(3, reopened.Count);
        Assert.Equal(["a.md#1", "c.md#1"], hits.Select(h => h.Chunk.Id));
        Assert.Equal(1f, hits[0].Score, 1e-6f);
        Assert.Equal(10 / MathF.Sqrt(101), hits[1].Score, 1e-6f); // cosine ignores length
        Assert.Equal([10f, 1f, 0f], hits[1].Chunk.Vector);
    }

    [Fact]
    public void SqliteVectorStore_WrongDimensions_NamesChunkAndSizes()
    {
        using var store = new SqliteVectorStore(model.TempFile("dims.db"), 3);
        var e = Assert.Throws<ArgumentException>(() => store.Upsert([new StoredChunk("a.md", 4, "t", [1, 2])]));
        Assert.Contains("a.md#5", e.Message);
        Assert.Contains("2-dimensional", e.Message);
        Assert.Throws<ArgumentException>(() => store.Search([1, 2, 3, 4], 1));
    }


    /// <summary>
    /// A run as a user starts it leaves nothing in $TMPDIR. ONNX Runtime's Linux telemetry client used to leave an empty
    /// mat-debug-&lt;pid&gt;.log and a .ses device-session file there on every run; the sample now sets
    /// ORT_DISABLE_TELEMETRY=1 for itself (OnnxRuntimeTelemetry), unless the user set it.
    /// </summary>
    [Fact]
    public async Task Main_LeavesNothingInTmp_NoOnnxRuntimeTelemetryFiles()
    {
        if (OperatingSystem.IsWindows()) Assert.Skip("the telemetry files are ONNX Runtime's Linux build's");
        var ct = TestContext.Current.CancellationToken;
        string tmp = Path.Combine(model.Directory, "tmp-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(tmp);
        var start = new ProcessStartInfo(Interrupts.DotnetHost, [Path.Combine(AppContext.BaseDirectory, "SwiftKV.Samples.Rag.dll"),
            "--model", model.Directory, "--documents", Documents, "--max-tokens", "4"]) { RedirectStandardOutput = true, RedirectStandardError = true };
        start.Environment["TMPDIR"] = tmp;
        start.Environment.Remove("ORT_DISABLE_TELEMETRY");   // as a user's shell would have it
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync(ct);
        var stderr = process.StandardError.ReadToEndAsync(ct);
        await Interrupts.WaitForExit(process, 180, ct);
        Assert.True(0 == process.ExitCode, $"exit code {process.ExitCode}; stderr: {await stderr}; stdout: {await stdout}");
        Assert.Empty(Directory.EnumerateFileSystemEntries(tmp).Select(Path.GetFileName));
    }

    [Fact]
    public async Task Main_CtrlCWhileRunning_RemovesItsTemporaryStoreAndExits130()
    {
        if (OperatingSystem.IsWindows()) Assert.Skip("sends SIGINT through kill(2)");
        var ct = TestContext.Current.CancellationToken;
        string tmp = Path.Combine(model.Directory, "tmp-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(tmp);
        // The sample as a user runs it, in its own process (the signal must reach its Main), its $TMPDIR a folder of
        // this test's own; a long answer keeps it busy after the store appears.
        string[]? sample = Interrupts.Interruptible([Interrupts.DotnetHost, Path.Combine(AppContext.BaseDirectory, "SwiftKV.Samples.Rag.dll"),
            "--model", model.Directory, "--documents", Documents, "--max-tokens", "100000"]);
        if (sample is null) Assert.Skip("SIGINT is ignored in this process and there is no /usr/bin/env to restore it");
        var start = new ProcessStartInfo(sample![0], sample[1..]) { RedirectStandardOutput = true, RedirectStandardError = true };
        start.Environment["TMPDIR"] = tmp;
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync(ct);
        var stderr = process.StandardError.ReadToEndAsync(ct);

        var waited = Stopwatch.StartNew();
        while (!Directory.EnumerateFiles(tmp, "swiftkv-rag-sample-*.db").Any())
        {
            if (process.HasExited) Assert.Fail($"the sample ended before its store appeared: {await stderr}");
            if (waited.Elapsed > TimeSpan.FromSeconds(120))
            {
                process.Kill();
                Assert.Fail($"no temporary store after 120 s; stdout: {await stdout}");
            }
            await Task.Delay(10, ct);
        }
        Assert.Equal(0, Interrupts.SendSigInt(process.Id));
        await Interrupts.WaitForExit(process, 120, ct);

        string errors = await stderr;
        Assert.True(130 == process.ExitCode, $"exit code {process.ExitCode}; stderr: {errors}; stdout: {await stdout}");
        Assert.Contains("rag: stopping", errors);
        Assert.DoesNotContain("   at ", errors);   // no stack trace
        Assert.Empty(Directory.EnumerateFiles(tmp, "swiftkv-rag-sample-*"));
    }

    [Fact]
    public void TextChunker_Chunk_PacksWholeParagraphsUnderBudget()
    {
        string text = "First paragraph here.\n\nSecond one.\n\n" + string.Join(" ", Enumerable.Repeat("A long sentence goes on.", 10));
        var chunks = TextChunker.Chunk(text, 60);

        Assert.StartsWith("First paragraph here.\nSecond one.\nA long", chunks[0]);
        Assert.All(chunks, c => Assert.True(c.Length <= 60, $"chunk of {c.Length} chars: {c}"));
        Assert.Equal(text.Replace("\n\n", " ").Replace("\n", " ").Replace(" ", ""), string.Concat(chunks).Replace("\n", "").Replace(" ", ""));
    }

    [Fact]
    public async Task IngestAsync_MissingFolder_NamesIt()
    {
        using var embedder = new ArcticEmbeddingGenerator();
        using var store = new SqliteVectorStore(model.TempFile("missing.db"), ArcticEmbeddingGenerator.Dimensions);
        var e = await Assert.ThrowsAsync<DirectoryNotFoundException>(() => RagSample.IngestAsync("/no/such/folder", 500, embedder, store, TestContext.Current.CancellationToken));
        Assert.Contains("/no/such/folder", e.Message);
    }
}
