// Writing checkpoints and loading them back into LlamaWeights: every slot holds the tensor of its Hugging Face
// name, in both SwiftKV modes, sharded or not, and wrong checkpoints fail naming the tensor, file and shapes.
using System.Text.Json;
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Model.Tests.Checkpoint;

public sealed class LlamaCheckpointTests : IDisposable
{
    readonly TempDirectory dir = new();

    public void Dispose() => dir.Dispose();

    [Fact]
    public void Load_ShardedSwiftKvCheckpoint_FillsSwiftKvSlotsOnly()
    {
        var config = TinyModels.Config(groupSize: 2);
        var v = TinyModels.SaveFull(dir.Path, config, TensorDtype.F32, maxShardBytes: 4000);
        Assert.True(File.Exists(dir.File(SafetensorsCheckpoint.IndexFileName)));

        var w = LlamaCheckpointLoader.Load(dir.Path);

        Assert.True(w.SwiftKvEnabled);
        Assert.Equal(v["model.norm_swiftkv.weight"], w.NormSwiftKv);
        Assert.Equal(v["model.layers.1.self_attn.q_proj.weight"], w.Layers[1].QProj);
        Assert.Null(w.Layers[1].QProjSwiftKv);
        Assert.Null(w.Layers[2].QProj);
        Assert.Equal(v["model.layers.2.self_attn.q_proj_swiftkv.weight"], w.Layers[2].QProjSwiftKv);
        Assert.Equal(v["model.layers.2.self_attn.k_proj_swiftkv.weight"], w.Layers[2].KProjSwiftKv);
        Assert.Equal(v["model.layers.2.self_attn.v_proj_swiftkv.weight"], w.Layers[2].VProjSwiftKv);
        Assert.Equal(v["model.layers.3.self_attn.q_proj_swiftkv.weight"], w.Layers[3].QProjSwiftKv);
        Assert.Null(w.Layers[3].KProjSwiftKv); // AcrossKV: layer 3 reads layer 2's cache
        Assert.Equal(v["model.layers.3.mlp.down_proj.weight"], w.Layers[3].DownProj);
        Assert.Equal(v["model.embed_tokens.weight"], w.EmbedTokens);
        Assert.Equal(v["lm_head.weight"], w.LmHead);
        Assert.Equal(v["model.norm.weight"], w.Norm);
    }

    [Fact]
    public void Load_SwiftKvCheckpointWithSwiftKvOff_UsesOriginalProjections()
    {
        var v = TinyModels.SaveFull(dir.Path, TinyModels.Config());
        var w = LlamaCheckpointLoader.Load(dir.Path, swiftKv: false);
        Assert.False(w.SwiftKvEnabled);
        Assert.Null(w.NormSwiftKv);
        Assert.Equal(v["model.layers.3.self_attn.k_proj.weight"], w.Layers[3].KProj);
        Assert.All(w.Layers, l => Assert.Null(l.QProjSwiftKv));
    }

    [Fact]
    public void Load_PlainLlamaWithSwiftKvOn_Throws()
    {
        TinyModels.SaveFull(dir.Path, TinyModels.Config(swiftKv: false));
        var e = Assert.Throws<InvalidModelException>(() => LlamaCheckpointLoader.Load(dir.Path, swiftKv: true));
        Assert.Contains("SwiftKV", e.Message);
    }

    [Fact]
    public void Save_WeightsLoadedWithSwiftKvOn_ReloadOnlyWithSwiftKvOn()
    {
        TinyModels.SaveFull(dir.Path, TinyModels.Config());
        var on = LlamaCheckpointLoader.Load(dir.Path);
        string copy = Path.Combine(dir.Path, "copy");
        LlamaCheckpointWriter.Save(copy, on, TensorDtype.F32);

        var again = LlamaCheckpointLoader.Load(copy);
        Assert.Equal(on.Layers[3].QProjSwiftKv, again.Layers[3].QProjSwiftKv);
        var e = Assert.Throws<InvalidModelException>(() => LlamaCheckpointLoader.Load(copy, swiftKv: false));
        Assert.Contains("missing 'model.layers.2.self_attn.q_proj.weight'", e.Message);
        Assert.Contains("can only run with SwiftKV on", e.Message);
    }

    [Theory]
    [InlineData(TensorDtype.BF16)]
    [InlineData(TensorDtype.F16)]
    public void Load_HalfPrecisionCheckpoint_ReadsValuesAndRecordsTorchDtype(TensorDtype dtype)
    {
        var v = TinyModels.SaveFull(dir.Path, TinyModels.Config(), dtype);
        var w = LlamaCheckpointLoader.Load(dir.Path);
        Assert.Equal(v["model.layers.0.mlp.up_proj.weight"], w.Layers[0].UpProj); // values are exact in both types
        Assert.Equal(dtype.TorchName(), LlamaConfig.Load(dir.Path).TorchDtype);
    }

    [Fact]
    public void Load_TiedEmbeddingsWithBias_SharesArrayAndLoadsBiases()
    {
        var v = TinyModels.SaveFull(dir.Path, TinyModels.Config(swiftKv: true, tied: true, bias: true));
        var w = LlamaCheckpointLoader.Load(dir.Path);
        Assert.Same(w.EmbedTokens, w.LmHead);
        Assert.Equal(v["model.layers.0.self_attn.q_proj.bias"], w.Layers[0].QBias);
        Assert.Equal(v["model.layers.0.self_attn.o_proj.bias"], w.Layers[0].OBias);
        Assert.Equal(v["model.layers.2.self_attn.k_proj_swiftkv.bias"], w.Layers[2].KBiasSwiftKv);
    }

    [Fact]
    public void Load_WrongShape_NamesTensorFileAndBothShapes()
    {
        var config = TinyModels.Config(swiftKv: false);
        var specs = LlamaTensorNames.ForCheckpoint(config)
            .Select(s => s.Name == "model.layers.1.mlp.up_proj.weight" ? s with { Shape = [16, 24] } : s).ToList();
        LlamaCheckpointWriter.Save(dir.Path, config, TinyModels.ToWrite(specs, TinyModels.Values(specs, 1)), TensorDtype.F32, cancellationToken: TestContext.Current.CancellationToken);

        var e = Assert.Throws<InvalidModelException>(() => LlamaCheckpointLoader.Load(dir.Path));
        Assert.Contains("'model.layers.1.mlp.up_proj.weight' in model.safetensors has shape [16, 24], expected [24, 16] (intermediate_size, hidden_size)", e.Message);
    }

    [Fact]
    public void Load_ManyMissingTensors_ListsThemWithCount()
    {
        var config = TinyModels.Config(swiftKv: false);
        var specs = LlamaTensorNames.ForCheckpoint(config).Where(s => !s.Name.Contains("layernorm")).ToList();
        LlamaCheckpointWriter.Save(dir.Path, config, TinyModels.ToWrite(specs, TinyModels.Values(specs, 1)), TensorDtype.F32, cancellationToken: TestContext.Current.CancellationToken);

        var e = Assert.Throws<InvalidModelException>(() => LlamaCheckpointLoader.Load(dir.Path));
        Assert.Contains("8 problem(s)", e.Message);
        Assert.Contains("missing 'model.layers.3.post_attention_layernorm.weight' [16] (hidden_size)", e.Message);
    }

    /// <summary>
    /// A config of 1024 layers over a checkpoint of 4: every missing tensor is counted, a dozen are listed (the message
    /// once held a line for each, built before being cut to twelve).
    /// </summary>
    [Fact]
    public void Load_ThousandsOfMissingTensors_CountsThemAllListsTwelve()
    {
        var written = TinyModels.Config(swiftKv: false);
        TinyModels.SaveFull(dir.Path, written);
        File.WriteAllText(dir.File("config.json"), (written with { NumHiddenLayers = 1024 }).ToJson());

        var e = Assert.Throws<InvalidModelException>(() => LlamaCheckpointLoader.Verify(dir.Path));
        // Per missing layer: two norms, q/k/v/o and gate/up/down.
        const int missing = (1024 - 4) * 9;
        Assert.Contains($"{missing} problem(s)", e.Message);
        Assert.Equal(12, e.Message.Split('\n').Count(l => l.StartsWith(" - missing", StringComparison.Ordinal)));
        Assert.Contains($" - ... and {missing - 12} more", e.Message);
        Assert.Contains("missing 'model.layers.4.input_layernorm.weight'", e.Message);
    }

    /// <summary>
    /// An fp8 weight whose scale is NaN: Verify (what info runs) refuses it as a load does, naming the scale; it checked
    /// headers only, so info said OK for a checkpoint generate refused. So is a negative scale; a finite one, zero
    /// included, passes and counts as fp8.
    /// </summary>
    [Fact]
    public void Verify_Fp8WeightWithNanOrNegativeScale_IsRefusedNamingTheScale()
    {
        const string weight = "model.layers.1.mlp.down_proj.weight", scale = "model.layers.1.mlp.down_proj.weight_scale";
        var config = TinyModels.Config(swiftKv: false);
        TinyModels.SaveFull(dir.Path, config);
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(dir.File("config.json")))!.AsObject();
        json["quantization_config"] = new System.Text.Json.Nodes.JsonObject { ["quant_method"] = "fp8" };   // one scale per matrix
        File.WriteAllText(dir.File("config.json"), json.ToJsonString());

        WithFp8Weight(weight, scale, 0.5f);
        Assert.Equal(new VerifiedCheckpoint(LlamaTensorNames.ForModel(config, false).Count, 1), LlamaCheckpointLoader.Verify(dir.Path));

        WithFp8Weight(weight, scale, float.NaN);
        var e = Assert.Throws<InvalidModelException>(() => LlamaCheckpointLoader.Verify(dir.Path));
        Assert.Contains($"scale '{scale}' holds NaN; every scale must be finite and not negative", e.Message);
        Assert.Contains("1 problem(s)", e.Message);

        WithFp8Weight(weight, scale, -0.5f);   // would flip the matrix's signs
        e = Assert.Throws<InvalidModelException>(() => LlamaCheckpointLoader.Verify(dir.Path));
        Assert.Contains($"scale '{scale}' holds -0.5; every scale must be finite and not negative", e.Message);

        WithFp8Weight(weight, scale, 0f);      // an all-zero matrix quantizes to scale 0
        Assert.Equal(new VerifiedCheckpoint(LlamaTensorNames.ForModel(config, false).Count, 1), LlamaCheckpointLoader.Verify(dir.Path));
    }

    /// <summary>Rewrites model.safetensors by hand with <paramref name="weight"/> as F8_E4M3 codes of 1.0 and an F32 scale [1].</summary>
    void WithFp8Weight(string weight, string scale, float scaleValue)
    {
        string path = dir.File("model.safetensors");
        var entries = new List<string>();
        var data = new List<byte>();
        void Add(string name, string dtype, IReadOnlyList<long> shape, byte[] bytes)
        {
            entries.Add($"\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{string.Join(",", shape)}],\"data_offsets\":[{data.Count},{data.Count + bytes.Length}]}}");
            data.AddRange(bytes);
        }
        using (var file = SafetensorsFile.Open(path))
        {
            foreach (var t in file.Tensors.Where(t => t.Name != scale))
            {
                if (t.Name == weight) Add(t.Name, "F8_E4M3", t.Shape, Enumerable.Repeat((byte)0x38, (int)t.ElementCount).ToArray());   // 0x38 is 1.0 in E4M3
                else Add(t.Name, t.Dtype.SafetensorsName(), t.Shape, file.ReadBytes(t.Name));
            }
        }
        Add(scale, "F32", [1], RawSafetensors.F32(scaleValue));
        File.WriteAllBytes(path, RawSafetensors.Build("{" + string.Join(",", entries) + "}", data.ToArray()));
    }

    [Fact]
    public void Save_Sharded_WritesTransformersIndexLayout()
    {
        var config = TinyModels.Config();
        TinyModels.SaveFull(dir.Path, config, TensorDtype.BF16, maxShardBytes: 3000);
        string[] shards = Directory.GetFiles(dir.Path, "*.safetensors").Select(Path.GetFileName).Order().ToArray()!;
        Assert.True(shards.Length > 1);
        Assert.Equal($"model-00001-of-{shards.Length:D5}.safetensors", shards[0]);

        using var index = JsonDocument.Parse(File.ReadAllText(dir.File(SafetensorsCheckpoint.IndexFileName)));
        long expectedBytes = LlamaTensorNames.ForCheckpoint(config).Sum(s => s.ElementCount) * 2;
        Assert.Equal(expectedBytes, index.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64());
        var mapped = index.RootElement.GetProperty("weight_map").EnumerateObject().Select(p => p.Name).Order();
        Assert.Equal(LlamaTensorNames.ForCheckpoint(config).Select(s => s.Name).Order(), mapped);
        using var first = SafetensorsFile.Open(dir.File(shards[0]));
        Assert.Equal("pt", first.Metadata["format"]);
    }

    /// <summary>
    /// Cancelled part-way (Ctrl-C in make-model, transform or distill): the write stops at the next block of values,
    /// the hidden folder goes, and the checkpoint that was there stays whole. Cancelled after every file is written but
    /// before they move, the same. Streamed tensors (make-model's) check between blocks, too.
    /// </summary>
    [Fact]
    public void Save_Cancelled_StopsAndLeavesThePreviousCheckpoint()
    {
        var config = TinyModels.Config(swiftKv: false);
        var values = TinyModels.SaveFull(dir.Path, config, TensorDtype.F32);
        var files = Directory.GetFiles(dir.Path).Select(f => (f, File.ReadAllBytes(f))).ToList();
        void AssertUnchanged()
        {
            foreach (var (f, bytes) in files) Assert.Equal(bytes, File.ReadAllBytes(f));
            Assert.Equal(files.Count, Directory.GetFiles(dir.Path).Length);
            Assert.Empty(Directory.GetDirectories(dir.Path));
        }
        var specs = LlamaTensorNames.ForCheckpoint(config);

        // Cancelled while the second tensor is produced: the third is never asked for.
        using (var stop = new CancellationTokenSource())
        {
            var tensors = TinyModels.ToWrite(specs, TinyModels.Values(specs, 2));
            bool thirdAsked = false;
            var second = tensors[1];
            tensors[1] = new TensorToWrite(second.Name, second.Shape, () => { stop.Cancel(); return TinyModels.Values(specs, 2)[second.Name]; });
            tensors[2] = new TensorToWrite(tensors[2].Name, tensors[2].Shape, () => { thirdAsked = true; return new float[tensors[2].ElementCount]; });
            Assert.ThrowsAny<OperationCanceledException>(() => LlamaCheckpointWriter.Save(dir.Path, config, tensors, TensorDtype.BF16, cancellationToken: stop.Token));
            Assert.False(thirdAsked);
            AssertUnchanged();
        }

        // Cancelled by the companions step, after every weight file is complete and before any moves.
        using (var stop = new CancellationTokenSource())
        {
            var tensors = TinyModels.ToWrite(specs, TinyModels.Values(specs, 3));
            Assert.ThrowsAny<OperationCanceledException>(() => LlamaCheckpointWriter.Save(dir.Path, config, tensors, TensorDtype.BF16,
                companions: staging => { File.WriteAllText(Path.Combine(staging, "tokenizer.json"), "{}"); stop.Cancel(); }, cancellationToken: stop.Token));
            AssertUnchanged();
        }

        // make-model's streamed tensors: cancelled from the start, nothing is produced and nothing changes.
        using (var stop = new CancellationTokenSource())
        {
            stop.Cancel();
            Assert.ThrowsAny<OperationCanceledException>(() => ModelMaker.Write(dir.Path, config, new ModelMakerOptions { Dtype = TensorDtype.BF16 }, cancellationToken: stop.Token));
            AssertUnchanged();
        }
        Assert.Equal(values[LlamaTensorNames.EmbedTokens], LlamaCheckpointLoader.Load(dir.Path).EmbedTokens);
    }

    [Fact]
    public void Save_OverShardedCheckpoint_RemovesStaleShards()
    {
        var config = TinyModels.Config();
        TinyModels.SaveFull(dir.Path, config, TensorDtype.F32, maxShardBytes: 3000);
        TinyModels.SaveFull(dir.Path, config, TensorDtype.F32);
        Assert.Equal(["model.safetensors"], Directory.GetFiles(dir.Path, "*.safetensors").Select(Path.GetFileName));
        Assert.False(File.Exists(dir.File(SafetensorsCheckpoint.IndexFileName)));
    }

    /// <summary>
    /// A write that fails part-way (here a tensor's producer throws after the first shard is written; Ctrl-C or a full
    /// disk do the same) leaves the checkpoint that was there, whole, and no half-written files or folder.
    /// </summary>
    [Fact]
    public void Save_FailingPartWay_LeavesThePreviousCheckpoint()
    {
        var config = TinyModels.Config(swiftKv: false);
        var values = TinyModels.SaveFull(dir.Path, config, TensorDtype.F32);
        var files = Directory.GetFiles(dir.Path).Select(f => (f, File.ReadAllBytes(f))).ToList();

        var specs = LlamaTensorNames.ForCheckpoint(config);
        var tensors = TinyModels.ToWrite(specs, TinyModels.Values(specs, 2));
        tensors[^1] = new TensorToWrite(tensors[^1].Name, tensors[^1].Shape, () => throw new IOException("disk full"));
        Assert.Throws<IOException>(() => LlamaCheckpointWriter.Save(dir.Path, config, tensors, TensorDtype.BF16, maxShardBytes: 3000, cancellationToken: TestContext.Current.CancellationToken));

        foreach (var (f, bytes) in files) Assert.Equal(bytes, File.ReadAllBytes(f));
        Assert.Equal(files.Count, Directory.GetFiles(dir.Path).Length);
        Assert.Empty(Directory.GetDirectories(dir.Path));
        var loaded = LlamaCheckpointLoader.Load(dir.Path);
        Assert.Equal(values[LlamaTensorNames.EmbedTokens], loaded.EmbedTokens);

        // A folder left by a killed write is removed by a later one once it is old; a young one may be another writer's.
        string killed = Path.Combine(dir.Path, LlamaCheckpointWriter.PartialPrefix + "killed");
        string young = Path.Combine(dir.Path, LlamaCheckpointWriter.PartialPrefix + "running");
        Directory.CreateDirectory(killed);
        Directory.CreateDirectory(young);
        Directory.SetLastWriteTimeUtc(killed, DateTime.UtcNow - TimeSpan.FromHours(1));
        TinyModels.SaveFull(dir.Path, config, TensorDtype.F32);
        Assert.Equal([young], Directory.GetDirectories(dir.Path));

        // Nor does a converter copy such a folder into its output as a companion file.
        File.WriteAllText(Path.Combine(young, "model-00001-of-00002.safetensors"), "partial");
        string converted = Path.Combine(dir.Path, "..", Path.GetFileName(dir.Path) + "-converted");
        try
        {
            SwiftKvConverter.Convert(dir.Path, converted, numKeyValueLayers: config.NumHiddenLayers - 1, cancellationToken: TestContext.Current.CancellationToken);
            Assert.Empty(Directory.GetDirectories(converted));
        }
        finally
        {
            if (Directory.Exists(converted)) Directory.Delete(converted, recursive: true);
        }
    }
}
