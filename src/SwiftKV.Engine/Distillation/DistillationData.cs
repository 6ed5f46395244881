// Training text for distillation, one JSON object per line (JSON Lines), in either of two forms:
//   {"messages": [{"role": "system" | "user" | "assistant" | "ipython", "content": "..."}, ...]}
//       written in the Llama 3.1 chat format; the loss covers the positions that predict each assistant reply
//       (its text and its <|eot_id|>), as the paper distils "over assistant tokens";
//   {"text": "..."}   <|begin_of_text|> + the text; every position predicts.
// Blank lines are skipped. A line that is not one of these forms is an error naming the file and line.
using System.Text.Json;
using SwiftKV.Model;
using SwiftKV.Model.Tokenization;

namespace SwiftKV.Engine.Distillation;

/// <summary>One training sequence: token ids and, per position, whether its prediction of the next token is scored.</summary>
public sealed record DistillationSequence(int[] Tokens, bool[] LossMask)
{
    public int LossPositions => LossMask.Count(m => m);
}

/// <summary>What <see cref="DistillationData.Read"/> found.</summary>
public sealed record DistillationDataSet(IReadOnlyList<DistillationSequence> Sequences, int Truncated, int SkippedWithoutLoss)
{
    public int LongestSequence => Sequences.Max(s => s.Tokens.Length);
    public long Tokens => Sequences.Sum(s => (long)s.Tokens.Length);
    public long LossPositions => Sequences.Sum(s => (long)s.LossPositions);
}

/// <summary>Reads JSON Lines training data into token sequences.</summary>
public static class DistillationData
{
    /// <summary>
    /// Reads <paramref name="path"/>. Sequences longer than <paramref name="maxTokens"/> keep their first tokens; a
    /// sequence left with no scored position (no assistant reply inside the limit) is skipped and counted. A token id
    /// at or past <paramref name="vocabSize"/> (a tokenizer larger than the model) is an error naming the line.
    /// </summary>
    public static DistillationDataSet Read(string path, LlamaTokenizer tokenizer, int maxTokens, int vocabSize = int.MaxValue,
        LlamaChatTemplate template = LlamaChatTemplate.Llama31)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        if (maxTokens < 2) throw new ArgumentOutOfRangeException(nameof(maxTokens), maxTokens, "a sequence needs at least 2 tokens (one position predicting the next).");
        if (!File.Exists(path))
            throw new FileNotFoundException(Directory.Exists(path) ? $"{path} is a directory; distillation data is a JSON Lines file." : $"no distillation data at {path}.", path);
        var sequences = new List<DistillationSequence>();
        int truncated = 0, skipped = 0, number = 0;
        foreach (var (line, lineNumber) in Lines(path))
        {
            number = lineNumber;
            if (string.IsNullOrWhiteSpace(line)) continue;
            var (tokens, mask) = Parse(line, tokenizer, $"{path}:{number}", template);
            int outside = tokens.FindIndex(id => id >= vocabSize);
            if (outside >= 0)
                throw new InvalidDataException($"{path}:{number}: token {tokens[outside]} is outside the model's vocabulary (vocab_size {vocabSize}): the tokenizer does not belong to this checkpoint.");
            if (tokens.Count > maxTokens)
            {
                truncated++;
                tokens.RemoveRange(maxTokens, tokens.Count - maxTokens);
                mask.RemoveRange(maxTokens, mask.Count - maxTokens);
            }
            // The last position predicts nothing inside the sequence.
            mask[^1] = false;
            if (!mask.Contains(true)) { skipped++; continue; }
            sequences.Add(new DistillationSequence([.. tokens], [.. mask]));
        }
        if (sequences.Count == 0)
            throw new InvalidDataException(number == 0 || skipped == 0
                ? $"{path} holds no sequences (one JSON object per line: {{\"messages\": [...]}} or {{\"text\": \"...\"}})."
                : $"{path}: none of its {skipped} sequences has a position to score within {maxTokens} tokens (no assistant reply, or every reply past the limit).");
        return new DistillationDataSet(sequences, truncated, skipped);
    }

    /// <summary>
    /// The file's lines (a leading UTF-8 BOM and "\r" before "\n" dropped), each decoded on its own so that invalid UTF-8
    /// is an error naming its line rather than text silently changed to U+FFFD.
    /// </summary>
    static IEnumerable<(string Line, int Number)> Lines(string path)
    {
        var utf8 = new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
        using var stream = new BufferedStream(File.OpenRead(path), 1 << 16);
        var line = new MemoryStream();
        int number = 0;
        while (true)
        {
            int b = stream.ReadByte();
            if (b >= 0 && b != '\n') { line.WriteByte((byte)b); continue; }
            if (b < 0 && line.Length == 0) yield break;
            number++;
            var bytes = line.GetBuffer().AsSpan(0, (int)line.Length);
            if (number == 1 && bytes.StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF])) bytes = bytes[3..];
            if (bytes.EndsWith((ReadOnlySpan<byte>)[(byte)'\r'])) bytes = bytes[..^1];
            string text;
            try { text = utf8.GetString(bytes); }
            catch (System.Text.DecoderFallbackException) { throw new InvalidDataException($"{path}:{number}: not valid UTF-8 text."); }
            yield return (text, number);
            line.SetLength(0);
            if (b < 0) yield break;
        }
    }

    static (List<int> Tokens, List<bool> Mask) Parse(string line, LlamaTokenizer tokenizer, string where, LlamaChatTemplate template)
    {
        JsonElement root;
        try { root = JsonDocument.Parse(line).RootElement; }
        catch (JsonException e) { throw new InvalidDataException($"{where}: not JSON ({e.Message})."); }
        if (JsonText.FindNotText(root) is { } notText) throw new InvalidDataException($"{where}: {notText} {JsonText.NotTextReason}.");
        if (root.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{where}: expected a JSON object with \"messages\" or \"text\", found {root.ValueKind}.");
        bool hasMessages = root.TryGetProperty("messages", out var messages), hasText = root.TryGetProperty("text", out var text);
        if (hasMessages == hasText)
            throw new InvalidDataException($"{where}: an object needs exactly one of \"messages\" and \"text\".");
        if (hasText)
        {
            if (text.ValueKind != JsonValueKind.String || text.GetString()!.Length == 0)
                throw new InvalidDataException($"{where}: \"text\" must be a non-empty string.");
            int bos = tokenizer.GetSpecialTokenId(Llama31ChatFormat.BeginOfText)
                ?? throw new InvalidDataException($"the tokenizer has no {Llama31ChatFormat.BeginOfText} token.");
            var ids = new List<int> { bos };
            ids.AddRange(tokenizer.Encode(text.GetString()!));
            return (ids, ids.Select(_ => true).ToList());
        }
        var turns = Turns(messages, where);
        if (!turns.Any(t => t.Role == "assistant"))
            throw new InvalidDataException($"{where}: the conversation has no assistant message, so nothing would be distilled.");
        List<int> all;
        try { all = [.. Llama31ChatFormat.Encode(tokenizer, turns, addGenerationPrompt: false, template: template)]; }
        catch (ArgumentException e) { throw new InvalidDataException($"{where}: {e.Message}"); }
        var mask = new bool[all.Count];
        for (int k = 0; k < turns.Count; k++)
        {
            if (turns[k].Role != "assistant") continue;
            var before = Llama31ChatFormat.Encode(tokenizer, turns.Take(k).ToList(), addGenerationPrompt: true, template: template);
            var through = Llama31ChatFormat.Encode(tokenizer, turns.Take(k + 1).ToList(), addGenerationPrompt: false, template: template);
            // The reply's tokens are those the turn adds after its header; the format's special tokens keep earlier
            // turns' tokens unchanged, which is checked rather than assumed.
            if (!IsPrefix(before, through) || !IsPrefix(through, all))
                throw new InvalidDataException($"{where}: message {k} does not tokenize on its own (the conversation's tokens do not extend its prefix).");
            for (int t = before.Count; t < through.Count; t++) mask[t - 1] = true;
        }
        return (all, [.. mask]);
    }

    static List<ChatTurn> Turns(JsonElement messages, string where)
    {
        if (messages.ValueKind != JsonValueKind.Array || messages.GetArrayLength() == 0)
            throw new InvalidDataException($"{where}: \"messages\" must be a non-empty array.");
        var turns = new List<ChatTurn>();
        int i = 0;
        foreach (var m in messages.EnumerateArray())
        {
            if (m.ValueKind != JsonValueKind.Object
                || !m.TryGetProperty("role", out var role) || role.ValueKind != JsonValueKind.String
                || !m.TryGetProperty("content", out var content) || content.ValueKind != JsonValueKind.String)
                throw new InvalidDataException($"{where}: messages[{i}] must be an object with string \"role\" and \"content\".");
            string r = role.GetString()!;
            if (r is not ("system" or "user" or "assistant" or "ipython"))
                throw new InvalidDataException($"{where}: messages[{i}] has role \"{r}\"; the Llama 3.1 format has system, user, assistant and ipython.");
            if (r == "system" && i > 0)
                throw new InvalidDataException($"{where}: messages[{i}] is a system message; only the first message may be one.");
            turns.Add(new ChatTurn(r, content.GetString()!));
            i++;
        }
        return turns;
    }

    static bool IsPrefix(IReadOnlyList<int> prefix, IReadOnlyList<int> of)
    {
        if (prefix.Count > of.Count) return false;
        for (int i = 0; i < prefix.Count; i++) if (prefix[i] != of[i]) return false;
        return true;
    }
}
