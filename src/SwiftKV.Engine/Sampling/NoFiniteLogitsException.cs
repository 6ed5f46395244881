namespace SwiftKV.Engine.Sampling;

/// <summary>
/// A row of logits held nothing above -inf, so no token could be picked: the model computed NaN or infinite values
/// (weights that hold NaN or Inf, or an overflow), or a mask left no token. The request fails with this rather than
/// picking an arbitrary token.
/// </summary>
public sealed class NoFiniteLogitsException : InvalidOperationException
{
    const string What = "every logit is NaN or -inf, so no token can be picked: the model computed NaN or infinite values (a checkpoint " +
                        "whose weights hold NaN or Inf, or an overflow), or a constraint masked every token.";

    public NoFiniteLogitsException()
        : base(What)
    {
    }

    /// <param name="where">Where it happened, put before the explanation ("the request failed at token 3").</param>
    public NoFiniteLogitsException(string where)
        : base($"{where}: {What}")
    {
    }
}
