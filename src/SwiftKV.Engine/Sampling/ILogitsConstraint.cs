// A per-sequence rule on which tokens may come next (a grammar, a forced prefix). The generator hands it each
// logits row before sampling and each picked token after, so constraints compose with any sampling settings.
namespace SwiftKV.Engine.Sampling;

/// <summary>Masks disallowed tokens before sampling; stateful, one instance per sequence.</summary>
public interface ILogitsConstraint
{
    /// <summary>Sets the logits of tokens that may not come next to negative infinity (the row is a private copy).</summary>
    void Apply(Span<float> logits);

    /// <summary>Advances the constraint's state past the token that was picked.</summary>
    void Accept(int tokenId);
}
