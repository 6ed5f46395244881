// Constrained decoding to one JSON object: before each sample, every vocabulary entry is tried against a copy of
// the grammar state and masked out unless its bytes continue valid JSON. Stop tokens are allowed only once the
// object is complete, and nothing else is allowed then, so generation ends right after the closing brace.
// NOTE: the budget rule — a token is allowed only if the shortest completion after it still fits the tokens left —
// makes even a random-weight model close its JSON before MaxOutputTokens (every byte is a token in byte-level BPE,
// so a completing step always exists). When the budget is already smaller than the shortest completion (a tiny
// MaxOutputTokens), the rule is dropped: the answer is then cut off mid-JSON and the caller sees FinishReason Length.
// A state's grammar pass (the vocabulary's prefix tree through the recogniser: TokenTrie) is kept with the
// longest shortest-completion any allowed token leaves: while the budget still covers that, the budget rule removes
// nothing and the kept mask is the answer. Inside a string most steps return to one state, so most steps reuse it.
namespace SwiftKV.Engine.Sampling;

/// <summary>Masks logits so the generated text is one JSON object.</summary>
public sealed class JsonConstraint : ILogitsConstraint
{
    readonly IReadOnlyList<byte[]?> _tokenBytes;
    readonly IReadOnlySet<int> _stopTokenIds;
    readonly int _maxNewTokens;
    JsonGrammarState _state;
    int _generated;
    readonly Dictionary<(JsonGrammarState, int), StateMask> _masks = new();
    TokenTrie? _trie;   // the table's, shared by every constraint over it
    const int MaxKeptStates = 8;    // 8 x 128 KB a request at Llama 3's vocabulary

    /// <summary>A state's tokens that continue valid JSON, whether there are any, and the longest completion they leave.</summary>
    sealed record StateMask(bool[] Allowed, bool Any, int LongestCompletion);

    /// <param name="tokenBytes">Bytes of each token id; null for ids that may never be generated (special tokens).</param>
    /// <param name="stopTokenIds">End-of-turn ids, allowed once the object is complete.</param>
    /// <param name="maxNewTokens">The request's token budget (for closing the JSON in time).</param>
    /// <param name="prefix">Text already in the answer (e.g. a prefilled start of a tool call) that the grammar must read first.</param>
    public JsonConstraint(IReadOnlyList<byte[]?> tokenBytes, IReadOnlySet<int> stopTokenIds, int maxNewTokens, ReadOnlySpan<byte> prefix = default)
    {
        ArgumentNullException.ThrowIfNull(tokenBytes);
        ArgumentNullException.ThrowIfNull(stopTokenIds);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxNewTokens);
        _tokenBytes = tokenBytes;
        _stopTokenIds = stopTokenIds;
        _maxNewTokens = maxNewTokens;
        if (!_state.Accept(prefix))
            throw new ArgumentException("The prefix is not the start of a JSON object.", nameof(prefix));
    }

    /// <summary>True once the generated text is a complete JSON object.</summary>
    public bool IsComplete => _state.IsComplete;

    /// <inheritdoc />
    public void Apply(Span<float> logits)
    {
        int vocab = Math.Min(logits.Length, _tokenBytes.Count);
        int budgetAfter = _maxNewTokens - _generated - 1;
        bool enforceBudget = _state.CompletionLength <= budgetAfter + 1;
        bool[] allowed;
        bool any = false;
        var kept = _state.IsComplete ? null : Kept(logits.Length);
        if (kept is not null && (!enforceBudget || kept.LongestCompletion <= budgetAfter))
        {
            (allowed, any) = (kept.Allowed, kept.Any);   // the budget rule removes nothing here
        }
        else
        {
            allowed = new bool[logits.Length];
            for (int id = 0; id < vocab; id++)
            {
                if (_state.IsComplete)
                {
                    allowed[id] = _stopTokenIds.Contains(id);
                }
                else if (kept!.Allowed[id])   // only the tokens the grammar takes can pass the budget rule
                {
                    var next = _state;
                    next.Accept(_tokenBytes[id]!);
                    allowed[id] = next.CompletionLength <= budgetAfter;
                }
                any |= allowed[id];
            }
        }
        if (!any) return; // nothing fits (no stop token known): leave the row alone rather than sample from nothing
        for (int id = 0; id < logits.Length; id++)
            if (!allowed[id]) logits[id] = float.NegativeInfinity;
    }

    /// <summary>The current state's mask without the budget rule, from the kept ones or by a grammar pass.</summary>
    StateMask Kept(int length)
    {
        if (_masks.TryGetValue((_state, length), out var kept)) return kept;
        var pass = new MaskPass { Allowed = new bool[length], Length = length };
        (_trie ??= TokenTrie.For(_tokenBytes)).ForEachAccepted(_state, ref pass);
        if (_masks.Count >= MaxKeptStates) _masks.Clear();
        return _masks[(_state, length)] = new StateMask(pass.Allowed, pass.Any, pass.Longest);
    }

    /// <summary>Collects a grammar pass: the tokens the state accepts and the longest completion they leave.</summary>
    struct MaskPass : ITokenSink
    {
        public bool[] Allowed;
        public int Length, Longest;
        public bool Any;

        public void Token(int id, in JsonGrammarState after)
        {
            if (id >= Length) return;   // a logits row shorter than the token table
            Allowed[id] = Any = true;
            Longest = Math.Max(Longest, after.CompletionLength);
        }
    }

    /// <inheritdoc />
    public void Accept(int tokenId)
    {
        _generated++;
        if (_state.IsComplete || (uint)tokenId >= (uint)_tokenBytes.Count || _tokenBytes[tokenId] is not { } bytes) return;
        var next = _state;
        if (next.Accept(bytes)) _state = next;
    }
}
