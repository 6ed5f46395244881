// Llama 3 tokenizer: tiktoken-style byte-level BPE (Microsoft.ML.Tokenizers' TiktokenTokenizer with the
// Llama 3 pre-tokenizer regex) plus the checkpoint's special tokens, BOS and stop tokens.
// Layout: one rank table (token bytes by id; for Llama 3, rank == id) that every source ends in:
// original/tokenizer.model, tokenizer.json, or the built-in demo (cl100k_base ranks + Llama 3 specials).
// Special tokens are NOT part of the BPE: Encode splits them out itself (only when asked), so user text
// containing "<|eot_id|>" stays plain text by default.
using System.Buffers;
using System.IO.Compression;
using System.Reflection;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace SwiftKV.Model.Tokenization;

/// <summary>A Llama 3 byte-level BPE tokenizer loaded from a checkpoint directory.</summary>
public sealed class LlamaTokenizer
{
    /// <summary>
    /// Llama 3's pre-tokenizer regex (Meta's tokenizer.py and the Split step of tokenizer.json), for code-point
    /// regex engines. Encoding uses an equivalent .NET form (see Llama3PreTokenizerRegex).
    /// </summary>
    public const string Llama3Pattern =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    const int ModelMaxLength = 131072;
    static readonly Lazy<LlamaTokenizer> s_demo = new(BuildDemo);

    readonly byte[]?[] _ranks;        // BPE token bytes by id (= rank); null where the id is special or unused
    readonly byte[]?[] _tokenBytes;   // every token's bytes by id, specials as their UTF-8 text
    readonly Dictionary<string, int> _specialTokens;
    readonly Regex? _specialSplitter;
    readonly TiktokenTokenizer _bpe;
    readonly Regex _pieceRegex;
    Dictionary<string, int>? _rankOf;   // Latin-1 key of a token's bytes -> rank, for the long-piece merge
    readonly Lazy<List<(byte[] Left, byte[] Right)>> _merges;

    LlamaTokenizer(byte[]?[] ranks, Dictionary<string, int> specialTokens, int? bos, int? eos, IReadOnlyList<int> stops, int minSize = 0)
    {
        _ranks = ranks;
        _specialTokens = specialTokens;
        int size = Math.Max(minSize, Math.Max(ranks.Length, specialTokens.Count == 0 ? 0 : specialTokens.Values.Max() + 1));
        _tokenBytes = new byte[]?[size];
        Array.Copy(ranks, _tokenBytes, ranks.Length);
        foreach (var (text, id) in specialTokens) _tokenBytes[id] = Encoding.UTF8.GetBytes(text);
        VocabularySize = size;
        BosTokenId = bos;
        EosTokenId = eos;
        StopTokenIds = stops;

        if (specialTokens.Count > 0)
        {
            // Longest first so a special that is a prefix of another never wins.
            string alternation = string.Join("|", specialTokens.Keys.OrderByDescending(k => k.Length).Select(Regex.Escape));
            _specialSplitter = new Regex(alternation, RegexOptions.CultureInvariant);
        }

        using var stream = new MemoryStream();
        TiktokenFile.Write(stream, ranks);
        stream.Position = 0;
        _pieceRegex = Llama3PreTokenizerRegex.Create();
        var preTokenizer = new RegexPreTokenizer(_pieceRegex, null);
        _bpe = TiktokenTokenizer.Create(stream, preTokenizer, normalizer: null, specialTokens: null, cacheSize: 8192);
        _merges = new(() => BpeMergeRecovery.Recover(_ranks));
    }

    /// <summary>
    /// Largest token id any of the readers (tokenizer.json, tiktoken files, special tokens) accepts: Llama 3 uses
    /// 128,255, and a corrupt id must not size a table of gigabytes.
    /// </summary>
    internal const int MaxTokenId = LlamaConfig.MaxVocabSize - 1;

    /// <summary>Largest token id + 1 (ids in between that no token uses decode to nothing).</summary>
    public int VocabularySize { get; }

    /// <summary>
    /// This tokenizer with its id space widened to <paramref name="size"/>: a model whose vocab_size is padded past its
    /// tokenizer (common after fine-tuning) may sample those ids; like the unused ids inside, they decode to nothing
    /// (Hugging Face's decode skips them too). Returns this tokenizer when it is already as wide.
    /// </summary>
    public LlamaTokenizer WithVocabularySize(int size) =>
        size <= VocabularySize ? this : new LlamaTokenizer(_ranks, _specialTokens, BosTokenId, EosTokenId, StopTokenIds, size);

    /// <summary>Beginning-of-text token (tokenizer_config.json bos_token), if any. Encode never adds it.</summary>
    public int? BosTokenId { get; }

    /// <summary>The end-of-sequence token named by tokenizer_config.json eos_token, if any.</summary>
    public int? EosTokenId { get; }

    /// <summary>Tokens that end generation: generation_config + config eos_token_id, eos_token, eot/eom/end_of_text.</summary>
    public IReadOnlyList<int> StopTokenIds { get; }

    /// <summary>Special token text -> id.</summary>
    public IReadOnlyDictionary<string, int> SpecialTokens => _specialTokens;

    public int? GetSpecialTokenId(string text) => _specialTokens.TryGetValue(text, out int id) ? id : null;

    /// <summary>
    /// Encodes <paramref name="text"/> (no BOS added). Special-token text is matched only when
    /// <paramref name="parseSpecialTokens"/> is true; otherwise it is encoded as ordinary text.
    /// NOTE: Hugging Face tokenizers always match added tokens in text; this default is deliberately safer
    /// for user input. With true, ids equal HF's encode(text, add_special_tokens=False).
    /// </summary>
    public IReadOnlyList<int> Encode(string text, bool parseSpecialTokens = false)
    {
        var ids = new List<int>();
        TryEncodeInto(text, ids, int.MaxValue, parseSpecialTokens);
        return ids;
    }

    /// <summary>
    /// Appends the ids <see cref="Encode"/> gives for <paramref name="text"/> to <paramref name="ids"/>, but returns
    /// false as soon as it is known that <paramref name="ids"/> would end with more than <paramref name="maxCount"/>
    /// ids (the rest of the text is then not encoded, and <paramref name="ids"/> holds a prefix of the ids, possibly
    /// no more than <paramref name="maxCount"/>), and observes <paramref name="cancellationToken"/> as it goes. A prompt
    /// far longer than the context is so refused in time proportional to the context, not to the text.
    /// </summary>
    public bool TryEncodeInto(string text, List<int> ids, int maxCount, bool parseSpecialTokens = false, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(ids);
        ArgumentOutOfRangeException.ThrowIfNegative(maxCount);
        try
        {
            return EncodeCore(text, ids, new Budget(maxCount, cancellationToken), parseSpecialTokens);
        }
        catch (KeyNotFoundException e)
        {
            // A vocabulary without all 256 single-byte tokens cannot encode every text.
            throw new InvalidOperationException("this tokenizer cannot encode the text: its vocabulary lacks a single-byte token the text needs (not a complete byte-level BPE).", e);
        }
    }

    /// <summary>How many ids an encoding may reach before it stops, and the token that cancels it.</summary>
    internal readonly record struct Budget(int MaxCount, CancellationToken Cancellation)
    {
        public static Budget None => new(int.MaxValue, default);

        /// <summary>False once <paramref name="ids"/> is over budget; throws when cancelled.</summary>
        public bool Allows(List<int> ids)
        {
            Cancellation.ThrowIfCancellationRequested();
            return ids.Count <= MaxCount;
        }
    }

    bool EncodeCore(string text, List<int> ids, Budget budget, bool parseSpecialTokens)
    {
        text = ReplaceLoneSurrogates(text);
        if (!parseSpecialTokens || _specialSplitter is null) return EncodeOrdinary(text, ids, budget);
        int pos = 0;
        foreach (Match m in _specialSplitter.Matches(text))
        {
            if (m.Index > pos && !EncodeOrdinary(text.Substring(pos, m.Index - pos), ids, budget)) return false;
            ids.Add(_specialTokens[m.Value]);
            pos = m.Index + m.Length;
            if (!budget.Allows(ids)) return false;
        }
        return pos >= text.Length || EncodeOrdinary(text[pos..], ids, budget);
    }

    /// <summary>The library's encoding of ordinary text alone (tests compare the long-piece path with it).</summary>
    internal IReadOnlyList<int> EncodeWithLibraryOnly(string text) => _bpe.EncodeToIds(text);

    /// <summary>Pieces longer than this (in chars) take <c>MergeLongPiece</c> instead of the library's merge.</summary>
    internal const int LongPiece = 256;

    /// <summary>Runs of short pieces go to the library in spans of about this many chars, cut between two pieces.</summary>
    internal const int RunChars = 4096;

    /// <summary>
    /// Ordinary text (no special tokens). The library merges a piece in time quadratic in its length (256K of one
    /// letter: ~18 s; 1 MB: ~5 min), so text that may hold a long piece is split into the same Llama 3 pieces here:
    /// runs of short pieces still go to the library, each long piece to the heap-based merge, which gives the same
    /// tokens (lowest rank first, leftmost on ties) in n log n. Runs are also cut every <paramref name="runChars"/>
    /// chars to check the budget. Returns false once the text is known to need more ids than the budget.
    /// </summary>
    /// <remarks>
    /// The library splits each span it is given again, so a span may end only after a piece whose last char is not
    /// whitespace: Llama 3's <c>\s+(?!\S)</c> looks past a whitespace run, and a span ending inside whitespace would
    /// join what the whole text splits ("  1": 220 220 16, but "  " alone is 256). The pieces after the last such
    /// boundary go to the library one at a time (a piece alone splits as itself).
    /// </remarks>
    bool EncodeOrdinary(string text, List<int> ids, Budget budget, int runChars = RunChars)
    {
        if (text.Length <= LongPiece)
        {
            ids.AddRange(_bpe.EncodeToIds(text));
            return budget.Allows(ids);
        }
        int runStart = 0, spanEnd = 0;      // [runStart, spanEnd) may go to the library as one span
        var tail = new List<int>();          // starts of the pieces from spanEnd on, not encoded yet
        void Flush(int end)
        {
            if (spanEnd > runStart) ids.AddRange(_bpe.EncodeToIds(text.AsSpan(runStart, spanEnd - runStart)));
            for (int i = 0; i < tail.Count; i++)
            {
                int pieceEnd = i + 1 < tail.Count ? tail[i + 1] : end;
                ids.AddRange(_bpe.EncodeToIds(text.AsSpan(tail[i], pieceEnd - tail[i])));
            }
            tail.Clear();
            runStart = spanEnd = end;
        }
        foreach (Match m in _pieceRegex.Matches(text))
        {
            if (m.Index > runStart && !char.IsWhiteSpace(text[m.Index - 1]))
            {
                spanEnd = m.Index;
                tail.Clear();
            }
            bool longPiece = m.Length > LongPiece;
            if (longPiece || m.Index - runStart >= runChars)
            {
                Flush(m.Index);
                if (!budget.Allows(ids)) return false;
            }
            if (!longPiece)
            {
                tail.Add(m.Index);
                continue;
            }
            if (!MergeLongPiece(Encoding.UTF8.GetBytes(m.Value), ids, budget)) return false;
            runStart = spanEnd = m.Index + m.Length;
        }
        // The end of the text ends the last span here as in the whole text.
        if (runStart < text.Length) ids.AddRange(_bpe.EncodeToIds(text.AsSpan(runStart)));
        return budget.Allows(ids);
    }

    /// <summary>The library's ids for <paramref name="text"/> with runs cut every <paramref name="runChars"/> chars (tests of the cuts).</summary>
    internal IReadOnlyList<int> EncodeWithRunChars(string text, int runChars)
    {
        var ids = new List<int>();
        EncodeOrdinary(ReplaceLoneSurrogates(text), ids, Budget.None, runChars);
        return ids;
    }

    /// <summary>
    /// Byte-pair merge of one piece with a heap: repeatedly join the adjacent pair whose joined bytes have the lowest
    /// rank (the leftmost of equal ranks), as tiktoken does, then emit each part's rank. Returns false without
    /// merging when the piece needs more ids than the budget has left (at least its length over the longest token's).
    /// </summary>
    internal bool MergeLongPiece(byte[] piece, List<int> ids) => MergeLongPiece(piece, ids, Budget.None);

    bool MergeLongPiece(byte[] piece, List<int> ids, Budget budget)
    {
        var rankOf = _rankOf ??= BuildRankIndex();
        int n = piece.Length;
        if ((n + LongestTokenBytes - 1) / LongestTokenBytes > (long)budget.MaxCount - ids.Count) return false;
        var next = new int[n];
        var prev = new int[n];
        var version = new int[n];
        var alive = new bool[n];
        for (int i = 0; i < n; i++) { next[i] = i + 1; prev[i] = i - 1; alive[i] = true; }
        string Key(int start, int end) => Encoding.Latin1.GetString(piece, start, end - start);
        int End(int i) => next[i] < n ? next[i] : n;
        var heap = new PriorityQueue<(int Part, int Version), (int Rank, int Start)>();
        void Push(int i)
        {
            if (i < 0 || next[i] >= n) return;
            if (rankOf.TryGetValue(Key(i, End(next[i])), out int rank)) heap.Enqueue((i, version[i]), (rank, i));
        }
        for (int i = 0; i + 1 < n; i++) Push(i);
        long pops = 0;
        while (heap.TryDequeue(out var e, out _))
        {
            if ((++pops & 0xFFFF) == 0) budget.Cancellation.ThrowIfCancellationRequested();
            int i = e.Part;
            if (!alive[i] || e.Version != version[i] || next[i] >= n) continue;
            int j = next[i];
            alive[j] = false;
            next[i] = next[j];
            if (next[i] < n) prev[next[i]] = i;
            version[i]++;
            Push(i);
            if (prev[i] >= 0) { version[prev[i]]++; Push(prev[i]); }
        }
        for (int i = 0; i < n; i = next[i])
            ids.Add(rankOf.TryGetValue(Key(i, End(i)), out int r) ? r
                : throw new KeyNotFoundException("no token for a byte of the piece"));
        return ids.Count <= budget.MaxCount;
    }

    /// <summary>Bytes of the longest ordinary token: a piece of n bytes needs at least n / this many ids.</summary>
    int LongestTokenBytes => _longestToken > 0 ? _longestToken : _longestToken = Math.Max(1, _ranks.Max(b => b?.Length ?? 0));
    int _longestToken;

    Dictionary<string, int> BuildRankIndex()
    {
        var d = new Dictionary<string, int>(_ranks.Length, StringComparer.Ordinal);
        for (int id = 0; id < _ranks.Length; id++)
            if (_ranks[id] is { } bytes) d[Encoding.Latin1.GetString(bytes)] = id;
        return d;
    }

    /// <summary>
    /// A lone UTF-16 surrogate has no UTF-8 form: the BPE would see its three raw (invalid) bytes and the model three
    /// garbage tokens. It becomes U+FFFD first, as a UTF-8 encoder writes it (Python's tokenizers refuse such text).
    /// </summary>
    static string ReplaceLoneSurrogates(string text)
    {
        int i = 0;
        for (; i < text.Length; i++)
        {
            if (!char.IsSurrogate(text[i])) continue;
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) { i++; continue; }
            break;
        }
        if (i >= text.Length) return text;   // the common case: no copy
        var sb = new StringBuilder(text.Length);
        for (int j = 0; j < text.Length; j++)
        {
            char c = text[j];
            if (char.IsHighSurrogate(c) && j + 1 < text.Length && char.IsLowSurrogate(text[j + 1])) { sb.Append(c).Append(text[++j]); continue; }
            sb.Append(char.IsSurrogate(c) ? '\uFFFD' : c);
        }
        return sb.ToString();
    }

    /// <summary>Decodes ids to text; bytes that are not valid UTF-8 become U+FFFD.</summary>
    public string Decode(IEnumerable<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var buffer = new ArrayBufferWriter<byte>();
        foreach (int id in ids) buffer.Write(GetTokenBytes(id));
        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    /// <summary>The bytes of one token (a special token's UTF-8 text; empty for an unused id).</summary>
    public ReadOnlySpan<byte> GetTokenBytes(int id)
    {
        if ((uint)id >= (uint)VocabularySize)
            throw new ArgumentOutOfRangeException(nameof(id), id, $"Token id must be in [0, {VocabularySize}).");
        return _tokenBytes[id];
    }

    /// <summary>
    /// Loads the tokenizer of a checkpoint directory: ranks from tokenizer.json when present (checked against
    /// original/tokenizer.model when that is present too), else from original/tokenizer.model; special tokens from tokenizer.json added_tokens and tokenizer_config.json
    /// added_tokens_decoder; BOS/EOS from tokenizer_config.json; stop tokens also from generation_config.json
    /// and config.json.
    /// </summary>
    public static LlamaTokenizer Load(string checkpointDir)
    {
        ArgumentException.ThrowIfNullOrEmpty(checkpointDir);
        if (!Directory.Exists(checkpointDir))
            throw new InvalidModelException($"Checkpoint directory not found: {checkpointDir}");
        if (!Exists(checkpointDir))
            throw new InvalidModelException($"No tokenizer in {checkpointDir}: expected original/tokenizer.model or tokenizer.json.");
        return LoadFiles(checkpointDir);
    }

    /// <summary>Whether <paramref name="checkpointDir"/> has a tokenizer to load (original/tokenizer.model or tokenizer.json).</summary>
    public static bool Exists(string checkpointDir) =>
        CheckpointJson.FileExists(Path.Combine(checkpointDir, "original", "tokenizer.model")) || CheckpointJson.FileExists(Path.Combine(checkpointDir, "tokenizer.json"));

    static LlamaTokenizer LoadFiles(string checkpointDir)
    {
        string modelPath = Path.Combine(checkpointDir, "original", "tokenizer.model");
        string jsonPath = Path.Combine(checkpointDir, "tokenizer.json");
        string configPath = Path.Combine(checkpointDir, "tokenizer_config.json");
        bool hasTiktoken = CheckpointJson.FileExists(modelPath);

        var tokenizerJson = CheckpointJson.TryRead(jsonPath);
        var tokenizerConfig = CheckpointJson.TryRead(configPath);
        var specials = ReadSpecialTokens(tokenizerJson, jsonPath, tokenizerConfig, configPath);
        // tokenizer.json is what Hugging Face encodes with, so its ranks are the ones the model was run with; Meta's
        // original/tokenizer.model, when both are present, must agree with it (a checkpoint whose two files disagree
        // would encode differently here than in transformers, silently).
        bool fromJson = tokenizerJson is not null;
        byte[]?[] ranks = fromJson
            ? HfTokenizerJson.ReadVocabulary(tokenizerJson!.Value, jsonPath, specials.ToDictionary(kv => kv.Value, kv => kv.Key))
            : TiktokenFile.Read(modelPath);
        string rankSource = fromJson ? jsonPath : modelPath;
        // NOTE: with only the raw tiktoken file, follow Meta's reference tokenizer: 256 specials after the ranks.
        if (specials.Count == 0) specials = Llama3SpecialTokens(ranks.Length);
        ranks = SeparateSpecials(ranks, specials, rankSource);
        CheckSingleBytes(ranks, rankSource, tiktoken: !fromJson);
        if (fromJson && hasTiktoken) CheckAgree(ranks, SeparateSpecials(TiktokenFile.Read(modelPath), specials, modelPath), jsonPath, modelPath);

        int vocabularySize = Math.Max(ranks.Length, specials.Values.Max() + 1);
        int? Resolve(string? text, string key)
        {
            if (text is null) return null;
            if (specials.TryGetValue(text, out int id)) return id;
            throw new InvalidModelException($"{configPath}: {key} '{text}' is not a special token of this tokenizer.");
        }
        int? bos = tokenizerConfig is { } tc ? Resolve(CheckpointJson.TokenText(tc, "bos_token", configPath), "bos_token") : null;
        int? eos = tokenizerConfig is { } tc2 ? Resolve(CheckpointJson.TokenText(tc2, "eos_token", configPath), "eos_token") : null;

        string generationPath = Path.Combine(checkpointDir, "generation_config.json");
        string modelConfigPath = Path.Combine(checkpointDir, "config.json");
        var generationConfig = CheckpointJson.TryRead(generationPath);
        var modelConfig = CheckpointJson.TryRead(modelConfigPath);
        if (bos is null && modelConfig is { } mc && CheckpointJson.IdList(mc, "bos_token_id", modelConfigPath) is [int configBos])
            bos = CheckAgainstVocabulary(configBos, vocabularySize, modelConfigPath, "bos_token_id");
        bos ??= specials.TryGetValue("<|begin_of_text|>", out int beginOfText) ? beginOfText : null;

        var stops = new List<int>();
        void AddStop(int id) { if (!stops.Contains(id)) stops.Add(id); }
        if (generationConfig is { } gc)
        {
            foreach (int id in CheckpointJson.IdList(gc, "eos_token_id", generationPath))
                AddStop(CheckAgainstVocabulary(id, vocabularySize, generationPath, "eos_token_id"));
        }
        if (modelConfig is { } mc2)
        {
            foreach (int id in CheckpointJson.IdList(mc2, "eos_token_id", modelConfigPath))
                AddStop(CheckAgainstVocabulary(id, vocabularySize, modelConfigPath, "eos_token_id"));
        }
        if (eos is int e) AddStop(e);
        foreach (string name in (string[])["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"])
        {
            if (specials.TryGetValue(name, out int id)) AddStop(id);
        }
        return new LlamaTokenizer(ranks, specials, bos, eos, stops);
    }

    /// <summary>
    /// A tokenizer with no checkpoint: cl100k_base ranks (Microsoft.ML.Tokenizers.Data.Cl100kBase) and the 256
    /// Llama 3 special tokens at 128000..128255; vocabulary 128256. Meant for demo / randomly initialised models.
    /// </summary>
    public static LlamaTokenizer CreateDemo() => s_demo.Value;

    static LlamaTokenizer BuildDemo()
    {
        const string resource = "cl100k_base.tiktoken.deflate";
        var assembly = Assembly.Load("Microsoft.ML.Tokenizers.Data.Cl100kBase");
        using var compressed = assembly.GetManifestResourceStream(resource)
            ?? throw new InvalidOperationException($"Resource {resource} not found in {assembly.FullName}.");
        using var inflated = new DeflateStream(compressed, CompressionMode.Decompress);
        byte[]?[] ranks = TiktokenFile.ReadEmbedded(inflated, $"{assembly.GetName().Name}/{resource}");
        var specials = Llama3SpecialTokens(128000);
        int eot = specials["<|eot_id|>"];
        int[] stops = [specials["<|end_of_text|>"], specials["<|eom_id|>"], eot];
        return new LlamaTokenizer(ranks, specials, specials["<|begin_of_text|>"], eot, stops);
    }

    /// <summary>
    /// Writes tokenizer.json, tokenizer_config.json, special_tokens_map.json and original/tokenizer.model.
    /// Stop tokens beyond eos_token and the named Llama 3 ones belong to generation_config.json (not written here).
    /// </summary>
    public void Save(string checkpointDir)
    {
        ArgumentException.ThrowIfNullOrEmpty(checkpointDir);
        Directory.CreateDirectory(Path.Combine(checkpointDir, "original"));
        var specialsById = _specialTokens.OrderBy(kv => kv.Value).ToList();
        string? bosText = BosTokenId is int b ? TokenText(b) : null;
        string? eosText = EosTokenId is int e ? TokenText(e) : null;

        using (var file = File.Create(Path.Combine(checkpointDir, "tokenizer.json")))
            HfTokenizerJson.Write(file, _ranks, _merges.Value, specialsById, bosText, BosTokenId);

        using (var file = File.Create(Path.Combine(checkpointDir, "original", "tokenizer.model")))
            TiktokenFile.Write(file, _ranks);

        var options = new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        using (var file = File.Create(Path.Combine(checkpointDir, "tokenizer_config.json")))
        using (var w = new Utf8JsonWriter(file, options))
        {
            w.WriteStartObject();
            w.WriteStartObject("added_tokens_decoder");
            foreach (var (text, id) in specialsById)
            {
                w.WritePropertyName(id.ToString(System.Globalization.CultureInfo.InvariantCulture));
                WriteAddedToken(w, text, special: true);
            }
            w.WriteEndObject();
            WriteOptionalString(w, "bos_token", bosText);
            w.WriteString("chat_template", Llama31ChatFormat.JinjaTemplate);
            w.WriteBoolean("clean_up_tokenization_spaces", true);
            WriteOptionalString(w, "eos_token", eosText);
            w.WriteStartArray("model_input_names");
            w.WriteStringValue("input_ids");
            w.WriteStringValue("attention_mask");
            w.WriteEndArray();
            w.WriteNumber("model_max_length", ModelMaxLength);
            w.WriteString("tokenizer_class", "PreTrainedTokenizerFast");
            w.WriteEndObject();
        }

        using (var file = File.Create(Path.Combine(checkpointDir, "special_tokens_map.json")))
        using (var w = new Utf8JsonWriter(file, options))
        {
            w.WriteStartObject();
            if (bosText is not null) { w.WritePropertyName("bos_token"); WriteAddedToken(w, bosText, special: null); }
            if (eosText is not null) { w.WritePropertyName("eos_token"); WriteAddedToken(w, eosText, special: null); }
            w.WriteEndObject();
        }
    }

    /// <summary>The merges tokenizer.json holds, recovered from the ranks (for tests and tools).</summary>
    internal IReadOnlyList<(byte[] Left, byte[] Right)> Merges => _merges.Value;

    string TokenText(int id) => Encoding.UTF8.GetString(GetTokenBytes(id));

    static void WriteOptionalString(Utf8JsonWriter w, string key, string? value)
    {
        if (value is null) w.WriteNull(key);
        else w.WriteString(key, value);
    }

    static void WriteAddedToken(Utf8JsonWriter w, string content, bool? special)
    {
        w.WriteStartObject();
        w.WriteString("content", content);
        w.WriteBoolean("lstrip", false);
        w.WriteBoolean("normalized", false);
        w.WriteBoolean("rstrip", false);
        w.WriteBoolean("single_word", false);
        if (special is bool s) w.WriteBoolean("special", s);
        w.WriteEndObject();
    }

    /// <summary>Llama 3's 256 special tokens starting at <paramref name="first"/> (128000 in Llama 3).</summary>
    internal static Dictionary<string, int> Llama3SpecialTokens(int first)
    {
        var specials = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < 256; i++)
        {
            string name = i switch
            {
                0 => "<|begin_of_text|>",
                1 => "<|end_of_text|>",
                >= 2 and <= 5 => $"<|reserved_special_token_{i - 2}|>",
                6 => "<|start_header_id|>",
                7 => "<|end_header_id|>",
                8 => "<|eom_id|>",
                9 => "<|eot_id|>",
                10 => "<|python_tag|>",
                _ => $"<|reserved_special_token_{i - 7}|>",
            };
            specials.Add(name, first + i);
        }
        return specials;
    }

    static Dictionary<string, int> ReadSpecialTokens(JsonElement? tokenizerJson, string jsonPath, JsonElement? tokenizerConfig, string configPath)
    {
        var specials = new Dictionary<string, int>(StringComparer.Ordinal);
        var byId = new Dictionary<int, string>();
        void Add(string content, int id, string source)
        {
            if (content.Length == 0) throw new InvalidModelException($"{source}: special token {id} has empty content.");
            if (id < 0 || id > MaxTokenId)
                throw new InvalidModelException($"{source}: special token '{content}' has id {id}, outside 0..{MaxTokenId}.");
            if (specials.TryGetValue(content, out int existing) && existing != id)
                throw new InvalidModelException($"{source}: special token '{content}' has id {id}, but {existing} elsewhere.");
            if (byId.TryGetValue(id, out string? other) && other != content)
                throw new InvalidModelException($"{source}: id {id} is special token '{content}', but '{other}' elsewhere.");
            specials[content] = id;
            byId[id] = content;
        }
        if (tokenizerJson is { } tj)
        {
            foreach (var (content, id) in HfTokenizerJson.ReadAddedTokens(tj, jsonPath)) Add(content, id, jsonPath);
        }
        if (tokenizerConfig is { } tc && CheckpointJson.Get(tc, "added_tokens_decoder") is { } decoder)
        {
            if (decoder.ValueKind != JsonValueKind.Object)
                throw new InvalidModelException($"{configPath}: 'added_tokens_decoder' must be an object, got {decoder.ValueKind}.");
            foreach (var entry in decoder.EnumerateObject())
            {
                if (!int.TryParse(entry.Name, System.Globalization.NumberStyles.None, null, out int id))
                    throw new InvalidModelException($"{configPath}: added_tokens_decoder key '{entry.Name}' is not a token id.");
                string content = CheckpointJson.TokenText(decoder, entry.Name, configPath)
                    ?? throw new InvalidModelException($"{configPath}: added_tokens_decoder[\"{entry.Name}\"] has no content.");
                Add(content, id, configPath);
            }
        }
        return specials;
    }

    /// <summary>Drops specials from the BPE ranks (a vocab may list them too); a different token at a special's id is an error.</summary>
    static byte[]?[] SeparateSpecials(byte[]?[] ranks, Dictionary<string, int> specials, string source)
    {
        byte[]?[]? copy = null;
        foreach (var (text, id) in specials)
        {
            if (id >= ranks.Length || ranks[id] is not { } bytes) continue;
            if (!bytes.AsSpan().SequenceEqual(Encoding.UTF8.GetBytes(text)))
                throw new InvalidModelException($"{source}: special token '{text}' has id {id}, which is already the ordinary token '{ByteLevelAlphabet.Encode(bytes)}'.");
            copy ??= (byte[]?[])ranks.Clone();
            copy[id] = null;
        }
        return copy ?? ranks;
    }

    /// <summary>Refuses two rank tables of one checkpoint that give any id different bytes, naming the first such id.</summary>
    static void CheckAgree(byte[]?[] ranks, byte[]?[] other, string source, string otherSource)
    {
        for (int id = 0; id < Math.Max(ranks.Length, other.Length); id++)
        {
            var a = id < ranks.Length ? ranks[id] : null;
            var b = id < other.Length ? other[id] : null;
            if (a is null ? b is null : b is not null && a.AsSpan().SequenceEqual(b)) continue;
            string Show(byte[]? t) => t is null ? "no token" : $"'{ByteLevelAlphabet.Encode(t)}'";
            throw new InvalidModelException($"{source} and {otherSource} disagree: id {id} is {Show(a)} in the first and {Show(b)} in the second. " +
                "Transformers encodes with tokenizer.json; remove the file that is wrong.");
        }
    }

    /// <summary>
    /// Byte-level BPE starts every piece from its single bytes, so a vocabulary without one of the 256 cannot encode
    /// text holding that byte: refuse it at load, naming the bytes, not at the first prompt that needs one.
    /// </summary>
    static void CheckSingleBytes(byte[]?[] ranks, string source, bool tiktoken)
    {
        var present = new bool[256];
        foreach (var bytes in ranks)
            if (bytes is [byte b]) present[b] = true;
        var missing = Enumerable.Range(0, 256).Where(b => !present[b]).ToList();
        if (missing.Count == 0) return;
        // Each byte as the file spells its token: base64 in a tiktoken file, the byte-level alphabet in tokenizer.json.
        string Spelled(int b) => $"0x{b:X2} ('{(tiktoken ? Convert.ToBase64String([(byte)b]) : ByteLevelAlphabet.Encode([(byte)b]))}')";
        const int Listed = 8;
        string list = string.Join(", ", missing.Take(Listed).Select(Spelled)) + (missing.Count > Listed ? $" and {missing.Count - Listed} more" : "");
        throw new InvalidModelException(
            $"{source}: the vocabulary lacks the single-byte token{(missing.Count == 1 ? "" : "s")} for byte{(missing.Count == 1 ? "" : "s")} {list}; " +
            "byte-level BPE needs all 256 to encode any text.");
    }

    /// <summary>
    /// Checks that every id of this tokenizer is an id of <paramref name="config"/>'s model, and returns the tokenizer
    /// widened to its vocab_size (<see cref="WithVocabularySize"/>). <paramref name="checkpointDir"/> names the checkpoint
    /// in the error.
    /// </summary>
    public LlamaTokenizer ForModel(LlamaConfig config, string checkpointDir)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (VocabularySize > config.VocabSize)
            throw new InvalidModelException($"{checkpointDir}: the tokenizer has ids up to {VocabularySize - 1} but the model's vocab_size is {config.VocabSize}.");
        // A padded vocab_size: the extra ids exist for the model, decode to nothing, and size every per-id table.
        return WithVocabularySize(config.VocabSize);
    }

    static int CheckAgainstVocabulary(int id, int vocabularySize, string file, string key)
    {
        if (id >= vocabularySize)
            throw new InvalidModelException($"{file}: {key} {id} is outside the tokenizer vocabulary (size {vocabularySize}).");
        return id;
    }
}
