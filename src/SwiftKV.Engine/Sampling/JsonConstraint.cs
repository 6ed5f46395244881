// Constrained decoding to one JSON object: before each sample, every vocabulary entry is tried against a copy of
// the grammar state and masked out unless its bytes continue valid JSON. Stop tokens are allowed only once the
// object is complete, and nothing else is allowed then, so generation ends right after the closing brace.
// NOTE: the budget rule — a token is allowed only if the shortest completion after it still fits the tokens left —
// makes even a random-weight model close its JSON before MaxOutputTokens (every byte is a token in byte-level BPE,
// so a completing step always exists). When the budget is already smaller than the shortest completion (a tiny
// MaxOutputTokens), the rule is dropped: the answer is then cut off mid-JSON and the caller sees FinishReason Length.
// The mask depends only on the grammar state, not on the logits, so Prepare can compute it while the model runs
// (the serving engine does, on a worker thread); Apply then only writes it.
namespace SwiftKV.Engine.Sampling;

/// <summary>Masks logits so the generated text is one JSON object.</summary>
public sealed class JsonConstraint : ILogitsConstraint
{
    readonly IReadOnlyList<byte[]?> _tokenBytes;
    readonly IReadOnlySet<int> _stopTokenIds;
    readonly int _maxNewTokens;
    JsonGrammarState _state;
    int _generated;
    bool[]? _mask;          // Prepare's result (null: nothing fits), valid while _maskAt == _generated
    int _maskAt = -1;

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
    /// <remarks>Computes the allowed set for the next token (one pass over the vocabulary through the grammar).</remarks>
    public void Prepare()
    {
        if (_maskAt == _generated) return;
        _mask = Allowed();
        _maskAt = _generated;
    }

    /// <inheritdoc />
    public void Apply(Span<float> logits)
    {
        Prepare();
        // Nothing fits (no stop token known): leave the row alone rather than sample from nothing.
        if (_mask is not { } allowed || !allowed.AsSpan(0, Math.Min(allowed.Length, logits.Length)).Contains(true)) return;
        for (int id = 0; id < logits.Length; id++)
            if (id >= allowed.Length || !allowed[id]) logits[id] = float.NegativeInfinity;
    }

    /// <summary>Which token ids may come next (ids past the token table never may); null when none may.</summary>
    bool[]? Allowed()
    {
        int vocab = _tokenBytes.Count;
        int budgetAfter = _maxNewTokens - _generated - 1;
        bool enforceBudget = _state.CompletionLength <= budgetAfter + 1;
        var allowed = new bool[vocab];
        bool any = false;
        for (int id = 0; id < vocab; id++)
        {
            if (_state.IsComplete)
            {
                allowed[id] = _stopTokenIds.Contains(id);
            }
            else if (_tokenBytes[id] is { Length: > 0 } bytes)
            {
                var next = _state;
                allowed[id] = next.Accept(bytes) && (!enforceBudget || next.CompletionLength <= budgetAfter);
            }
            any |= allowed[id];
        }
        return any ? allowed : null;
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
