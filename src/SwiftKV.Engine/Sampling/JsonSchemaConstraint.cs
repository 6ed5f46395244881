// Constrained decoding to a JSON schema's shape (ChatResponseFormat.ForJsonSchema, GetResponseAsync<T>, required
// tool calls): the schema's recogniser (JsonSchemaMachine) under the shared masking and budget rules.
namespace SwiftKV.Engine.Sampling;

/// <summary>Masks logits so the generated text is a document of a compiled JSON schema.</summary>
public sealed class JsonSchemaConstraint : GrammarConstraint<int, JsonSchemaMachine.Grammar>
{
    // A request's states grow with the variety of text its vocabulary passes try; past this many (each up to ~1 KB of
    // transitions) the machine starts over from the current state.
    const int MaxStates = 16_384;

    readonly JsonSchemaMachine _machine;
    readonly JsonSchemaGrammar _grammar;

    /// <param name="grammar">The compiled schema.</param>
    /// <param name="tokenBytes">Bytes of each token id; null for ids that may never be generated (special tokens).</param>
    /// <param name="stopTokenIds">End-of-turn ids, allowed once the document is complete.</param>
    /// <param name="maxNewTokens">The request's token budget (for closing the document in time).</param>
    /// <param name="prefix">Text already in the answer (e.g. a prefilled start of a tool call) that the grammar must read first.</param>
    public JsonSchemaConstraint(JsonSchemaGrammar grammar, IReadOnlyList<byte[]?> tokenBytes, IReadOnlySet<int> stopTokenIds, int maxNewTokens,
        ReadOnlySpan<byte> prefix = default)
        : this(grammar, new JsonSchemaMachine(grammar), tokenBytes, stopTokenIds, maxNewTokens, prefix)
    {
    }

    JsonSchemaConstraint(JsonSchemaGrammar grammar, JsonSchemaMachine machine, IReadOnlyList<byte[]?> tokenBytes, IReadOnlySet<int> stopTokenIds,
        int maxNewTokens, ReadOnlySpan<byte> prefix)
        : base(machine.AsGrammar(), machine.Start, tokenBytes, stopTokenIds, maxNewTokens, prefix, "a document of the JSON schema")
    {
        _grammar = grammar;
        _machine = machine;
    }

    // Requests of one schema pass through the same states: a mask made for one serves the others (each request has
    // its own machine, so states meet by their configurations, not their numbers).
    /// <inheritdoc />
    protected override StateMask? SharedMask(int state, IReadOnlyList<byte[]?> tokenBytes, int length) =>
        _grammar.SharedMasks.TryGetValue((_machine.KeyOf(state), tokenBytes, length), out var mask) ? (StateMask)mask : null;

    /// <inheritdoc />
    protected override void Share(int state, IReadOnlyList<byte[]?> tokenBytes, int length, StateMask mask)
    {
        var masks = _grammar.SharedMasks;
        if (masks.Count >= JsonSchemaGrammar.MaxSharedMasks) masks.Clear();
        masks.TryAdd((_machine.KeyOf(state), tokenBytes, length), mask);
    }

    /// <inheritdoc />
    public override void Accept(int tokenId)
    {
        base.Accept(tokenId);
        if (_machine.StateCount > MaxStates) Rebase(_machine.Restart(State));
    }
}
