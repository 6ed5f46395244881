// Random logits through a decoding constraint: what a random-weight model would write under it.
using System.Text;
using SwiftKV.Engine.Sampling;
using Xunit;

namespace SwiftKV.Engine.Tests;

internal static class ConstrainedGeneration
{
    /// <summary>
    /// Samples up to <paramref name="maxNewTokens"/> tokens from uniform random logits masked by <paramref name="constraint"/>,
    /// stopping at <paramref name="stop"/>; returns the text of the tokens before it.
    /// </summary>
    public static string Generate(ILogitsConstraint constraint, List<byte[]?> vocab, int stop, int maxNewTokens, ulong seed)
    {
        var rng = new TestRng(seed);
        var sampler = new Sampler(new SamplingParams { Temperature = 1, Seed = seed });
        var text = new List<byte>();
        for (int step = 0; step < maxNewTokens; step++)
        {
            var logits = Enumerable.Range(0, vocab.Count).Select(_ => rng.Uniform(3)).ToArray();
            constraint.Apply(logits);
            int token = sampler.Sample(logits);
            constraint.Accept(token);
            if (token == stop) break;
            Assert.NotNull(vocab[token]);
            text.AddRange(vocab[token]!);
        }
        return Encoding.UTF8.GetString(text.ToArray());
    }
}
