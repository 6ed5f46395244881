// The safetensors files of a Hugging Face checkpoint directory, seen as one name -> tensor map:
// either a single model.safetensors, or shards listed by model.safetensors.index.json
// ({"metadata": {"total_size": n}, "weight_map": {tensor name: shard file name}}).
// NOTE: the index is cross-checked against the shards' own headers, so a stale index (a shard replaced after
// the index was written) fails at open naming the tensor and both files, not as a wrong weight later.
using System.Text.Json;
using SwiftKV.Model.Tokenization;

namespace SwiftKV.Model.Checkpoint;

/// <summary>An open checkpoint directory. Disposing it closes every shard.</summary>
public sealed class SafetensorsCheckpoint : IDisposable
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    readonly Dictionary<string, SafetensorsFile> fileOf;

    public string Directory { get; }
    public IReadOnlyList<SafetensorsFile> Files { get; }
    public IReadOnlyCollection<string> TensorNames => fileOf.Keys;

    SafetensorsCheckpoint(string directory, List<SafetensorsFile> files, Dictionary<string, SafetensorsFile> fileOf)
    {
        Directory = directory;
        Files = files;
        this.fileOf = fileOf;
    }

    /// <summary>Opens model.safetensors if present, else the shards named by model.safetensors.index.json.</summary>
    public static SafetensorsCheckpoint Open(string directory)
    {
        if (!System.IO.Directory.Exists(directory)) throw new InvalidModelException($"checkpoint directory not found: {directory}");
        string single = Path.Combine(directory, SingleFileName);
        string index = Path.Combine(directory, IndexFileName);
        var files = new List<SafetensorsFile>();
        try
        {
            if (CheckpointJson.FileExists(single))
            {
                var file = SafetensorsFile.Open(single);
                files.Add(file);
                return new SafetensorsCheckpoint(directory, files, file.Tensors.ToDictionary(t => t.Name, _ => file, StringComparer.Ordinal));
            }
            if (!CheckpointJson.FileExists(index))
                throw new InvalidModelException($"{directory}: no {SingleFileName} and no {IndexFileName}; not a safetensors checkpoint.");
            var weightMap = ReadWeightMap(index);
            var shards = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
            foreach (string shardName in weightMap.Values.Distinct().Order(StringComparer.Ordinal))
            {
                string path = Path.Combine(directory, shardName);
                if (System.IO.Directory.Exists(path)) throw new InvalidModelException($"{index}: shard '{shardName}' is listed, but {path} is a directory, not a file.");
                if (!File.Exists(path)) throw new InvalidModelException($"{index}: shard '{shardName}' is listed but not present in {directory}.");
                var shard = SafetensorsFile.Open(path);
                files.Add(shard);
                shards[shardName] = shard;
            }
            var fileOf = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
            foreach (var (name, shardName) in weightMap)
            {
                if (!shards[shardName].Contains(name))
                    throw new InvalidModelException($"{index}: tensor '{name}' is mapped to '{shardName}', whose header does not hold it (stale index?).");
                fileOf[name] = shards[shardName];
            }
            foreach (var shard in files)
            {
                foreach (var t in shard.Tensors)
                {
                    if (fileOf.TryGetValue(t.Name, out var owner) && owner != shard)
                        throw new InvalidModelException($"{directory}: tensor '{t.Name}' appears in both {Path.GetFileName(owner.Path)} and {Path.GetFileName(shard.Path)}.");
                    fileOf[t.Name] = shard;
                }
            }
            return new SafetensorsCheckpoint(directory, files, fileOf);
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    public bool Contains(string name) => fileOf.ContainsKey(name);

    /// <summary>Finds a tensor and the file that holds it.</summary>
    public bool TryGet(string name, out TensorInfo info, out SafetensorsFile file)
    {
        if (fileOf.TryGetValue(name, out file!)) { info = file.Get(name); return true; }
        info = null!;
        return false;
    }

    /// <summary>Reads a F32, F16 or BF16 tensor as fp32; throws naming the directory when it is absent.</summary>
    public float[] ReadFloat32(string name) =>
        fileOf.TryGetValue(name, out var file) ? file.ReadFloat32(name) : throw new InvalidModelException($"{Directory}: checkpoint has no tensor '{name}'.");

    public void Dispose()
    {
        foreach (var f in Files) f.Dispose();
    }

    static Dictionary<string, string> ReadWeightMap(string index)
    {
        var utf8 = CheckpointJson.ReadUtf8(index);
        CheckpointJson.RequireUtf8(utf8.Span, index);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(utf8); }
        catch (JsonException e) { throw new InvalidModelException($"{index}: not valid JSON ({e.Message}).", e); }
        using (doc)
        {
            CheckpointJson.RequireText(doc.RootElement, utf8.Span, index);
            if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new InvalidModelException($"{index}: missing object 'weight_map'.");
            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new InvalidModelException($"{index}: weight_map['{p.Name}'] must be a file name string, got {p.Value.ValueKind}.");
                string shard = p.Value.GetString()!;
                // A shard must sit in the checkpoint directory: no paths, so an index cannot point elsewhere on disk.
                if (shard.Length == 0 || shard != Path.GetFileName(shard) || shard is "." or ".." || shard.Contains('\\'))
                    throw new InvalidModelException($"{index}: weight_map['{p.Name}'] = '{shard}' is not a plain file name in the checkpoint directory.");
                if (!result.TryAdd(p.Name, shard)) throw new InvalidModelException($"{index}: weight_map names '{p.Name}' twice.");
            }
            if (result.Count == 0) throw new InvalidModelException($"{index}: weight_map is empty.");
            return result;
        }
    }
}
