// Hugging Face tokenizer.json for Llama 3 style byte-level BPE: reading the vocabulary and added tokens, and
// writing a complete file (model BPE with vocab AND merges, Split(Llama 3 regex) + ByteLevel pre-tokenizer,
// ByteLevel decoder, BOS template post-processor) that the `tokenizers` library loads as-is.
// NOTE: on reading, a token's id is taken as its BPE rank. That holds for Llama 3 (and GPT-2-style files,
// whose ids follow merge order); the merges list is therefore not needed to encode.
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace SwiftKV.Model.Tokenization;

internal static class HfTokenizerJson
{
    /// <summary>The added_tokens array as (content, id) pairs; empty when absent.</summary>
    public static List<(string Content, int Id)> ReadAddedTokens(JsonElement root, string path)
    {
        var result = new List<(string, int)>();
        if (CheckpointJson.Get(root, "added_tokens") is not { } added) return result;
        if (added.ValueKind != JsonValueKind.Array)
            throw new InvalidModelException($"{path}: 'added_tokens' must be an array, got {added.ValueKind}.");
        int index = 0;
        foreach (var token in added.EnumerateArray())
        {
            if (CheckpointJson.Get(token, "content") is not { ValueKind: JsonValueKind.String } content
                || CheckpointJson.Get(token, "id") is not { } id)
                throw new InvalidModelException($"{path}: added_tokens[{index}] needs a string 'content' and an integer 'id'.");
            // A non-special added token is matched inside ordinary text by Hugging Face; this tokenizer matches added
            // tokens only as control tokens, so such a file would encode differently: refuse it.
            if (CheckpointJson.Get(token, "special") is { ValueKind: JsonValueKind.False })
                throw new InvalidModelException($"{path}: added_tokens[{index}] '{content.GetString()}' is not special; only special added tokens (Llama 3's) are supported.");
            result.Add((content.GetString()!, CheckpointJson.Int(id, $"added_tokens[{index}].id", path)));
            index++;
        }
        return result;
    }

    /// <summary>
    /// Reads model.vocab of a byte-level BPE model into bytes indexed by id (= rank). An entry at an id of
    /// <paramref name="specialsById"/> must be that special token itself (a vocab may list the specials too).
    /// </summary>
    public static byte[]?[] ReadVocabulary(JsonElement root, string path, IReadOnlyDictionary<int, string> specialsById)
    {
        if (CheckpointJson.Get(root, "model") is not { ValueKind: JsonValueKind.Object } model)
            throw new InvalidModelException($"{path}: missing 'model' object.");
        string type = CheckpointJson.Get(model, "type") is { ValueKind: JsonValueKind.String } t ? t.GetString()! : "(none)";
        if (type != "BPE")
            throw new InvalidModelException($"{path}: tokenizer model type '{type}' is not supported (expected 'BPE', byte-level as in Llama 3).");
        if (!UsesByteLevel(root))
            throw new InvalidModelException(
                $"{path}: BPE model is not byte-level (no ByteLevel pre_tokenizer or decoder); SentencePiece-style BPE is not supported.");
        if (CheckpointJson.Get(model, "vocab") is not { ValueKind: JsonValueKind.Object } vocab)
            throw new InvalidModelException($"{path}: model.vocab must be an object mapping token -> id.");
        CheckLlama3Pipeline(root, path);

        var ranks = new List<(byte[], int)>();
        var idOf = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var entry in vocab.EnumerateObject())
        {
            int id = CheckpointJson.Int(entry.Value, $"model.vocab[\"{entry.Name}\"]", path);
            if (id < 0 || id > LlamaTokenizer.MaxTokenId)
                throw new InvalidModelException($"{path}: vocab token '{entry.Name}' has id {id}, outside 0..{LlamaTokenizer.MaxTokenId}.");
            // Special tokens live in added_tokens, not in the BPE ranks; their text need not be in the byte-level alphabet.
            // Another token at a special's id would be replaced by it without a word.
            if (specialsById.TryGetValue(id, out string? special))
            {
                if (entry.Name != special)
                    throw new InvalidModelException($"{path}: special token '{special}' has id {id}, which is already the vocab token '{entry.Name}'.");
                idOf[entry.Name] = id;
                continue;
            }
            byte[] bytes = ByteLevelAlphabet.TryDecode(entry.Name)
                ?? throw new InvalidModelException($"{path}: vocab token '{entry.Name}' (id {id}) has characters outside the byte-level alphabet.");
            if (bytes.Length == 0) throw new InvalidModelException($"{path}: empty vocab token (id {id}).");
            idOf[entry.Name] = id;
            ranks.Add((bytes, id));
        }
        if (ranks.Count == 0) throw new InvalidModelException($"{path}: model.vocab is empty.");
        var table = TiktokenFile.ToTable(ranks, path);
        CheckMergeOrder(model, idOf, path);
        return table;
    }

    /// <summary>
    /// This reader encodes as tiktoken does (ids as merge ranks, Llama 3's split regex, no normalizer): refuse a file
    /// whose pipeline says otherwise, instead of encoding it differently from Hugging Face without a word.
    /// </summary>
    static void CheckLlama3Pipeline(JsonElement root, string path)
    {
        if (CheckpointJson.Get(root, "normalizer") is { } n && n.ValueKind != JsonValueKind.Null)
            throw new InvalidModelException($"{path}: a normalizer is not supported (Llama 3 has none), got {Describe(n)}.");
        // Llama 3's pipeline: one Split with its pattern, then ByteLevel; this reader always splits with that pattern.
        int splits = 0;
        bool byteLevelSeen = false;
        void Walk(JsonElement e)
        {
            if (e.ValueKind != JsonValueKind.Object) return;
            string type = CheckpointJson.Get(e, "type") is { ValueKind: JsonValueKind.String } t ? t.GetString()! : "";
            // Only Llama 3's steps are read; any other (Digits, Whitespace, Metaspace, Punctuation, ...) would change the
            // pieces Hugging Face encodes, and ignoring it encoded differently without a word.
            if (type is not ("Sequence" or "Split" or "ByteLevel"))
                throw new InvalidModelException($"{path}: a pre-tokenizer step of type '{type}' is not supported (Llama 3 has a Split and a ByteLevel step): {Describe(e)}.");
            if (type == "Split")
            {
                string? regex = CheckpointJson.Get(e, "pattern") is { ValueKind: JsonValueKind.Object } p
                    && CheckpointJson.Get(p, "Regex") is { ValueKind: JsonValueKind.String } r ? r.GetString() : null;
                if (regex != LlamaTokenizer.Llama3Pattern)
                    throw new InvalidModelException($"{path}: the pre-tokenizer splits with another pattern than Llama 3's ({Describe(e)}); not supported.");
                if (CheckpointJson.Get(e, "behavior") is { } b && !(b.ValueKind == JsonValueKind.String && b.GetString() == "Isolated"))
                    throw new InvalidModelException($"{path}: the Split step's behavior must be \"Isolated\" as Llama 3's (matches become pieces of their own), got {Describe(b)}.");
                if (CheckpointJson.Get(e, "invert") is { ValueKind: JsonValueKind.True })
                    throw new InvalidModelException($"{path}: the Split step's invert = true is not supported (Llama 3's splits on the pattern's matches).");
                if (byteLevelSeen || ++splits > 1)
                    throw new InvalidModelException($"{path}: the pre-tokenizer must split once with Llama 3's pattern before its ByteLevel step, as Llama 3's does.");
            }
            if (type == "ByteLevel") byteLevelSeen = true;
            if (type == "ByteLevel" && CheckpointJson.Get(e, "add_prefix_space") is { ValueKind: JsonValueKind.True })
                throw new InvalidModelException($"{path}: ByteLevel add_prefix_space = true is not supported (Llama 3 adds no prefix space).");
            // ByteLevel splits with GPT-2's regex unless use_regex is false (Llama 3 splits in a Split step before it).
            if (type == "ByteLevel" && CheckpointJson.Get(e, "use_regex") is not { ValueKind: JsonValueKind.False })
                throw new InvalidModelException($"{path}: a ByteLevel pre-tokenizer that splits with its own (GPT-2) regex is not supported; Llama 3 splits with a Split step and sets use_regex = false.");
            if (CheckpointJson.Get(e, "pretokenizers") is { ValueKind: JsonValueKind.Array } list)
                foreach (var x in list.EnumerateArray()) Walk(x);
        }
        if (CheckpointJson.Get(root, "pre_tokenizer") is { } pre) Walk(pre);
        // Without the Split, Hugging Face would not split the text at all (a ByteLevel step without its regex, or none).
        if (splits == 0)
            throw new InvalidModelException($"{path}: the pre-tokenizer has no Split step with Llama 3's pattern, so Hugging Face would split text otherwise than this reader; not supported.");
    }

    /// <summary>
    /// Ids stand for merge ranks only if each merge makes a token with a larger id than the merge before it (true of
    /// Llama 3 and GPT-2-style files); otherwise Hugging Face would merge in another order than this reader.
    /// </summary>
    static void CheckMergeOrder(JsonElement model, Dictionary<string, int> idOf, string path)
    {
        if (CheckpointJson.Get(model, "merges") is not { ValueKind: JsonValueKind.Array } merges) return;
        int previous = -1, index = 0;
        foreach (var m in merges.EnumerateArray())
        {
            string? left = null, right = null;
            if (m.ValueKind == JsonValueKind.String && m.GetString()!.Split(' ') is [var a, var b]) (left, right) = (a, b);
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2
                && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String) (left, right) = (m[0].GetString(), m[1].GetString());
            if (left is null || right is null)
                throw new InvalidModelException($"{path}: model.merges[{index}] must be \"left right\" or [\"left\", \"right\"] (two token strings), got {Describe(m)}.");
            if (!idOf.TryGetValue(left + right, out int id))
                throw new InvalidModelException($"{path}: model.merges[{index}] ({Describe(m)}) is not a pair of tokens whose concatenation is in the vocabulary.");
            if (id <= previous)
                throw new InvalidModelException($"{path}: model.merges[{index}] makes id {id} after id {previous}: merges out of id order are not supported (ids are read as merge ranks).");
            previous = id;
            index++;
        }
    }

    static string Describe(JsonElement e)
    {
        string text = e.GetRawText();
        return text.Length <= 120 ? text : text[..120] + "...";
    }

    static bool UsesByteLevel(JsonElement root)
    {
        static bool Has(JsonElement? e) => e is { ValueKind: JsonValueKind.Object } o &&
            ((CheckpointJson.Get(o, "type") is { ValueKind: JsonValueKind.String } t && t.GetString() == "ByteLevel")
             || (CheckpointJson.Get(o, "pretokenizers") is { ValueKind: JsonValueKind.Array } list && list.EnumerateArray().Any(x => Has(x)))
             || (CheckpointJson.Get(o, "decoders") is { ValueKind: JsonValueKind.Array } decs && decs.EnumerateArray().Any(x => Has(x))));
        return Has(CheckpointJson.Get(root, "pre_tokenizer")) || Has(CheckpointJson.Get(root, "decoder"));
    }

    /// <summary>Writes a complete tokenizer.json.</summary>
    public static void Write(
        Stream stream,
        IReadOnlyList<byte[]?> table,
        IReadOnlyList<(byte[] Left, byte[] Right)> merges,
        IReadOnlyList<KeyValuePair<string, int>> specialsById,
        string? bosToken,
        int? bosTokenId)
    {
        var options = new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        using var w = new Utf8JsonWriter(stream, options);
        w.WriteStartObject();
        w.WriteString("version", "1.0");
        w.WriteNull("truncation");
        w.WriteNull("padding");

        w.WriteStartArray("added_tokens");
        foreach (var (content, id) in specialsById)
        {
            w.WriteStartObject();
            w.WriteNumber("id", id);
            w.WriteString("content", content);
            w.WriteBoolean("single_word", false);
            w.WriteBoolean("lstrip", false);
            w.WriteBoolean("rstrip", false);
            w.WriteBoolean("normalized", false);
            w.WriteBoolean("special", true);
            w.WriteEndObject();
        }
        w.WriteEndArray();

        w.WriteNull("normalizer");

        w.WriteStartObject("pre_tokenizer");
        w.WriteString("type", "Sequence");
        w.WriteStartArray("pretokenizers");
        w.WriteStartObject();
        w.WriteString("type", "Split");
        w.WriteStartObject("pattern");
        w.WriteString("Regex", LlamaTokenizer.Llama3Pattern);
        w.WriteEndObject();
        w.WriteString("behavior", "Isolated");
        w.WriteBoolean("invert", false);
        w.WriteEndObject();
        WriteByteLevel(w, addPrefixSpace: false, trimOffsets: true, useRegex: false);
        w.WriteEndArray();
        w.WriteEndObject();

        // Mirrors Llama 3: HF's tokenizer(text) prepends BOS; encode(text, add_special_tokens=False) does not.
        if (bosToken is not null && bosTokenId is int bos)
        {
            w.WriteStartObject("post_processor");
            w.WriteString("type", "Sequence");
            w.WriteStartArray("processors");
            WriteByteLevel(w, addPrefixSpace: true, trimOffsets: false, useRegex: true);
            w.WriteStartObject();
            w.WriteString("type", "TemplateProcessing");
            w.WriteStartArray("single");
            WritePiece(w, "SpecialToken", bosToken, 0);
            WritePiece(w, "Sequence", "A", 0);
            w.WriteEndArray();
            w.WriteStartArray("pair");
            WritePiece(w, "SpecialToken", bosToken, 0);
            WritePiece(w, "Sequence", "A", 0);
            WritePiece(w, "SpecialToken", bosToken, 1);
            WritePiece(w, "Sequence", "B", 1);
            w.WriteEndArray();
            w.WriteStartObject("special_tokens");
            w.WriteStartObject(bosToken);
            w.WriteString("id", bosToken);
            w.WriteStartArray("ids");
            w.WriteNumberValue(bos);
            w.WriteEndArray();
            w.WriteStartArray("tokens");
            w.WriteStringValue(bosToken);
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
            w.WriteEndObject();
            w.WriteEndArray();
            w.WriteEndObject();
        }
        else
        {
            w.WriteNull("post_processor");
        }

        w.WritePropertyName("decoder");
        WriteByteLevel(w, addPrefixSpace: true, trimOffsets: true, useRegex: true);

        w.WriteStartObject("model");
        w.WriteString("type", "BPE");
        w.WriteNull("dropout");
        w.WriteNull("unk_token");
        w.WriteNull("continuing_subword_prefix");
        w.WriteNull("end_of_word_suffix");
        w.WriteBoolean("fuse_unk", false);
        w.WriteBoolean("byte_fallback", false);
        // tiktoken semantics: a pre-token that is itself in the vocabulary is one token, whatever the merges say.
        w.WriteBoolean("ignore_merges", true);
        // NOTE: specials are listed in the vocab too. `tokenizers` gives an added token the model's id for its
        // content when there is one, and otherwise the next free id after the vocab, ignoring added_tokens[].id;
        // a vocab with a gap before the specials (the cl100k-based demo) would get them renumbered.
        w.WriteStartObject("vocab");
        for (int id = 0; id < table.Count; id++)
        {
            if (table[id] is { } bytes) w.WriteNumber(ByteLevelAlphabet.Encode(bytes), id);
        }
        foreach (var (content, id) in specialsById) w.WriteNumber(content, id);
        w.WriteEndObject();
        w.WriteStartArray("merges");
        var sb = new StringBuilder();
        foreach (var (left, right) in merges)
        {
            sb.Clear().Append(ByteLevelAlphabet.Encode(left)).Append(' ').Append(ByteLevelAlphabet.Encode(right));
            w.WriteStringValue(sb.ToString());
        }
        w.WriteEndArray();
        w.WriteEndObject();

        w.WriteEndObject();
    }

    static void WriteByteLevel(Utf8JsonWriter w, bool addPrefixSpace, bool trimOffsets, bool useRegex)
    {
        w.WriteStartObject();
        w.WriteString("type", "ByteLevel");
        w.WriteBoolean("add_prefix_space", addPrefixSpace);
        w.WriteBoolean("trim_offsets", trimOffsets);
        w.WriteBoolean("use_regex", useRegex);
        w.WriteEndObject();
    }

    static void WritePiece(Utf8JsonWriter w, string kind, string id, int typeId)
    {
        w.WriteStartObject();
        w.WriteStartObject(kind);
        w.WriteString("id", id);
        w.WriteNumber("type_id", typeId);
        w.WriteEndObject();
        w.WriteEndObject();
    }
}
