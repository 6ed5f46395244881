// The vocabulary's byte strings as a prefix tree, so a constraint's pass over the vocabulary feeds each shared prefix
// to its recogniser once and skips every token under a prefix the recogniser refuses. Trying every token alone costs
// a state copy and a byte loop per token (3-9 ms for 128K tokens on one core); most JSON states refuse nearly every
// first byte, and inside strings the tokens share their leading bytes.
// Inside a JSON string nearly every byte is accepted, so that walk still visits most of the tree's nodes (2-4 ms for
// 128K tokens). There the tokens' fates are read instead from a table per string state (JsonStringBody), made once per
// token table: for every token and every byte offset into it, whether its bytes from there stay in the string (and
// in which escape state), are refused, or close the string (then the rest goes through the grammar, token by token).
// NOTE: nodes are stored in depth-first order, so a node's subtree is the index range [node, SubtreeEnd[node]) and
// its children are found by hopping from one child's end to the next; a walk needs no per-node child lists. The
// tokens under a node are, in the same order, one range of _tokens.
using System.Runtime.CompilerServices;

namespace SwiftKV.Engine.Sampling;

/// <summary>A prefix tree of token byte strings (built once per token table and shared).</summary>
public sealed class TokenTrie
{
    // Lazy: constraints of concurrent requests over one table wait for one build instead of each making their own.
    static readonly ConditionalWeakTable<IReadOnlyList<byte[]?>, Lazy<TokenTrie>> s_shared = new();

    readonly byte[] _edge;          // the byte that leads into each node
    readonly int[] _subtreeEnd;     // one past the node's last descendant
    readonly int[] _tokensStart;    // the node's tokens: _tokens[_tokensStart[i] .. _tokensStart[i + 1])
    readonly int[] _tokens;         // ids whose bytes end at the node, ascending within a node
    readonly byte[] _bytes;         // every token's bytes, in tree order: _tokens[k]'s are [_bodyStart[k], _bodyStart[k + 1])
    readonly int[] _bodyStart;      // and the same range holds its entries in a string-body table (one per byte)
    readonly Lazy<byte[]>[] _bodies = new Lazy<byte[]>[JsonStringBody.Kinds];   // per kind, made on first use

    // In a string-body table: 0..5, the bytes stay in the string and end in that escape state; then these two.
    const byte BodyRefused = 6, BodyCloses = 7;

    /// <summary>The trie of <paramref name="tokenBytes"/>, built on first use and kept while the table lives.</summary>
    public static TokenTrie For(IReadOnlyList<byte[]?> tokenBytes)
    {
        ArgumentNullException.ThrowIfNull(tokenBytes);
        // The table must not change after its first use here (the chat client's is made once per tokenizer).
        var lazy = s_shared.GetValue(tokenBytes, t => new Lazy<TokenTrie>(() => new TokenTrie(t)));
        try
        {
            return lazy.Value;
        }
        catch
        {
            s_shared.Remove(tokenBytes);   // a failed build (out of memory) is not kept: the next call tries again
            throw;
        }
    }

    /// <summary>Builds the trie of every non-empty entry of <paramref name="tokenBytes"/> (null and empty entries are left out).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // runs once: tier-0 code would take several times longer
    public TokenTrie(IReadOnlyList<byte[]?> tokenBytes)
    {
        ArgumentNullException.ThrowIfNull(tokenBytes);
        var ids = new List<int>(tokenBytes.Count);
        for (int id = 0; id < tokenBytes.Count; id++)
            if (tokenBytes[id] is { Length: > 0 }) ids.Add(id);
        // Lexicographic byte order, ties by id: the depth-first order of the tree, so each node is met once, in order.
        // Sorted by the first 8 bytes as one big-endian number first (zero-padded: a string and its extensions tie),
        // then each run of ties by the whole bytes (a comparison delegate over every token made the build ~1.5x slower
        // here; the build now takes ~70 ms for the demo tokenizer's 128256 ids on this repo's 2-core machine).
        var sorted = ids.ToArray();
        var keys = new ulong[sorted.Length];
        for (int i = 0; i < sorted.Length; i++)
        {
            var b = tokenBytes[sorted[i]]!;
            ulong k = 0;
            for (int j = 0; j < 8; j++) k = (k << 8) | (j < b.Length ? b[j] : 0u);
            keys[i] = k;
        }
        Array.Sort(keys, sorted);
        int Whole(int a, int b)
        {
            int c = tokenBytes[a].AsSpan().SequenceCompareTo(tokenBytes[b]);
            return c != 0 ? c : a.CompareTo(b);
        }
        for (int lo = 0, hi; lo < sorted.Length; lo = hi)
        {
            for (hi = lo + 1; hi < sorted.Length && keys[hi] == keys[lo]; hi++) { }
            if (hi - lo > 1) Array.Sort(sorted, lo, hi - lo, Comparer<int>.Create(Whole));
        }
        ids.Clear();
        ids.AddRange(sorted);
        // Walking the sorted strings creates the nodes in depth-first order: a token adds the nodes of its bytes past
        // the prefix it shares with the one before it. Its id goes to its last node; nodes are met in index order, so
        // the ids come out grouped by node.
        var edge = new List<byte>();
        var depth = new List<int>();
        var tokensAt = new List<int>();
        var tokens = new List<int>(ids.Count);
        byte[] previous = [];
        foreach (int id in ids)
        {
            var bytes = tokenBytes[id]!;
            int shared = bytes.AsSpan().CommonPrefixLength(previous);
            for (int d = shared; d < bytes.Length; d++)
            {
                edge.Add(bytes[d]);
                depth.Add(d);
                tokensAt.Add(0);
            }
            tokensAt[^1]++;   // the token's last node is the newest one (or, for a repeat of the previous bytes, the same)
            tokens.Add(id);
            previous = bytes;
        }
        int n = edge.Count;
        _edge = [.. edge];
        _tokens = [.. tokens];
        _tokensStart = new int[n + 1];
        for (int i = 0; i < n; i++) _tokensStart[i + 1] = _tokensStart[i] + tokensAt[i];
        // A subtree ends at the next node that is no deeper than its root.
        _subtreeEnd = new int[n];
        var open = new Stack<int>();
        for (int i = 0; i < n; i++)
        {
            while (open.Count > 0 && depth[open.Peek()] >= depth[i]) _subtreeEnd[open.Pop()] = i;
            open.Push(i);
        }
        while (open.Count > 0) _subtreeEnd[open.Pop()] = n;

        // In tree order, so a pass reads them front to back: by id, or from each token's own array, every token cost
        // a cache miss (a pass 3-5x slower).
        _bodyStart = new int[_tokens.Length + 1];
        for (int k = 0; k < _tokens.Length; k++) _bodyStart[k + 1] = _bodyStart[k] + tokenBytes[_tokens[k]]!.Length;
        _bytes = new byte[_bodyStart[^1]];
        for (int k = 0; k < _tokens.Length; k++) tokenBytes[_tokens[k]]!.CopyTo(_bytes, _bodyStart[k]);
        for (int kind = 0; kind < _bodies.Length; kind++)
        {
            var body = JsonStringBody.OfKind(kind);
            _bodies[kind] = new Lazy<byte[]>(() => BodyTable(body));
        }
    }

    /// <summary>For every token and offset into it: what its bytes from there do inside a string at <paramref name="body"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    byte[] BodyTable(JsonStringBody body)
    {
        var table = new byte[_bodyStart[^1]];
        for (int k = 0; k < _tokens.Length; k++)
        {
            var bytes = _bytes.AsSpan(_bodyStart[k], _bodyStart[k + 1] - _bodyStart[k]);
            for (int from = 0; from < bytes.Length; from++)
            {
                byte escape = body.Escape, fate = 0;
                for (int i = from; i < bytes.Length; i++)
                {
                    if (JsonStringBody.Closes(escape, bytes[i])) { fate = BodyCloses; break; }
                    if (!JsonStringBody.Step(ref escape, bytes[i], body.EscapesAllowed)) { fate = BodyRefused; break; }
                }
                table[_bodyStart[k] + from] = fate == 0 ? escape : fate;
            }
        }
        return table;
    }

    /// <summary>Nodes in the tree (distinct non-empty prefixes of the tokens).</summary>
    public int NodeCount => _edge.Length;

    /// <summary>
    /// Calls <paramref name="sink"/>.Token(id, state after the token's bytes) for every token whose bytes
    /// <paramref name="grammar"/> accepts from <paramref name="start"/>, in depth-first order; a refused byte skips
    /// every token under that prefix.
    /// </summary>
    public void ForEachAccepted<TState, TGrammar, TSink>(TGrammar grammar, TState start, ref TSink sink)
        where TState : struct, IEquatable<TState> where TGrammar : IByteGrammar<TState> where TSink : struct, ITokenSink<TState>
    {
        if (grammar.InStringBody(start, out var body)) InString(grammar, 0, _edge.Length, 0, start, body, ref sink);
        else Walk(grammar, 0, _edge.Length, 0, start, ref sink);
    }

    /// <summary>The walk for the plain JSON-object recogniser.</summary>
    public void ForEachAccepted<TSink>(JsonGrammarState start, ref TSink sink) where TSink : struct, ITokenSink<JsonGrammarState>
        => ForEachAccepted(default(JsonObjectGrammar), start, ref sink);

    // Optimized from the first call: a pass runs a few times a request, too few for tiering to promote it in time.
    // The nodes [first, end) are siblings at byte offset depth of their tokens.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    void Walk<TState, TGrammar, TSink>(TGrammar grammar, int first, int end, int depth, TState state, ref TSink sink)
        where TState : struct, IEquatable<TState> where TGrammar : IByteGrammar<TState> where TSink : struct, ITokenSink<TState>
    {
        for (int node = first; node < end; node = _subtreeEnd[node])
        {
            var next = state;
            if (!grammar.Accept(ref next, _edge[node])) continue;
            for (int k = _tokensStart[node]; k < _tokensStart[node + 1]; k++) sink.Token(_tokens[k], in next);
            if (node + 1 >= _subtreeEnd[node]) continue;
            if (grammar.InStringBody(next, out var body)) InString(grammar, node + 1, _subtreeEnd[node], depth + 1, next, body, ref sink);
            else Walk(grammar, node + 1, _subtreeEnd[node], depth + 1, next, ref sink);
        }
    }

    /// <summary>
    /// The tokens under the nodes [first, end), read from byte offset <paramref name="depth"/> inside a string at
    /// <paramref name="state"/>: their fates come from the body's table; a token that closes the string goes on
    /// through the grammar byte by byte (few do: those with a quote).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    void InString<TState, TGrammar, TSink>(TGrammar grammar, int first, int end, int depth, TState state, JsonStringBody body, ref TSink sink)
        where TState : struct, IEquatable<TState> where TGrammar : IByteGrammar<TState> where TSink : struct, ITokenSink<TState>
    {
        var table = _bodies[body.Kind].Value;
        // The state after tokens that stay in the string, by escape state, made when first needed. On the stack: a walk
        // through a key that stops spelling listed names enters a string at every such node, thousands a pass.
        var after = new EscapeStates<TState>();
        var made = new EscapeStates<bool>();
        int from = _tokensStart[first];
        var tokens = _tokens.AsSpan(from, _tokensStart[end] - from);
        var starts = _bodyStart.AsSpan(from, tokens.Length + 1);
        for (int k = 0; k < tokens.Length; k++)
        {
            int id = tokens[k];
            byte fate = table[starts[k] + depth];
            if (fate == BodyRefused) continue;
            if (fate == BodyCloses)
            {
                var next = state;
                int i = starts[k] + depth, stop = starts[k + 1];
                while (i < stop && grammar.Accept(ref next, _bytes[i])) i++;
                if (i == stop) sink.Token(id, in next);
                continue;
            }
            if (!made[fate])
            {
                after[fate] = fate == body.Escape ? state : grammar.WithEscape(state, fate);
                made[fate] = true;
            }
            sink.Token(id, in after[fate]);
        }
    }
}

/// <summary>Receives the tokens a <see cref="TokenTrie"/> walk accepts (a struct, so the walk's calls inline).</summary>
public interface ITokenSink<TState> where TState : struct
{
    void Token(int id, in TState after);
}

/// <summary>One value per escape state of a string (<see cref="JsonStringBody.Escape"/>: 0..5), held inline.</summary>
[InlineArray(6)]
struct EscapeStates<T>
{
    T _first;
}
