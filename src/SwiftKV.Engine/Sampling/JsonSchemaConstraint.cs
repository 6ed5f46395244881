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

    /// <param name="grammar">The compiled schema.</param>
    /// <param name="tokenBytes">Bytes of each token id; null for ids that may never be generated (special tokens).</param>
    /// <param name="stopTokenIds">End-of-turn ids, allowed once the document is complete.</param>
    /// <param name="maxNewTokens">The request's token budget (for closing the document in time).</param>
    /// <param name="prefix">Text already in the answer (e.g. a prefilled start of a tool call) that the grammar must read first.</param>
    public JsonSchemaConstraint(JsonSchemaGrammar grammar, IReadOnlyList<byte[]?> tokenBytes, IReadOnlySet<int> stopTokenIds, int maxNewTokens,
        ReadOnlySpan<byte> prefix = default)
        : this(new JsonSchemaMachine(grammar), tokenBytes, stopTokenIds, maxNewTokens, prefix)
    {
    }

    JsonSchemaConstraint(JsonSchemaMachine machine, IReadOnlyList<byte[]?> tokenBytes, IReadOnlySet<int> stopTokenIds, int maxNewTokens, ReadOnlySpan<byte> prefix)
        : base(machine.AsGrammar(), machine.Start, tokenBytes, stopTokenIds, maxNewTokens, prefix, "a document of the JSON schema")
    {
        _machine = machine;
    }

    /// <inheritdoc />
    public override void Accept(int tokenId)
    {
        base.Accept(tokenId);
        if (_machine.StateCount > MaxStates) Rebase(_machine.Restart(State));
    }
}
