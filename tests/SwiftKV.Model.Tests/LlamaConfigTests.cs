// config.json parsing: the published Llama 3.1 / SwiftKV layouts parse to the facts in SWIFTKV.md, and every
// malformed or inconsistent config is refused with a message that names the key.
using System.Text.Json.Nodes;
using Xunit;

namespace SwiftKV.Model.Tests;

public sealed class LlamaConfigTests
{
    // The shape of meta-llama/Llama-3.1-8B-Instruct's config.json plus Snowflake's SwiftKV fields.
    const string SwiftKv8B = """
    {
      "architectures": ["LlamaSwiftKVForCausalLM"], "model_type": "llama_swiftkv",
      "attention_bias": false, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
      "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 131072,
      "mlp_bias": false, "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
      "rms_norm_eps": 1e-05,
      "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "vocab_size": 128256,
      "swiftkv": true, "num_key_value_layers": 16, "key_value_group_size": 1
    }
    """;

    static string With(string json, Action<JsonObject> edit)
    {
        var o = JsonNode.Parse(json)!.AsObject();
        edit(o);
        return o.ToJsonString();
    }

    [Fact]
    public void Parse_SwiftKv8B_ReadsEveryFact()
    {
        var c = LlamaConfig.Parse(SwiftKv8B);
        Assert.Equal((4096, 14336, 32, 32, 8, 128, 128256), (c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.VocabSize));
        Assert.Equal(new Llama3RopeScaling(8, 1, 4, 8192), c.RopeScaling);
        Assert.Equal([128001, 128008, 128009], c.EosTokenIds);
        Assert.True(c.SwiftKv);
        Assert.Equal(16, c.NumKeyValueLayers);
        Assert.Equal(32, c.NumKvCaches(swiftKvEnabled: false));
        Assert.Equal(32, c.NumKvCaches(swiftKvEnabled: true));
        Assert.False(c.IsSwiftKvLayer(15));
        Assert.True(c.IsSwiftKvLayer(16));
    }

    [Fact]
    public void Parse_AcrossKv_SharesCachesWithinGroups()
    {
        var c = LlamaConfig.Parse(With(SwiftKv8B, o => o["key_value_group_size"] = 4));
        Assert.Equal(16 + 4, c.NumKvCaches(true));
        Assert.Equal([16, 16, 16, 16, 17, 17], Enumerable.Range(16, 6).Select(l => c.KvCacheIndex(l, true)));
        Assert.True(c.IsKvGroupLeader(20));
        Assert.False(c.IsKvGroupLeader(21));
        Assert.Equal(21, c.KvCacheIndex(21, swiftKvEnabled: false));
    }

    [Fact]
    public void ToJson_RoundTrips()
    {
        var c = LlamaConfig.Parse(With(SwiftKv8B, o => o["key_value_group_size"] = 2));
        Assert.Equal(c.ToJson(), LlamaConfig.Parse(c.ToJson()).ToJson());
        Assert.Equal(c with { EosTokenIds = [] }, LlamaConfig.Parse(c.ToJson()) with { EosTokenIds = [] });
    }

    [Fact]
    public void Parse_PlainLlama_DefaultsHeadDimAndKvHeads()
    {
        var c = LlamaConfig.Parse("""{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100}""");
        Assert.Equal(16, c.HeadDim);
        Assert.Equal(4, c.NumKeyValueHeads);
        Assert.False(c.SwiftKv);
        Assert.Null(c.RopeScaling);
    }

    public static TheoryData<string, string> BadConfigs() => new()
    {
        { With(SwiftKv8B, o => o.Remove("hidden_size")), "missing required key 'hidden_size'" },
        { With(SwiftKv8B, o => o["num_hidden_layers"] = "32"), "'num_hidden_layers' must be an integer" },
        { With(SwiftKv8B, o => o["rms_norm_eps"] = "small"), "'rms_norm_eps' must be a number" },
        { With(SwiftKv8B, o => o["tie_word_embeddings"] = 1), "'tie_word_embeddings' must be true or false" },
        { With(SwiftKv8B, o => o["num_key_value_heads"] = 5), "multiple of num_key_value_heads" },
        { With(SwiftKv8B, o => o["num_key_value_layers"] = 33), "num_key_value_layers must be in 1..32" },
        { With(SwiftKv8B, o => o["num_key_value_layers"] = -1), "num_key_value_layers must be in 1..32" },
        { With(SwiftKv8B, o => o["key_value_group_size"] = 3), "key_value_group_size (3) must divide" },
        { With(SwiftKv8B, o => o["key_value_group_size"] = -2), "key_value_group_size must be >= 1" },
        { With(SwiftKv8B, o => o["rope_scaling"]!["rope_type"] = "yarn"), "rope_scaling type 'yarn' is not supported" },
        { With(SwiftKv8B, o => o["model_type"] = "mistral"), "model_type 'mistral' is not supported" },
        { With(SwiftKv8B, o => o["vocab_size"] = -1), "vocab_size must be a positive integer" },
        { With(SwiftKv8B, o => o["vocab_size"] = int.MaxValue), "vocab_size (2147483647) must be at most 16777216" },
        // Each layer names ~10 tensors: such counts grew the tensor list until memory ran out (20 GB in two minutes).
        { With(SwiftKv8B, o => o["num_hidden_layers"] = 10_000_000), "num_hidden_layers (10000000) must be at most 1024" },
        { With(SwiftKv8B, o => o["num_hidden_layers"] = int.MaxValue), "num_hidden_layers (2147483647) must be at most 1024" },
        { With(SwiftKv8B, o => o["num_hidden_layers"] = 32.5), "'num_hidden_layers' must be an integer, got 32.5" },
        // JSON's 1e999 reads as infinity: an infinite eps would zero every activation, an infinite theta every rotation.
        { SwiftKv8B.Replace("\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 1e999"), "rms_norm_eps must be finite and > 0" },
        { SwiftKv8B.Replace("\"rope_theta\": 500000.0", "\"rope_theta\": 1e999"), "rope_theta must be finite and > 0" },
        { SwiftKv8B.Replace("\"factor\": 8.0", "\"factor\": 1e999"), "rope_scaling.factor must be finite" },
        { SwiftKv8B.Replace("\"high_freq_factor\": 4.0", "\"high_freq_factor\": 1e999"), "rope_scaling needs 0 < low_freq_factor < high_freq_factor" },
        { With(SwiftKv8B, o => o["hidden_act"] = "gelu"), "hidden_act 'gelu' is not supported" },
        { With(SwiftKv8B, o => o["head_dim"] = 2048), "head_dim (2048) is larger than 1024" },
        { With(SwiftKv8B, o => { o["num_attention_heads"] = 65536; o["head_dim"] = 1024; }), "num_attention_heads x head_dim (67108864)" },
        { With(SwiftKv8B, o => o["eos_token_id"] = new JsonArray(128001, -1)), "eos_token_id (-1) must be >= 0" },
        { With(SwiftKv8B, o => o["bos_token_id"] = -5), "bos_token_id (-5) must be >= 0" },
        { With(SwiftKv8B, o => o["torch_dtype"] = "int4"), "torch_dtype 'int4' is not supported" },
        { With(SwiftKv8B, o => { o.Remove("rope_scaling"); o["rope_parameters"] = new JsonObject { ["rope_type"] = "yarn", ["rope_theta"] = 1e6 }; }),
            "rope_parameters.rope_type 'yarn' is not supported" },
        { With(SwiftKv8B, o => { o.Remove("rope_scaling"); o["rope_parameters"] = new JsonObject { ["rope_type"] = "default", ["rope_theta"] = 1e6 }; }),
            "rope_theta (500000) and rope_parameters.rope_theta (1000000) disagree" },
        { With(SwiftKv8B, o => o["rope_parameters"] = new JsonObject { ["rope_type"] = "default", ["rope_theta"] = 500000 }),
            "both rope_scaling and rope_parameters" },
        { "{\"hidden_size\": 64, \"vocab_size\": 10, \"hidden_size\": 128}", "a key appears twice" },
        { "[1, 2]", "top level must be a JSON object" },
        { "{\"hidden_size\": ", "not valid JSON" },
    };

    /// <summary>
    /// SwiftKV fields as Snowflake's LlamaSwiftKVConfig reads them: swiftkv is false unless set (model_type alone does not
    /// turn it on), num_key_value_layers absent / null / 0 means every layer (plain Llama), key_value_group_size absent /
    /// null / 0 means 1.
    /// </summary>
    [Fact]
    public void Parse_SwiftKvDefaults_FollowSnowflakesConfig()
    {
        var noFlag = LlamaConfig.Parse(With(SwiftKv8B, o => o.Remove("swiftkv")));
        Assert.False(noFlag.SwiftKv);
        Assert.Equal(0, noFlag.NumKeyValueLayers);
        Assert.False(LlamaConfig.Parse(With(SwiftKv8B, o => o["swiftkv"] = null)).SwiftKv);
        foreach (var allLayers in new Action<JsonObject>[] { o => o.Remove("num_key_value_layers"), o => o["num_key_value_layers"] = null,
                     o => o["num_key_value_layers"] = 0, o => o["num_key_value_layers"] = 32 })
        {
            var c = LlamaConfig.Parse(With(SwiftKv8B, allLayers));
            Assert.False(c.SwiftKv);
            Assert.Equal(32, c.NumKvCaches(swiftKvEnabled: true));   // runs as the plain Llama it is
        }
        foreach (var one in new Action<JsonObject>[] { o => o.Remove("key_value_group_size"), o => o["key_value_group_size"] = null, o => o["key_value_group_size"] = 0 })
            Assert.Equal(1, LlamaConfig.Parse(With(SwiftKv8B, one)).KeyValueGroupSize);
        Assert.Equal(2048, LlamaConfig.Parse(With(SwiftKv8B, o => o.Remove("max_position_embeddings"))).MaxPositionEmbeddings);   // transformers' default
    }

    /// <summary>
    /// transformers 5 writes the rotary settings as one rope_parameters object; both layouts of the same model must give
    /// the same facts (a config re-saved by transformers 5 once parsed with theta 10000 and no llama3 scaling).
    /// </summary>
    [Fact]
    public void Parse_RopeParameters_EqualsRopeThetaAndRopeScaling()
    {
        var v5 = With(SwiftKv8B, o =>
        {
            o.Remove("rope_theta");
            o.Remove("rope_scaling");
            o["rope_parameters"] = new JsonObject
            {
                ["rope_type"] = "llama3", ["rope_theta"] = 500000.0, ["factor"] = 8.0, ["low_freq_factor"] = 1.0,
                ["high_freq_factor"] = 4.0, ["original_max_position_embeddings"] = 8192,
            };
        });
        var classic = LlamaConfig.Parse(SwiftKv8B);
        Assert.Equal(classic, LlamaConfig.Parse(v5) with { EosTokenIds = classic.EosTokenIds });   // the list compares by reference
        var c = LlamaConfig.Parse(v5);
        Assert.Equal(500000, c.RopeTheta);
        Assert.Equal(new Llama3RopeScaling(8, 1, 4, 8192), c.RopeScaling);
        var plain = LlamaConfig.Parse(With(SwiftKv8B, o =>
        {
            o.Remove("rope_theta");
            o.Remove("rope_scaling");
            o["rope_parameters"] = new JsonObject { ["rope_type"] = "default", ["rope_theta"] = 250000.0 };
        }));
        Assert.Equal(250000, plain.RopeTheta);
        Assert.Null(plain.RopeScaling);
    }

    /// <summary>
    /// Configs transformers runs as plain Llama that were refused (found by a review helper): rope_scaling of type
    /// "default" (no scaling), rope_parameters without its own rope_theta (filled from the top-level one or the default),
    /// hidden_act "swish" (SiLU under another name).
    /// </summary>
    [Fact]
    public void Parse_SpellingsTransformersAccepts_ReadAsTheSameModel()
    {
        var defaultScaling = LlamaConfig.Parse(With(SwiftKv8B, o => o["rope_scaling"] = new JsonObject { ["rope_type"] = "default" }));
        Assert.Null(defaultScaling.RopeScaling);
        Assert.Equal(500000, defaultScaling.RopeTheta);
        Assert.Null(LlamaConfig.Parse(With(SwiftKv8B, o => o["rope_scaling"] = new JsonObject { ["type"] = "default" })).RopeScaling);

        var outerTheta = LlamaConfig.Parse(With(SwiftKv8B, o =>
        {
            o.Remove("rope_scaling");
            o["rope_parameters"] = new JsonObject
            {
                ["rope_type"] = "llama3", ["factor"] = 8.0, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 4.0,
                ["original_max_position_embeddings"] = 8192,
            };
        }));
        Assert.Equal(500000, outerTheta.RopeTheta);
        Assert.Equal(new Llama3RopeScaling(8, 1, 4, 8192), outerTheta.RopeScaling);
        var noTheta = LlamaConfig.Parse(With(SwiftKv8B, o =>
        {
            o.Remove("rope_scaling");
            o.Remove("rope_theta");
            o["rope_parameters"] = new JsonObject { ["rope_type"] = "default" };
        }));
        Assert.Equal(10000, noTheta.RopeTheta);

        var swish = LlamaConfig.Parse(With(SwiftKv8B, o => o["hidden_act"] = "swish"));
        Assert.Equal(LlamaConfig.Parse(SwiftKv8B) with { EosTokenIds = swish.EosTokenIds }, swish);
    }

    [Theory]
    [MemberData(nameof(BadConfigs))]
    public void Parse_BadConfig_NamesTheProblem(string json, string expected)
    {
        var e = Assert.Throws<InvalidModelException>(() => LlamaConfig.Parse(json));
        Assert.Contains(expected, e.Message);
    }

    /// <summary>A directory named config.json is named as one, not reported as a missing file.</summary>
    [Fact]
    public void Load_ConfigJsonIsADirectory_SaysSo()
    {
        string dir = Directory.CreateTempSubdirectory("swiftkv-config-dir-").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(dir, "config.json"));
            var e = Assert.Throws<InvalidModelException>(() => LlamaConfig.Load(dir));
            Assert.Contains($"{Path.Combine(dir, "config.json")} is a directory, not a file", e.Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Load_MissingFile_NamesThePath()
    {
        string dir = Path.Combine(Path.GetTempPath(), "no-config-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            var e = Assert.Throws<InvalidModelException>(() => LlamaConfig.Load(dir));
            Assert.Contains(Path.Combine(dir, "config.json"), e.Message);
        }
        finally
        {
            Directory.Delete(dir);
        }
    }
}
