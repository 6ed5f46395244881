// The model facts of a Llama / SwiftKV checkpoint, read from its Hugging Face config.json.
// NOTE: runtime choices (backend, SwiftKV on/off at run time, context budget) live elsewhere
// (llama.cpp keeps hparams and cparams apart for the same reason): this type only says what the
// checkpoint *is*.
using System.Text.Json;
using System.Text.Json.Nodes;

namespace SwiftKV.Model;

/// <summary>Llama 3 "llama3" rope_scaling block (Llama 3.1 / 3.2 / 3.3).</summary>
public sealed record Llama3RopeScaling(
    double Factor,
    double LowFreqFactor,
    double HighFreqFactor,
    int OriginalMaxPositionEmbeddings);

/// <summary>The architecture of a Llama 3.x or <c>llama_swiftkv</c> checkpoint (config.json).</summary>
public sealed record LlamaConfig
{
    public string ModelType { get; init; } = "llama";
    public int HiddenSize { get; init; }
    public int IntermediateSize { get; init; }
    public int NumHiddenLayers { get; init; }
    public int NumAttentionHeads { get; init; }
    public int NumKeyValueHeads { get; init; }
    public int HeadDim { get; init; }
    public int VocabSize { get; init; }
    public int MaxPositionEmbeddings { get; init; } = 131072;
    public double RmsNormEps { get; init; } = 1e-5;
    public double RopeTheta { get; init; } = 500000;
    public Llama3RopeScaling? RopeScaling { get; init; }
    public bool TieWordEmbeddings { get; init; }
    public bool AttentionBias { get; init; }
    public bool MlpBias { get; init; }
    public int? BosTokenId { get; init; }
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    /// <summary>torch_dtype as written in config.json ("bfloat16", "float16", "float32").</summary>
    public string TorchDtype { get; init; } = "bfloat16";

    /// <summary>The fp8 weight format (quantization_config), or null for an unquantized checkpoint.</summary>
    public WeightQuantization? Quantization { get; init; }

    /// <summary>True when the checkpoint carries SwiftKV tensors (config "swiftkv": true).</summary>
    public bool SwiftKv { get; init; }
    /// <summary>l: layers 0..l-1 are full layers; later layers take K/V from norm_swiftkv(x_l).</summary>
    public int NumKeyValueLayers { get; init; }
    /// <summary>g: AcrossKV group size (1 = off).</summary>
    public int KeyValueGroupSize { get; init; } = 1;

    public int QueryDim => NumAttentionHeads * HeadDim;
    public int KeyValueDim => NumKeyValueHeads * HeadDim;

    /// <summary>True when layer <paramref name="layer"/> takes its K/V from norm_swiftkv(x_l) (SwiftKV on).</summary>
    public bool IsSwiftKvLayer(int layer) => SwiftKv && layer >= NumKeyValueLayers;

    /// <summary>True when a SwiftKV layer owns k/v_proj_swiftkv and a KV cache (first layer of its AcrossKV group).</summary>
    public bool IsKvGroupLeader(int layer) =>
        IsSwiftKvLayer(layer) && (layer - NumKeyValueLayers) % KeyValueGroupSize == 0;

    /// <summary>
    /// The index of the KV cache layer <paramref name="layer"/> reads, with SwiftKV on or off.
    /// With AcrossKV, all layers of a group share their leader's cache.
    /// </summary>
    public int KvCacheIndex(int layer, bool swiftKvEnabled)
    {
        if (!swiftKvEnabled || !IsSwiftKvLayer(layer)) return layer;
        return NumKeyValueLayers + (layer - NumKeyValueLayers) / KeyValueGroupSize;
    }

    /// <summary>Number of distinct KV caches the model keeps per sequence.</summary>
    public int NumKvCaches(bool swiftKvEnabled) =>
        swiftKvEnabled && SwiftKv
            ? NumKeyValueLayers + (NumHiddenLayers - NumKeyValueLayers) / KeyValueGroupSize
            : NumHiddenLayers;

    /// <summary>Checks the invariants every backend relies on; throws <see cref="InvalidModelException"/> naming the field.</summary>
    public LlamaConfig Validate()
    {
        Positive(HiddenSize, "hidden_size");
        Positive(IntermediateSize, "intermediate_size");
        Positive(NumHiddenLayers, "num_hidden_layers");
        Positive(NumAttentionHeads, "num_attention_heads");
        Positive(NumKeyValueHeads, "num_key_value_heads");
        Positive(HeadDim, "head_dim");
        Positive(VocabSize, "vocab_size");
        Positive(MaxPositionEmbeddings, "max_position_embeddings");
        if (NumAttentionHeads % NumKeyValueHeads != 0)
            throw new InvalidModelException($"config.json: num_attention_heads ({NumAttentionHeads}) must be a multiple of num_key_value_heads ({NumKeyValueHeads}).");
        if (HeadDim % 2 != 0)
            throw new InvalidModelException($"config.json: head_dim ({HeadDim}) must be even for rotary embeddings.");
        // Bounds no Llama comes near (head_dim 64..256), checked so a corrupt config fails here, not as an overflowed
        // shape or a stack overflow in a backend.
        if (HeadDim > MaxHeadDim)
            throw new InvalidModelException($"config.json: head_dim ({HeadDim}) is larger than {MaxHeadDim}.");
        if ((long)NumAttentionHeads * HeadDim > MaxRowWidth || (long)NumKeyValueHeads * HeadDim > MaxRowWidth)
            throw new InvalidModelException($"config.json: num_attention_heads x head_dim ({(long)NumAttentionHeads * HeadDim}) must be at most {MaxRowWidth}.");
        if (HiddenSize > MaxRowWidth || IntermediateSize > MaxRowWidth)
            throw new InvalidModelException($"config.json: hidden_size ({HiddenSize}) and intermediate_size ({IntermediateSize}) must be at most {MaxRowWidth}.");
        if (VocabSize > MaxVocabSize)
            throw new InvalidModelException($"config.json: vocab_size ({VocabSize}) must be at most {MaxVocabSize}.");
        if (NumHiddenLayers > MaxLayers)
            throw new InvalidModelException($"config.json: num_hidden_layers ({NumHiddenLayers}) must be at most {MaxLayers} (the largest Llama has 126).");
        // Ids past vocab_size are allowed: small test models keep Llama 3's special-token ids with a short vocabulary
        // (such an id is never generated, so it never stops anything); a negative id is a broken config.
        if (BosTokenId is < 0)
            throw new InvalidModelException($"config.json: bos_token_id ({BosTokenId}) must be >= 0.");
        foreach (int eos in EosTokenIds)
            if (eos < 0) throw new InvalidModelException($"config.json: eos_token_id ({eos}) must be >= 0.");
        if (TorchDtype is not ("bfloat16" or "float16" or "float32"))
            throw new InvalidModelException($"config.json: torch_dtype '{TorchDtype}' is not supported (bfloat16, float16 or float32).");
        // Finite too: JSON's 1e999 reads as infinity, and an infinite eps or theta would zero every activation or
        // every rotation without an error.
        if (!(RmsNormEps > 0) || !double.IsFinite(RmsNormEps)) throw new InvalidModelException($"config.json: rms_norm_eps must be finite and > 0 (got {RmsNormEps}).");
        if (!(RopeTheta > 0) || !double.IsFinite(RopeTheta)) throw new InvalidModelException($"config.json: rope_theta must be finite and > 0 (got {RopeTheta}).");
        if (RopeScaling is { } rs)
        {
            if (!(rs.Factor >= 1) || !double.IsFinite(rs.Factor)) throw new InvalidModelException($"config.json: rope_scaling.factor must be finite and >= 1 (got {rs.Factor}).");
            if (!(rs.LowFreqFactor > 0) || !(rs.HighFreqFactor > rs.LowFreqFactor) || !double.IsFinite(rs.HighFreqFactor))
                throw new InvalidModelException($"config.json: rope_scaling needs 0 < low_freq_factor < high_freq_factor (got {rs.LowFreqFactor}, {rs.HighFreqFactor}).");
            Positive(rs.OriginalMaxPositionEmbeddings, "rope_scaling.original_max_position_embeddings");
        }
        if (SwiftKv)
        {
            if (NumKeyValueLayers < 1 || NumKeyValueLayers >= NumHiddenLayers)
                throw new InvalidModelException($"config.json: num_key_value_layers must be in 1..{NumHiddenLayers - 1} (num_hidden_layers - 1), got {NumKeyValueLayers}.");
            if (KeyValueGroupSize < 1)
                throw new InvalidModelException($"config.json: key_value_group_size must be >= 1, got {KeyValueGroupSize}.");
            if ((NumHiddenLayers - NumKeyValueLayers) % KeyValueGroupSize != 0)
                throw new InvalidModelException($"config.json: key_value_group_size ({KeyValueGroupSize}) must divide num_hidden_layers - num_key_value_layers ({NumHiddenLayers - NumKeyValueLayers}).");
        }
        return this;
    }

    /// <summary>Largest head_dim a config may declare (Llama 3.x: 64 or 128).</summary>
    public const int MaxHeadDim = 1024;
    /// <summary>Largest hidden, intermediate or heads x head_dim width (the 405B model's intermediate size is 53248).</summary>
    public const int MaxRowWidth = 1 << 20;

    /// <summary>Largest num_hidden_layers accepted (Llama 3.1 405B has 126): every layer names ~10 tensors, so a corrupt
    /// count must fail here, not as a list of millions of tensor names that grows until memory runs out.</summary>
    public const int MaxLayers = 1024;

    /// <summary>Largest vocab_size accepted, and one past the largest token id a tokenizer may hold (Llama 3 has 128,256):
    /// ids and sizes size per-id tables, so a corrupt one must fail as an error, not as an allocation of gigabytes.</summary>
    public const int MaxVocabSize = 1 << 24;

    static void Positive(int value, string key)
    {
        if (value <= 0) throw new InvalidModelException($"config.json: {key} must be a positive integer, got {value}.");
    }

    /// <summary>Reads and validates <c>config.json</c> in a checkpoint directory (or the file itself).</summary>
    public static LlamaConfig Load(string path)
    {
        string file = Directory.Exists(path) ? Path.Combine(path, "config.json") : path;
        if (!Tokenization.CheckpointJson.FileExists(file)) throw new InvalidModelException($"config.json not found: {file}");
        return Parse(Tokenization.CheckpointJson.ReadUtf8(file), file);
    }

    /// <summary>Parses config.json text. <paramref name="source"/> names the file in error messages.</summary>
    public static LlamaConfig Parse(string json, string source = "config.json") => Parse(System.Text.Encoding.UTF8.GetBytes(json), source);

    static LlamaConfig Parse(ReadOnlyMemory<byte> utf8, string source)
    {
        JsonObject root;
        Tokenization.CheckpointJson.RequireUtf8(utf8.Span, source);
        try
        {
            using (var doc = JsonDocument.Parse(utf8))
                Tokenization.CheckpointJson.RequireText(doc.RootElement, utf8.Span, source);
            root = JsonNode.Parse(utf8.Span) as JsonObject
                ?? throw new InvalidModelException($"{source}: the top level must be a JSON object.");
            RejectDuplicateKeys(root, source);
        }
        catch (JsonException e)
        {
            throw new InvalidModelException($"{source}: not valid JSON ({e.Message}).", e);
        }
        var r = new ConfigReader(root, source);
        string modelType = r.String("model_type", required: false) ?? "llama";
        if (modelType is not ("llama" or "llama_swiftkv"))
            throw new InvalidModelException($"{source}: model_type '{modelType}' is not supported (expected 'llama' or 'llama_swiftkv').");
        int hidden = r.Int("hidden_size");
        int heads = r.Int("num_attention_heads");
        string act = r.String("hidden_act", required: false) ?? "silu";
        if (act is not ("silu" or "swish"))   // transformers' ACT2FN maps both to SiLU
            throw new InvalidModelException($"{source}: hidden_act '{act}' is not supported (Llama uses 'silu', also named 'swish').");
        Llama3RopeScaling? scaling = null;
        double? ropeTheta = null;
        // transformers 5 writes the rotary settings as one rope_parameters object (rope_type, rope_theta and the
        // scaling fields together) instead of rope_theta + rope_scaling.
        if (root["rope_parameters"] is JsonObject rpo)
        {
            var p = new ConfigReader(rpo, source + " rope_parameters");
            string type = p.String("rope_type", required: false) ?? p.String("type", required: false) ?? "default";
            // transformers fills a missing rope_parameters.rope_theta from the top-level rope_theta (or its default).
            ropeTheta = rpo["rope_theta"] is null ? null : p.Double("rope_theta");
            if (type == "llama3")
                scaling = new Llama3RopeScaling(
                    p.Double("factor"), p.Double("low_freq_factor"), p.Double("high_freq_factor"),
                    p.Int("original_max_position_embeddings"));
            else if (type != "default")
                throw new InvalidModelException($"{source}: rope_parameters.rope_type '{type}' is not supported (only 'default' and 'llama3').");
            if (ropeTheta is not null && root["rope_theta"] is { } top && top.GetValueKind() == JsonValueKind.Number && r.Double("rope_theta") != ropeTheta)
                throw new InvalidModelException($"{source}: rope_theta ({r.Double("rope_theta")}) and rope_parameters.rope_theta ({ropeTheta}) disagree.");
            if (root["rope_scaling"] is JsonObject)
                throw new InvalidModelException($"{source}: both rope_scaling and rope_parameters are given; keep one.");
        }
        else if (root["rope_parameters"] is { } rpn && rpn.GetValueKind() != JsonValueKind.Null)
            throw new InvalidModelException($"{source}: rope_parameters must be an object or null.");
        else if (root["rope_scaling"] is JsonObject rso)
        {
            var s = new ConfigReader(rso, source + " rope_scaling");
            string type = s.String("rope_type", required: false) ?? s.String("type", required: false)
                ?? throw new InvalidModelException($"{source}: rope_scaling needs 'rope_type'.");
            if (type is not ("llama3" or "default"))
                throw new InvalidModelException($"{source}: rope_scaling type '{type}' is not supported (only 'llama3', and 'default': no scaling).");
            if (type == "llama3")
                scaling = new Llama3RopeScaling(
                    s.Double("factor"), s.Double("low_freq_factor"), s.Double("high_freq_factor"),
                    s.Int("original_max_position_embeddings"));
        }
        else if (root["rope_scaling"] is not null && root["rope_scaling"]!.GetValueKind() != JsonValueKind.Null)
        {
            throw new InvalidModelException($"{source}: rope_scaling must be an object or null.");
        }
        // SwiftKV fields as Snowflake's LlamaSwiftKVConfig reads them (the checkpoint wins): swiftkv defaults to false
        // (also for model_type llama_swiftkv), num_key_value_layers to num_hidden_layers when absent, null or 0, and
        // key_value_group_size to 1 when absent, null or 0. With every layer a key-value layer the model is plain Llama.
        int layers = r.Int("num_hidden_layers");
        if (layers <= 0) throw new InvalidModelException($"{source}: num_hidden_layers must be a positive integer, got {layers}.");
        int kvLayers = r.OptionalInt("num_key_value_layers") is int n && n != 0 ? n : layers;
        bool swiftKvFlag = r.Bool("swiftkv", false);
        if (swiftKvFlag && (kvLayers < 1 || kvLayers > layers))
            throw new InvalidModelException($"{source}: num_key_value_layers must be in 1..{layers} (num_hidden_layers; 0 or absent means all of them), got {kvLayers}.");
        bool swiftKv = swiftKvFlag && kvLayers < layers;
        int groupSize = r.OptionalInt("key_value_group_size") is int g && g != 0 ? g : 1;
        WeightQuantization? quantization = root["quantization_config"] switch
        {
            JsonObject q => WeightQuantization.Parse(q, source),
            null => null,
            var q when q.GetValueKind() == JsonValueKind.Null => null,
            var q => throw new InvalidModelException($"{source}: quantization_config must be an object or null, got {q.GetValueKind()}."),
        };
        var cfg = new LlamaConfig
        {
            ModelType = modelType,
            HiddenSize = hidden,
            IntermediateSize = r.Int("intermediate_size"),
            NumHiddenLayers = layers,
            NumAttentionHeads = heads,
            NumKeyValueHeads = r.Int("num_key_value_heads", heads),
            HeadDim = r.Int("head_dim", heads > 0 ? hidden / heads : 0),
            VocabSize = r.Int("vocab_size"),
            MaxPositionEmbeddings = r.Int("max_position_embeddings", 2048),   // transformers' LlamaConfig default
            RmsNormEps = r.Double("rms_norm_eps", 1e-6),
            RopeTheta = ropeTheta ?? r.Double("rope_theta", 10000),
            RopeScaling = scaling,
            TieWordEmbeddings = r.Bool("tie_word_embeddings", false),
            AttentionBias = r.Bool("attention_bias", false),
            MlpBias = r.Bool("mlp_bias", false),
            BosTokenId = r.OptionalInt("bos_token_id"),
            EosTokenIds = r.IntOrIntArray("eos_token_id"),
            TorchDtype = r.String("torch_dtype", required: false) ?? r.String("dtype", required: false) ?? "bfloat16",
            SwiftKv = swiftKv,
            NumKeyValueLayers = swiftKv ? kvLayers : 0,
            KeyValueGroupSize = swiftKv ? groupSize : 1,
            Quantization = quantization,
        };
        if (cfg.MlpBias) throw new InvalidModelException($"{source}: mlp_bias = true is not supported.");
        return cfg.Validate();
    }

    /// <summary>
    /// System.Text.Json keeps the last of duplicate keys only until a JsonObject is first read, then throws an
    /// ArgumentException that names neither the file nor the problem; walk the tree once here instead.
    /// </summary>
    static void RejectDuplicateKeys(JsonNode node, string source)
    {
        try
        {
            switch (node)
            {
                case JsonObject o:
                    foreach (var (_, v) in o) if (v is not null) RejectDuplicateKeys(v, source);
                    break;
                case JsonArray a:
                    foreach (var v in a) if (v is not null) RejectDuplicateKeys(v, source);
                    break;
            }
        }
        catch (ArgumentException e)
        {
            throw new InvalidModelException($"{source}: a key appears twice in the same object ({e.Message}).", e);
        }
    }

    /// <summary>Writes config.json the way Hugging Face transformers does, with the SwiftKV fields when present.</summary>
    public string ToJson()
    {
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray(SwiftKv ? "LlamaSwiftKVForCausalLM" : "LlamaForCausalLM"),
            ["model_type"] = SwiftKv ? "llama_swiftkv" : "llama",
            ["attention_bias"] = AttentionBias,
            ["attention_dropout"] = 0.0,
            ["bos_token_id"] = BosTokenId,
            ["eos_token_id"] = EosTokenIds.Count == 1 ? JsonValue.Create(EosTokenIds[0]) : new JsonArray(EosTokenIds.Select(i => (JsonNode)i).ToArray()),
            ["head_dim"] = HeadDim,
            ["hidden_act"] = "silu",
            ["hidden_size"] = HiddenSize,
            ["initializer_range"] = 0.02,
            ["intermediate_size"] = IntermediateSize,
            ["max_position_embeddings"] = MaxPositionEmbeddings,
            ["mlp_bias"] = false,
            ["num_attention_heads"] = NumAttentionHeads,
            ["num_hidden_layers"] = NumHiddenLayers,
            ["num_key_value_heads"] = NumKeyValueHeads,
            ["pretraining_tp"] = 1,
            ["rms_norm_eps"] = RmsNormEps,
            ["rope_scaling"] = RopeScaling is { } s ? new JsonObject
            {
                ["factor"] = s.Factor,
                ["high_freq_factor"] = s.HighFreqFactor,
                ["low_freq_factor"] = s.LowFreqFactor,
                ["original_max_position_embeddings"] = s.OriginalMaxPositionEmbeddings,
                ["rope_type"] = "llama3",
            } : null,
            ["rope_theta"] = RopeTheta,
            ["tie_word_embeddings"] = TieWordEmbeddings,
            ["torch_dtype"] = TorchDtype,
            ["use_cache"] = true,
            ["vocab_size"] = VocabSize,
        };
        if (SwiftKv)
        {
            o["swiftkv"] = true;
            o["num_key_value_layers"] = NumKeyValueLayers;
            o["key_value_group_size"] = KeyValueGroupSize;
        }
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>Typed access to config.json keys with errors that name the key and what was found.</summary>
    sealed class ConfigReader(JsonObject o, string source)
    {
        JsonNode Required(string key) =>
            o[key] is { } n && n.GetValueKind() != JsonValueKind.Null
                ? n
                : throw new InvalidModelException($"{source}: missing required key '{key}'.");

        public int Int(string key) => AsInt(Required(key), key);
        public int Int(string key, int fallback) => o[key] is { } n && n.GetValueKind() != JsonValueKind.Null ? AsInt(n, key) : fallback;
        public int? OptionalInt(string key) => o[key] is { } n && n.GetValueKind() != JsonValueKind.Null ? AsInt(n, key) : null;
        public double Double(string key) => AsDouble(Required(key), key);
        public double Double(string key, double fallback) => o[key] is { } n && n.GetValueKind() != JsonValueKind.Null ? AsDouble(n, key) : fallback;

        public bool Bool(string key, bool fallback)
        {
            if (o[key] is not { } n || n.GetValueKind() == JsonValueKind.Null) return fallback;
            return n.GetValueKind() switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                var k => throw new InvalidModelException($"{source}: '{key}' must be true or false, got {k}."),
            };
        }

        public string? String(string key, bool required)
        {
            if (o[key] is not { } n || n.GetValueKind() == JsonValueKind.Null)
                return required ? throw new InvalidModelException($"{source}: missing required key '{key}'.") : null;
            return n.GetValueKind() == JsonValueKind.String
                ? n.GetValue<string>()
                : throw new InvalidModelException($"{source}: '{key}' must be a string, got {n.GetValueKind()}.");
        }

        public IReadOnlyList<int> IntOrIntArray(string key)
        {
            if (o[key] is not { } n || n.GetValueKind() == JsonValueKind.Null) return [];
            if (n is JsonArray a) return a.Select(x => AsInt(x ?? throw new InvalidModelException($"{source}: '{key}' holds null."), key)).ToArray();
            return [AsInt(n, key)];
        }

        int AsInt(JsonNode n, string key)
        {
            if (n.GetValueKind() == JsonValueKind.Number && n is JsonValue v)
            {
                if (v.TryGetValue(out int i)) return i;
                if (v.TryGetValue(out double d) && Tokenization.CheckpointJson.IsInt32(d, out i)) return i;
            }
            throw new InvalidModelException($"{source}: '{key}' must be an integer, got {n.ToJsonString()}.");
        }

        double AsDouble(JsonNode n, string key) =>
            n.GetValueKind() == JsonValueKind.Number && n is JsonValue v && v.TryGetValue(out double d)
                ? d
                : throw new InvalidModelException($"{source}: '{key}' must be a number, got {n.ToJsonString()}.");
    }
}

/// <summary>A checkpoint, config or tokenizer that cannot be used; the message names the file and the problem.</summary>
public sealed class InvalidModelException : Exception
{
    public InvalidModelException(string message) : base(message) { }
    public InvalidModelException(string message, Exception inner) : base(message, inner) { }
}
