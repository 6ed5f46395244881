// The two 8-bit float formats safetensors names (OCP FP8, as torch.float8_e4m3fn and torch.float8_e5m2 store them).
// Each decodes through a 256-entry table built once from the format's definition:
//   E4M3 ("fn"): bias 7, no infinities, S.1111.111 is NaN, largest finite 448; subnormals 2^-6 * m/8.
//   E5M2:        IEEE-like, bias 15, exponent 31 is inf (m = 0) or NaN; subnormals 2^-14 * m/4.
// NOTE: a raw fp8 weight is meaningless without the scale stored beside it, so TensorDtypes.ConvertsToFloat32 stays
// false for these types; only ScaledFp8Tensor reads them.
namespace SwiftKV.Model.Checkpoint;

/// <summary>Decodes fp8 codes to fp32.</summary>
public static class Float8
{
    static readonly float[] E4M3 = Table(exponentBits: 4, mantissaBits: 3, bias: 7, hasInfinity: false);
    static readonly float[] E5M2 = Table(exponentBits: 5, mantissaBits: 2, bias: 15, hasInfinity: true);

    /// <summary>True for F8_E4M3 and F8_E5M2.</summary>
    public static bool IsFloat8(this TensorDtype dtype) => dtype is TensorDtype.F8E4M3 or TensorDtype.F8E5M2;

    /// <summary>The 256 values of <paramref name="dtype"/>, by code (a device decoder uploads this table).</summary>
    public static ReadOnlySpan<float> Values(TensorDtype dtype) => TableOf(dtype);

    /// <summary>The value of one code.</summary>
    public static float ToSingle(byte code, TensorDtype dtype) => TableOf(dtype)[code];

    /// <summary>Decodes <paramref name="source"/> into <paramref name="destination"/> (same length).</summary>
    public static void ToFloat32(ReadOnlySpan<byte> source, TensorDtype dtype, Span<float> destination)
    {
        if (source.Length != destination.Length)
            throw new ArgumentException($"{source.Length} fp8 codes do not fill {destination.Length} values.");
        var table = TableOf(dtype);
        for (int i = 0; i < source.Length; i++) destination[i] = table[source[i]];
    }

    /// <summary>
    /// The e4m3 code nearest <paramref name="value"/>, ties to the even code, saturating to +-448 (as CUDA's
    /// cvt.rn.satfinite.e4m3x2.f32 and torch's float8_e4m3fn cast of a clamped value round); NaN gives the NaN code.
    /// </summary>
    public static byte ToE4m3(float value)
    {
        if (float.IsNaN(value)) return 0x7F;
        byte sign = (byte)(float.IsNegative(value) ? 0x80 : 0);
        float m = MathF.Abs(value);
        // Codes 0x00..0x7E are the magnitudes in increasing order: the largest not above m, then the nearer of it and the next.
        int lo = 0, hi = 0x7E;
        if (m >= E4M3[0x7E]) return (byte)(sign | 0x7E);
        while (lo < hi)
        {
            int mid = (lo + hi + 1) >> 1;
            if (E4M3[mid] <= m) lo = mid; else hi = mid - 1;
        }
        float below = E4M3[lo], above = E4M3[lo + 1];
        // The midpoint of two neighbours has one more significant bit than they do: exact in fp32, so the compare is exact.
        float mid2 = below + (above - below) / 2;
        int code = m < mid2 ? lo : m > mid2 ? lo + 1 : (lo & 1) == 0 ? lo : lo + 1;
        return (byte)(sign | code);
    }

    static float[] TableOf(TensorDtype dtype) => dtype switch
    {
        TensorDtype.F8E4M3 => E4M3,
        TensorDtype.F8E5M2 => E5M2,
        _ => throw new ArgumentException($"{dtype.SafetensorsName()} is not an fp8 type.", nameof(dtype)),
    };

    static float[] Table(int exponentBits, int mantissaBits, int bias, bool hasInfinity)
    {
        var table = new float[256];
        int maxExponent = (1 << exponentBits) - 1, mantissaMax = (1 << mantissaBits) - 1;
        for (int code = 0; code < 256; code++)
        {
            int sign = code >> 7, exponent = (code >> mantissaBits) & maxExponent, mantissa = code & mantissaMax;
            double magnitude;
            if (hasInfinity && exponent == maxExponent)
                magnitude = mantissa == 0 ? double.PositiveInfinity : double.NaN;
            else if (!hasInfinity && exponent == maxExponent && mantissa == mantissaMax)
                magnitude = double.NaN;
            else if (exponent == 0)
                magnitude = Math.ScaleB(mantissa / (double)(1 << mantissaBits), 1 - bias);
            else
                magnitude = Math.ScaleB(1 + mantissa / (double)(1 << mantissaBits), exponent - bias);
            table[code] = (float)(sign == 1 ? -magnitude : magnitude);
        }
        return table;
    }
}
