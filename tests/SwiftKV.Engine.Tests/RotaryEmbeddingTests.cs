// RoPE frequencies against values computed by hand (Python, double precision) from the llama3 formula in
// SWIFTKV.md for Llama 3.1's settings, one index in each band, plus the rotation itself.
using SwiftKV.Engine.Cpu;
using SwiftKV.Model;
using Xunit;

namespace SwiftKV.Engine.Tests;

public class RotaryEmbeddingTests
{
    static readonly Llama3RopeScaling Llama31 = new(8, 1, 4, 8192);

    [Theory]
    [InlineData(0, 1.0)]                        // wavelength 6.3: high frequency, kept
    [InlineData(10, 0.12868737343265052)]       // wavelength 48.8: kept
    [InlineData(30, 0.0013718935677611381)]     // wavelength 2948: blended band
    [InlineData(40, 3.428102195952591e-05)]     // wavelength 22911: divided by 8
    [InlineData(63, 3.068925988914511e-07)]     // wavelength 2.6e6: divided by 8
    public void ComputeInvFreq_MatchesHandComputedLlama31Values(int i, double expected)
    {
        var inv = RotaryEmbedding.ComputeInvFreq(128, 500000, Llama31);
        Assert.Equal((float)expected, inv[i]);
    }

    [Fact]
    public void ComputeInvFreq_WithoutScalingIsThetaPower()
    {
        var inv = RotaryEmbedding.ComputeInvFreq(16, 10000, null);
        for (int i = 0; i < 8; i++) Assert.Equal((float)Math.Pow(10000, -2.0 * i / 16), inv[i]);
    }

    [Fact]
    public void Rotate_IsRotateHalfLayout()
    {
        // One head of dim 4: pairs (x0, x2) and (x1, x3) rotate by their angles.
        float[] v = [1, 2, 3, 4];
        float[] cos = [0, 1], sin = [1, 0];
        RotaryEmbedding.Rotate(v, 1, cos, sin);
        Assert.Equal([-3f, 2f, 1f, 4f], v);
    }

    [Fact]
    public void Angles_MatchFp32ProductOfInvFreqAndPosition()
    {
        var cfg = new ModelSpec(HeadDim: 16, RopeScaling: true, Heads: 3, KvHeads: 1).Config();
        var rope = new RotaryEmbedding(cfg);
        Span<float> cos = stackalloc float[8], sin = stackalloc float[8];
        rope.Angles(1000, cos, sin);
        for (int i = 0; i < 8; i++)
        {
            float angle = (float)ReferenceModel.InvFreq(i, cfg) * 1000f;
            Assert.Equal(Math.Cos(angle), cos[i], 6);
            Assert.Equal(Math.Sin(angle), sin[i], 6);
        }
    }
}
