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
    public static string Generate(ILogitsConstraint constraint, List<byte[]?> vocab, int stop, int maxNewTokens, ulong seed, Func<int, float>? bias = null)
    {
        var rng = new TestRng(seed);
        var sampler = new Sampler(new SamplingParams { Temperature = 1, Seed = seed });
        var text = new List<byte>();
        for (int step = 0; step < maxNewTokens; step++)
        {
            var logits = Enumerable.Range(0, vocab.Count).Select(id => rng.Uniform(3) + (bias?.Invoke(id) ?? 0)).ToArray();
            constraint.Apply(logits);
            int token = sampler.Sample(logits);
            constraint.Accept(token);
            if (token == stop) break;
            Assert.NotNull(vocab[token]);
            text.AddRange(vocab[token]!);
        }
        return Encoding.UTF8.GetString(text.ToArray());
    }

    /// <summary>
    /// The longest runs of JSON white space in <paramref name="json"/> between its tokens and inside its strings, found
    /// by a plain scan of quotes and backslashes.
    /// </summary>
    public static (int Between, int Inside) LongestWhitespaceRuns(string json)
    {
        int between = 0, inside = 0, run = 0;
        bool inString = false, escaped = false;
        foreach (char c in json)
        {
            bool white = c is ' ' or '\t' or '\n' or '\r';
            run = white ? run + 1 : 0;
            if (inString) inside = Math.Max(inside, run);
            else between = Math.Max(between, run);
            if (inString && !escaped && c == '"') inString = false;
            else if (!inString && c == '"') inString = true;
            escaped = inString && !escaped && c == '\\';
        }
        return (between, inside);
    }
}
