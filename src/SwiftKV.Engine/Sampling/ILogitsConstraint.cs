// A per-sequence rule on which tokens may come next (a grammar, a forced prefix). The generator hands it each
// logits row before sampling and each picked token after, so constraints compose with any sampling settings.
// The serving engine instead calls Apply on a row of zeros, on a thread-pool thread while the model computes the real
// row (never at the same time as this instance's Accept), and masks the real row, on the GPU, wherever Apply wrote
// -inf: so Apply must only mask, whatever the values it is given.
namespace SwiftKV.Engine.Sampling;

/// <summary>Masks disallowed tokens before sampling; stateful, one instance per sequence.</summary>
public interface ILogitsConstraint
{
    /// <summary>
    /// Sets the logits of tokens that may not come next to negative infinity (the row is a private copy) and changes
    /// nothing else; which tokens it masks must not depend on the row's values.
    /// </summary>
    void Apply(Span<float> logits);

    /// <summary>Advances the constraint's state past the token that was picked.</summary>
    void Accept(int tokenId);
}
