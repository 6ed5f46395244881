// A per-sequence rule on which tokens may come next (a grammar, a forced prefix). The generator hands it each
// logits row before sampling and each picked token after, so constraints compose with any sampling settings.
namespace SwiftKV.Engine.Sampling;

/// <summary>Masks disallowed tokens before sampling; stateful, one instance per sequence.</summary>
public interface ILogitsConstraint
{
    /// <summary>Sets the logits of tokens that may not come next to negative infinity (the row is a private copy).</summary>
    void Apply(Span<float> logits);

    /// <summary>
    /// Called before the next row's logits exist, possibly on another thread while the model computes them (never at
    /// the same time as <see cref="Apply"/> or <see cref="Accept"/>): a constraint whose mask depends only on its own
    /// state can compute it here, so Apply only writes it. Optional.
    /// </summary>
    void Prepare() { }

    /// <summary>Advances the constraint's state past the token that was picked.</summary>
    void Accept(int tokenId);
}
