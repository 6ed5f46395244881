// RAG with SwiftKV: ingest the documents shipped with this sample (chunk, embed with arctic-embed-xs, store in a
// SQLite file), retrieve the top-k chunks for a question, and answer through Semantic Kernel with numbered
// citations. RAG prompts are mostly retrieved context, which is exactly the work SwiftKV halves: the report shows
// how many prompt tokens skipped the later layers and the time to first token.
//   dotnet run --project samples/Rag -c Release -- [--model DIR] [--question TEXT] [--top N] [--max-tokens N]
using System.Diagnostics;
using System.Text;
using Microsoft.Extensions.AI;
using Microsoft.SemanticKernel;
using SwiftKV.AI;

namespace SwiftKV.Samples.Rag;

/// <summary>What the RAG sample runs on.</summary>
public sealed record RagOptions
{
    /// <summary>Checkpoint directory; null runs the demo model.</summary>
    public string? Model { get; init; }
    /// <summary>Folder of .md / .txt documents to ingest.</summary>
    public string Documents { get; init; } = Path.Combine(AppContext.BaseDirectory, "rag-documents");
    /// <summary>
    /// SQLite file of the vector store, recreated on every run; null: a file of this run's own in the temp folder,
    /// removed at the end (so two runs at once do not share one).
    /// </summary>
    public string? Database { get; init; }
    /// <summary>Where the run's own store goes when <see cref="Database"/> is null.</summary>
    public string TemporaryFolder { get; init; } = Path.GetTempPath();
    public string Question { get; init; } = "How long is the Mow-3 battery covered by the warranty, and what voids that cover?";
    public int TopK { get; init; } = 3;
    public int ChunkChars { get; init; } = 500;
    public int MaxTokens { get; init; } = 48;
}

/// <summary>The RAG sample.</summary>
public static class RagSample
{
    const string Template = """
        <message role="system">You answer questions about Tidewater Robotics products using only the numbered sources
        the user gives. Cite every fact with its source number in brackets, like [2]. If the sources do not contain the
        answer, say so.</message>
        <message role="user">Sources:
        {{$sources}}

        Question: {{$question}}</message>
        """;

    const string Usage = "dotnet run --project samples/Rag -c Release -- [--model DIR] [--question TEXT] [--top N] [--max-tokens N] [--documents DIR] [--db FILE]";

    public static async Task<int> Main(string[] args)
    {
        if (SampleRun.ParseArgs("rag", Usage, args, a =>
            {
                var d = new RagOptions();
                var o = new RagOptions
                {
                    Model = a.String("model"),
                    Documents = a.String("documents") ?? d.Documents,
                    Database = a.String("db") ?? d.Database,
                    Question = a.String("question") ?? d.Question,
                    TopK = a.PositiveInt("top", d.TopK),
                    MaxTokens = a.PositiveInt("max-tokens", d.MaxTokens),
                };
                a.RejectUnknown();
                if (o.Database is { } db) CheckDatabasePath(db);
                return o;
            }, out var options) is int exit)
            return exit;
        return await SampleRun.Guarded("rag", stop => RunAsync(options, Console.Out, stop));
    }

    /// <summary>Ingests, retrieves, answers and reports to <paramref name="output"/>.</summary>
    public static async Task RunAsync(RagOptions options, TextWriter output, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(output);
        var (modelPath, isDemo) = SampleModel.Resolve(options.Model, output);

        // 1. Ingest: chunk every document, embed the chunks, store them.
        using var embedder = new ArcticEmbeddingGenerator();
        string database = options.Database ?? Path.Combine(options.TemporaryFolder, $"swiftkv-rag-sample-{Guid.NewGuid():N}.db");
        CheckDatabasePath(database);
        if (File.Exists(database)) File.Delete(database);
        try
        {
            await AnswerAsync(options, database, modelPath, isDemo, embedder, output, cancellationToken);
        }
        finally
        {
            if (options.Database is null) File.Delete(database);   // this run's own file
        }
    }

    /// <summary>
    /// The store's file is recreated, so a path that names something else is refused: a folder, a file in a missing
    /// folder, or an existing file that is not a vector store this sample made (it would be overwritten).
    /// </summary>
    static void CheckDatabasePath(string path)
    {
        if (Directory.Exists(path)) throw new ArgumentException($"--db {path} is a folder; give a file path.");
        if (Path.GetDirectoryName(Path.GetFullPath(path)) is { } parent && !Directory.Exists(parent))
            throw new ArgumentException($"--db {path}: the folder {parent} does not exist.");
        if (File.Exists(path) && new FileInfo(path).Length > 0 && !SqliteVectorStore.IsStore(path))
            throw new ArgumentException($"--db {path} exists and is not a vector store this sample made; it would be overwritten. Give another path.");
    }

    static async Task AnswerAsync(RagOptions options, string database, string modelPath, bool isDemo, ArcticEmbeddingGenerator embedder,
        TextWriter output, CancellationToken cancellationToken)
    {
        var clock = Stopwatch.StartNew();
        using var store = new SqliteVectorStore(database, ArcticEmbeddingGenerator.Dimensions);
        int documents = await IngestAsync(options.Documents, options.ChunkChars, embedder, store, cancellationToken);
        output.WriteLine($"ingested {documents} documents as {store.Count} chunks into {(options.Database is null ? "a temporary store" : database)} " +
                         $"(arctic-embed-xs, {ArcticEmbeddingGenerator.Dimensions} dims) in {clock.ElapsedMilliseconds} ms");

        // 2. Retrieve.
        var query = await embedder.GenerateVectorAsync(ArcticEmbeddingGenerator.QueryPrefix + options.Question, cancellationToken: cancellationToken);
        var hits = store.Search(query.Span, options.TopK);
        output.WriteLine($"\nquestion: {options.Question}\nretrieved:");
        for (int i = 0; i < hits.Count; i++) output.WriteLine($"  [{i + 1}] {hits[i].Chunk.Id,-22} cosine {hits[i].Score:F3}");

        // 3. Answer through Semantic Kernel; the kernel's IChatClient is the SwiftKV client's pipeline.
        using var swiftKv = new SwiftKvChatClient(new SwiftKvOptions { ModelPath = modelPath });
        var (pipeline, recorder) = SampleKernel.Pipeline(swiftKv);
        var kernel = SampleKernel.Create(pipeline);
        var arguments = new KernelArguments(SampleKernel.Settings(options.MaxTokens))
        {
            ["sources"] = FormatSources(hits),
            ["question"] = options.Question,
        };
        output.Write($"\nanswer ({swiftKv.GetService<ChatClientMetadata>()?.DefaultModelId}, SwiftKV {(swiftKv.Model.Backend.SwiftKvEnabled ? "on" : "off")}, streamed): ");
        try
        {
            await foreach (var chunk in kernel.InvokePromptStreamingAsync(Template, arguments, cancellationToken: cancellationToken))
                output.Write(chunk);
        }
        catch (ArgumentException e) when (e.Message.Contains("shorten the conversation", StringComparison.Ordinal))
        {
            // The library's advice names SwiftKvOptions, which this sample does not expose; its prompt grows with --top.
            throw new ArgumentException($"{e.Message} In this sample the prompt is the question and the {hits.Count} retrieved chunks: " +
                $"retrieve fewer with --top (now {options.TopK}).", e);
        }
        finally
        {
            output.WriteLine();   // an error (a prompt past the context) then prints on a line of its own
        }
        output.WriteLine("sources:");
        for (int i = 0; i < hits.Count; i++) output.WriteLine($"  [{i + 1}] {hits[i].Chunk.Id}: {Preview(hits[i].Chunk.Text)}");

        var call = recorder.Calls[^1];
        output.WriteLine($"\n{call}");
        output.WriteLine("(its TTFT includes this process's one-time start-up: compiling the code and first touching the weights)");
        var config = swiftKv.Model.Config;
        output.WriteLine(swiftKv.Model.Backend.SwiftKvEnabled
            ? $"SwiftKV let {call.PromptTokensSkipped} of {call.PromptTokens} prompt tokens skip layers {config.NumKeyValueLayers}..{config.NumHiddenLayers - 1} " +
              "(samples/Summarization times the same prefill with SwiftKV off and on)."
            : $"SwiftKV off: every prompt token ran all {config.NumHiddenLayers} layers" +
              (config.SwiftKv ? " (SwiftKv = false)." : " (this checkpoint has no SwiftKV layers: make one with `swiftkv transform --model DIR --out DIR2 --swiftkv-layers N`)."));
        if (isDemo) output.WriteLine("\n" + SampleModel.GibberishNote);
    }

    /// <summary>Chunks and embeds every .md and .txt file under <paramref name="folder"/>; returns how many documents it read.</summary>
    public static async Task<int> IngestAsync(string folder, int chunkChars, IEmbeddingGenerator<string, Embedding<float>> embedder,
        SqliteVectorStore store, CancellationToken cancellationToken = default)
    {
        if (File.Exists(folder)) throw new ArgumentException($"--documents {folder} is a file; give a folder of .md / .txt documents");
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"document folder '{folder}' does not exist");
        var files = Directory.EnumerateFiles(folder, "*.*", SearchOption.AllDirectories)
            .Where(f => f.EndsWith(".md", StringComparison.OrdinalIgnoreCase) || f.EndsWith(".txt", StringComparison.OrdinalIgnoreCase))
            .Order(StringComparer.Ordinal)
            .ToList();
        if (files.Count == 0) throw new FileNotFoundException($"no .md or .txt documents in '{folder}'");
        var pending = files.SelectMany(f => TextChunker.Chunk(ReadText(f, folder), chunkChars)
            .Select((text, i) => (Source: Path.GetRelativePath(folder, f), Ordinal: i, Text: text))).ToList();
        if (pending.Count == 0) throw new ArgumentException($"the {files.Count} document(s) in '{folder}' hold no text to retrieve from");
        var vectors = await embedder.GenerateAsync(pending.Select(p => p.Text), cancellationToken: cancellationToken);
        store.Upsert(pending.Zip(vectors, (p, v) => new StoredChunk(p.Source, p.Ordinal, p.Text, v.Vector.ToArray())));
        return files.Count;
    }

    /// <summary>
    /// A document's text (UTF-8, or UTF-16 / 32 with a byte-order mark); a file that is neither (a binary saved as .txt)
    /// is named, not ingested as noise.
    /// </summary>
    static string ReadText(string file, string folder)
    {
        var bytes = File.ReadAllBytes(file);
        if (bytes is [0xFF, 0xFE, ..] or [0xFE, 0xFF, ..]) return File.ReadAllText(file);   // UTF-16 / 32 with a byte-order mark
        if (!System.Text.Unicode.Utf8.IsValid(bytes) || bytes.AsSpan().Contains((byte)0))
            throw new ArgumentException($"document '{Path.GetRelativePath(folder, file)}' in '{folder}' is not UTF-8 text");
        return Encoding.UTF8.GetString(bytes).TrimStart('\uFEFF');
    }

    static string FormatSources(IReadOnlyList<SearchHit> hits)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < hits.Count; i++) sb.Append($"[{i + 1}] ({hits[i].Chunk.Id}) {hits[i].Chunk.Text}\n\n");
        return sb.ToString().TrimEnd();
    }

    static string Preview(string text) => text.Length <= 70 ? text.ReplaceLineEndings(" ") : text[..70].ReplaceLineEndings(" ") + "...";
}
