// Recovers the BPE merge list that Hugging Face's tokenizer.json needs from a tiktoken rank table.
// tiktoken stores only ranks; a token of rank r was created by merging two tokens of lower rank. Running
// rank-ordered BPE over the token's own bytes, allowed to use only ranks below r, stops at exactly those two
// parts. Merges are emitted in rank order so HF's merge priority equals tiktoken's rank order.
// Cost: one small BPE per token (tokens average ~7 bytes); lookups go through a span-keyed dictionary so the
// inner loop does not allocate. About a second for 128K tokens on one core.
using System.Text;

namespace SwiftKV.Model.Tokenization;

internal static class BpeMergeRecovery
{
    /// <summary>Returns (left, right) byte strings for every multi-byte token, in rank order.</summary>
    public static List<(byte[] Left, byte[] Right)> Recover(IReadOnlyList<byte[]?> table)
    {
        // Latin-1 maps each byte to one char, so byte strings become ordinal string keys.
        var rankOf = new Dictionary<string, int>(table.Count, StringComparer.Ordinal);
        for (int rank = 0; rank < table.Count; rank++)
        {
            if (table[rank] is { } bytes) rankOf[Encoding.Latin1.GetString(bytes)] = rank;
        }
        var lookup = rankOf.GetAlternateLookup<ReadOnlySpan<char>>();

        var merges = new List<(byte[], byte[])>(table.Count);
        var bounds = new List<int>(64);
        for (int rank = 0; rank < table.Count; rank++)
        {
            if (table[rank] is not { Length: >= 2 } bytes) continue;
            string token = Encoding.Latin1.GetString(bytes);
            // bounds[i] = start of part i; a sentinel at the end.
            bounds.Clear();
            for (int i = 0; i <= token.Length; i++) bounds.Add(i);
            while (bounds.Count > 3)
            {
                int best = -1, bestRank = rank;
                for (int i = 0; i + 2 < bounds.Count; i++)
                {
                    var pair = token.AsSpan(bounds[i], bounds[i + 2] - bounds[i]);
                    if (lookup.TryGetValue(pair, out int r) && r < bestRank) { bestRank = r; best = i; }
                }
                if (best < 0) break;
                bounds.RemoveAt(best + 1);
            }
            if (bounds.Count != 3
                || !lookup.TryGetValue(token.AsSpan(0, bounds[1]), out _)
                || !lookup.TryGetValue(token.AsSpan(bounds[1]), out _))
            {
                throw new InvalidModelException(
                    $"Token {rank} ('{Convert.ToBase64String(bytes)}' base64) cannot be built by merging two lower-ranked tokens; " +
                    "this vocabulary cannot be written as BPE merges.");
            }
            merges.Add((bytes[..bounds[1]], bytes[bounds[1]..]));
        }
        return merges;
    }
}
