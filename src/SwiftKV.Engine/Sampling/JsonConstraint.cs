// Constrained decoding to one JSON object of any shape (ChatResponseFormat.Json): the grammar is JsonGrammarState,
// a plain struct, so a vocabulary pass copies it per prefix and needs no tables. JsonSchemaConstraint holds an answer
// to a schema's shape instead.
namespace SwiftKV.Engine.Sampling;

/// <summary>Masks logits so the generated text is one JSON object.</summary>
public sealed class JsonConstraint : GrammarConstraint<JsonGrammarState, JsonObjectGrammar>
{
    /// <param name="tokenBytes">Bytes of each token id; null for ids that may never be generated (special tokens).</param>
    /// <param name="stopTokenIds">End-of-turn ids, allowed once the object is complete.</param>
    /// <param name="maxNewTokens">The request's token budget (for closing the JSON in time).</param>
    /// <param name="prefix">Text already in the answer (e.g. a prefilled start of a tool call) that the grammar must read first.</param>
    public JsonConstraint(IReadOnlyList<byte[]?> tokenBytes, IReadOnlySet<int> stopTokenIds, int maxNewTokens, ReadOnlySpan<byte> prefix = default)
        : base(default, default, tokenBytes, stopTokenIds, maxNewTokens, prefix, "a JSON object")
    {
    }
}
