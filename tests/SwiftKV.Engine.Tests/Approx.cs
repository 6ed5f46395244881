// Tolerance checks for fp32 engine output against the double-precision reference.
using Xunit;

namespace SwiftKV.Engine.Tests;

public static class Approx
{
    /// <summary>Asserts |actual - expected| <= tol · max(1, max|expected|) over one row of logits.</summary>
    public static void Row(ReadOnlySpan<float> actual, double[] expected, double tol, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = Math.Max(1, expected.Max(Math.Abs)), worst = 0;
        int at = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double d = Math.Abs(actual[i] - expected[i]);
            if (d > worst) (worst, at) = (d, i);
        }
        Assert.True(worst <= tol * scale, $"{what}: max |diff| {worst:E3} at {at} (got {actual[at]}, expected {expected[at]}), allowed {tol * scale:E3}");
    }

    /// <summary>Asserts max|actual - expected| / max|expected| <= tol over one row (robust to logits near zero).</summary>
    public static void RowRelative(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double tol, string what)
    {
        double rel = RowError(expected, actual);
        Assert.True(rel <= tol, $"{what}: relative error {rel:E2} > {tol:E0}");
    }

    /// <summary>max|actual - expected| / max|expected| over one row.</summary>
    public static double RowError(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        double maxDiff = 0, maxRef = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            maxDiff = Math.Max(maxDiff, Math.Abs(expected[i] - actual[i]));
            maxRef = Math.Max(maxRef, Math.Abs(expected[i]));
        }
        return maxDiff / Math.Max(maxRef, 1e-30);
    }

    public static void Rows(float[] actual, double[][] expected, double tol, string what)
    {
        int vocab = expected[0].Length;
        Assert.Equal(expected.Length * vocab, actual.Length);
        for (int r = 0; r < expected.Length; r++)
            Row(actual.AsSpan(r * vocab, vocab), expected[r], tol, $"{what} row {r}");
    }

    public static void Same(float[] a, float[] b, double tol, string what)
    {
        Assert.Equal(a.Length, b.Length);
        for (int i = 0; i < a.Length; i++)
            Assert.True(Math.Abs(a[i] - b[i]) <= tol, $"{what}: index {i}: {a[i]} vs {b[i]}");
    }
}
