// Fp32Conversion against bit patterns from the IEEE / bfloat16 definitions and against exact double arithmetic.
using SwiftKV.Model.Checkpoint;
using Xunit;

namespace SwiftKV.Model.Tests.Checkpoint;

public sealed class Fp32ConversionTests
{
    [Theory]
    [InlineData((ushort)0x3F80, 1f)]
    [InlineData((ushort)0xC040, -3f)]
    [InlineData((ushort)0x0000, 0f)]
    [InlineData((ushort)0x4049, 3.140625f)]
    [InlineData((ushort)0x7F80, float.PositiveInfinity)]
    [InlineData((ushort)0xFF80, float.NegativeInfinity)]
    public void BFloat16BitsToSingle_KnownPatterns_Decode(ushort bits, float expected) =>
        Assert.Equal(expected, Fp32Conversion.BFloat16BitsToSingle(bits));

    [Theory]
    [InlineData(1f + 1f / 256, (ushort)0x3F80)] // halfway between 1 and 1+2^-7: ties to the even 0x3F80
    [InlineData(1f + 3f / 256, (ushort)0x3F82)] // halfway between 0x3F81 and 0x3F82: ties to even 0x3F82
    [InlineData(1f + 1f / 256 + 1f / 65536, (ushort)0x3F81)] // just above halfway rounds up
    [InlineData(float.MaxValue, (ushort)0x7F80)] // beyond bf16's largest finite value: +inf, as torch gives
    [InlineData(-0f, (ushort)0x8000)]
    public void SingleToBFloat16Bits_EdgeCases_RoundToNearestEven(float value, ushort expected) =>
        Assert.Equal(expected, Fp32Conversion.SingleToBFloat16Bits(value));

    [Fact]
    public void SingleToBFloat16Bits_NaN_StaysNaN() =>
        Assert.True(float.IsNaN(Fp32Conversion.BFloat16BitsToSingle(Fp32Conversion.SingleToBFloat16Bits(float.NaN))));

    [Fact]
    public void SingleToBFloat16Bits_RandomFinite_PicksNearestNeighbourTiesEven()
    {
        var rng = new Random(1234);
        for (int i = 0; i < 20000; i++)
        {
            float x = BitConverter.Int32BitsToSingle(rng.Next()) * (rng.Next(2) == 0 ? 1 : -1);
            if (!float.IsFinite(x) || Math.Abs(x) > 3.3e38f) continue;
            ushort got = Fp32Conversion.SingleToBFloat16Bits(x);
            // Reference: the two bf16 values around x by truncation, compared in exact double arithmetic.
            ushort down = (ushort)(BitConverter.SingleToUInt32Bits(x) >> 16);
            ushort up = (ushort)(down + 1);
            double dDown = Math.Abs(Fp32Conversion.BFloat16BitsToSingle(down) - (double)x);
            double dUp = Math.Abs(Fp32Conversion.BFloat16BitsToSingle(up) - (double)x);
            ushort expected = dDown < dUp ? down : dUp < dDown ? up : (down % 2 == 0 ? down : up);
            Assert.Equal(expected, got);
        }
    }

    [Fact]
    public void RoundTrip_F16_MatchesHalfCast()
    {
        float[] values = [0f, 1f, -2.5f, 65504f, 1e-7f, 3.14159f, 70000f];
        var bytes = new byte[values.Length * 2];
        Fp32Conversion.FromFloat32(values, TensorDtype.F16, bytes);
        var back = new float[values.Length];
        Fp32Conversion.ToFloat32(bytes, TensorDtype.F16, back);
        Assert.Equal(values.Select(v => (float)(Half)v), back);
    }

    [Fact]
    public void ToFloat32_LengthMismatch_Throws() =>
        Assert.Throws<ArgumentException>(() => Fp32Conversion.ToFloat32(new byte[6], TensorDtype.F32, new float[2]));
}
