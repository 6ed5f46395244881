// Writes a Hugging Face checkpoint directory: config.json plus model.safetensors, or shards
// model-0000i-of-0000n.safetensors with model.safetensors.index.json once the data exceeds one shard, the
// layout transformers' save_pretrained produces and from_pretrained / safetensors.load_file read.
// NOTE: every file carries {"format": "pt"} metadata; transformers refuses safetensors files without it.
using System.Text.Json;
using System.Text.Json.Nodes;

namespace SwiftKV.Model.Checkpoint;

/// <summary>Saves weights or a list of named tensors as a checkpoint directory.</summary>
public static class LlamaCheckpointWriter
{
    /// <summary>transformers' default max_shard_size ("5GB").</summary>
    public const long DefaultMaxShardBytes = 5_000_000_000;

    static readonly Dictionary<string, string> PtMetadata = new() { ["format"] = "pt" };

    /// <summary>Saves <paramref name="weights"/> (the tensors of its SwiftKV mode) stored as <paramref name="dtype"/>.</summary>
    public static void Save(string directory, LlamaWeights weights, TensorDtype dtype = TensorDtype.BF16, long maxShardBytes = DefaultMaxShardBytes) =>
        Save(directory, weights.Config,
            LlamaWeightMap.Tensors(weights).Select(t => TensorToWrite.Of(t.Spec.Name, t.Spec.Shape, t.Values)).ToList(),
            dtype, maxShardBytes);

    /// <summary>
    /// Writes config.json (with torch_dtype set to <paramref name="dtype"/>) and <paramref name="tensors"/> in order,
    /// starting a new shard before a tensor that would push the current one past <paramref name="maxShardBytes"/>.
    /// Earlier model*.safetensors files and index in <paramref name="directory"/> are removed, so a stale file can never
    /// shadow the new ones.
    /// </summary>
    /// <remarks>
    /// NOTE: the files are written into a hidden folder inside <paramref name="directory"/> and moved into place only
    /// once all are complete: an interrupted write (Ctrl-C, a full disk, an error while producing a tensor) leaves what
    /// was there before, not a checkpoint of truncated files. A folder left by a killed process is removed by a later
    /// write once it is ten minutes old; other tools skip such folders (<see cref="PartialPrefix"/>).
    /// <c>companions</c> writes the files that travel with the weights (tokenizer, generation_config.json, ...) into the
    /// folder it is given, so that they move into place with the weights rather than after them.
    /// <paramref name="cancellationToken"/> stops the write between blocks of values, up to the moment the files start
    /// to move into place; the hidden folder is removed and <paramref name="directory"/> keeps what it had.
    /// </remarks>
    public static void Save(string directory, LlamaConfig config, IReadOnlyList<TensorToWrite> tensors,
        TensorDtype dtype = TensorDtype.BF16, long maxShardBytes = DefaultMaxShardBytes, Action<string>? companions = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        cancellationToken.ThrowIfCancellationRequested();
        tensors = tensors.Select(t => t.WithCancellation(cancellationToken)).ToList();
        if (maxShardBytes <= 0) throw new ArgumentOutOfRangeException(nameof(maxShardBytes), "must be positive.");
        Directory.CreateDirectory(directory);
        RemoveStalePartials(directory);
        string staging = Path.Combine(directory, PartialPrefix + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(staging);
        try
        {
            WriteFiles(staging, config, tensors, dtype, maxShardBytes);
            companions?.Invoke(staging);
            // The last moment to stop: from the first rename on, the write completes.
            cancellationToken.ThrowIfCancellationRequested();
            // Each new file replaces its namesake in one rename, config.json last (a reader that finds the new config
            // finds its weights and tokenizer); only then do old weight files the new set does not replace (shards of
            // another count, an index the new single file has no use for) go.
            var written = Directory.GetFiles(staging, "*", SearchOption.AllDirectories)
                .Select(f => Path.GetRelativePath(staging, f)).ToHashSet(StringComparer.Ordinal);
            foreach (string name in written.OrderBy(n => n == "config.json"))
            {
                string target = Path.Combine(directory, name);
                Directory.CreateDirectory(Path.GetDirectoryName(target)!);
                File.Move(Path.Combine(staging, name), target, overwrite: true);
            }
            RemoveOldWeights(directory, keep: written);
        }
        finally
        {
            if (Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
        }
    }

    /// <summary>The hidden folder a write goes to before its files move into place.</summary>
    public const string PartialPrefix = ".swiftkv-partial-";

    static void WriteFiles(string directory, LlamaConfig config, IReadOnlyList<TensorToWrite> tensors, TensorDtype dtype, long maxShardBytes)
    {
        File.WriteAllText(Path.Combine(directory, "config.json"), (config with { TorchDtype = dtype.TorchName() }).ToJson());

        var shards = Split(tensors, dtype, maxShardBytes);
        if (shards.Count == 1)
        {
            SafetensorsWriter.Write(Path.Combine(directory, SafetensorsCheckpoint.SingleFileName), shards[0], dtype, PtMetadata);
            return;
        }
        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        for (int s = 0; s < shards.Count; s++)
        {
            string name = $"model-{s + 1:D5}-of-{shards.Count:D5}.safetensors";
            SafetensorsWriter.Write(Path.Combine(directory, name), shards[s], dtype, PtMetadata);
            foreach (var t in shards[s]) weightMap[t.Name] = name;
        }
        var index = new JsonObject
        {
            ["metadata"] = new JsonObject { ["total_size"] = SafetensorsWriter.DataBytes(tensors, dtype) },
            ["weight_map"] = new JsonObject(weightMap.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
        };
        File.WriteAllText(Path.Combine(directory, SafetensorsCheckpoint.IndexFileName), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    static List<List<TensorToWrite>> Split(IReadOnlyList<TensorToWrite> tensors, TensorDtype dtype, long maxShardBytes)
    {
        var shards = new List<List<TensorToWrite>> { new() };
        long used = 0;
        foreach (var t in tensors)
        {
            long bytes = t.ElementCount * dtype.ElementSize();
            if (used > 0 && used + bytes > maxShardBytes)
            {
                shards.Add([]);
                used = 0;
            }
            shards[^1].Add(t);
            used += bytes;
        }
        return shards;
    }

    static void RemoveOldWeights(string directory, IReadOnlySet<string> keep)
    {
        foreach (string f in Directory.EnumerateFiles(directory, "model*.safetensors").Append(Path.Combine(directory, SafetensorsCheckpoint.IndexFileName)))
            if (!keep.Contains(Path.GetFileName(f)) && File.Exists(f)) File.Delete(f);
    }

    /// <summary>
    /// Removes folders a killed write left behind, once they are old enough that no write still runs in them (a second
    /// process writing into the same directory keeps its own).
    /// </summary>
    static void RemoveStalePartials(string directory)
    {
        foreach (string stale in Directory.EnumerateDirectories(directory, PartialPrefix + "*"))
        {
            // The folder's own date moves only when a file is added; a long shard being written moves its file's.
            var newest = Directory.EnumerateFiles(stale, "*", SearchOption.AllDirectories).Select(File.GetLastWriteTimeUtc)
                .Append(Directory.GetLastWriteTimeUtc(stale)).Max();
            if (DateTime.UtcNow - newest < StalePartialAge) continue;
            try { Directory.Delete(stale, recursive: true); }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>How old a partial write's folder must be to count as abandoned.</summary>
    internal static readonly TimeSpan StalePartialAge = TimeSpan.FromMinutes(10);
}
