// The random numbers behind ModelMaker: a counter-based SplitMix64 (Steele, Lea & Flood 2014), chosen because it
// is defined bit for bit (System.Random's algorithm may change between .NET versions) and because word i of
// a stream is simply Mix(key + (i + 1)·γ), so any range of a tensor can be produced without producing what
// precedes it. A tensor is cut into fixed chunks of ChunkElements; chunk c's key is derived from (seed, tensor
// name, c). Values therefore depend on nothing but those three, not on thread count or on how a writer blocks
// the tensor.
// Each 64-bit output gives two elements (its high then low 32 bits); an element keeps the top 24 bits of its
// half, which is exactly representable as a float in [0, 1).
using System.Text;

namespace SwiftKV.Model.Checkpoint;

/// <summary>Seeded uniform values for tensors, reproducible on any machine.</summary>
internal static class WeightRandom
{
    /// <summary>Elements per independently seeded chunk (a unit of parallel work).</summary>
    public const int ChunkElements = 1 << 16;

    const ulong Gamma = 0x9E3779B97F4A7C15;

    /// <summary>SplitMix64's output function (a bijection of 64-bit words).</summary>
    public static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
        return z ^ (z >> 31);
    }

    /// <summary>FNV-1a over the UTF-8 bytes: a hash that, unlike string.GetHashCode, is the same in every process.</summary>
    public static ulong NameHash(string name)
    {
        ulong h = 0xCBF29CE484222325;
        foreach (byte b in Encoding.UTF8.GetBytes(name))
            h = (h ^ b) * 0x100000001B3;
        return h;
    }

    public static ulong ChunkKey(ulong seed, ulong nameHash, long chunk) =>
        Mix(Mix(Mix(seed + Gamma) ^ nameHash) + (ulong)chunk * Gamma);

    /// <summary>
    /// Writes elements [<paramref name="first"/>, first + destination.Length) of the tensor named by
    /// <paramref name="nameHash"/>: <paramref name="center"/> + U(-<paramref name="halfWidth"/>, +halfWidth), chunks in parallel.
    /// </summary>
    public static unsafe void FillUniform(ulong seed, ulong nameHash, float center, float halfWidth,
        long first, Span<float> destination, int maxDegreeOfParallelism = -1)
    {
        if (destination.IsEmpty) return;
        long end = first + destination.Length;
        long firstChunk = first / ChunkElements, lastChunk = (end - 1) / ChunkElements;
        fixed (float* pointer = destination)
        {
            nint target = (nint)pointer; // a lambda cannot capture a pointer
            Parallel.For(firstChunk, lastChunk + 1, new ParallelOptions { MaxDegreeOfParallelism = maxDegreeOfParallelism }, c =>
            {
                long from = Math.Max(first, c * ChunkElements), to = Math.Min(end, (c + 1) * ChunkElements);
                var span = new Span<float>((float*)target + (from - first), (int)(to - from));
                FillChunk(ChunkKey(seed, nameHash, c), (int)(from - c * ChunkElements), center, halfWidth, span);
            });
        }
    }

    /// <summary>Elements [<paramref name="offset"/>, offset + destination.Length) of the chunk stream <paramref name="key"/>.</summary>
    static void FillChunk(ulong key, int offset, float center, float halfWidth, Span<float> destination)
    {
        const float Unit = 1f / (1 << 24);
        float scale = 2 * halfWidth * Unit, low = center - halfWidth;
        int i = 0, pair = offset >> 1;
        if ((offset & 1) == 1 && destination.Length > 0)
            destination[i++] = low + ((uint)Word(key, pair++) >> 8) * scale;
        for (; i + 1 < destination.Length; i += 2)
        {
            ulong word = Word(key, pair++);
            destination[i] = low + ((uint)(word >> 32) >> 8) * scale;
            destination[i + 1] = low + ((uint)word >> 8) * scale;
        }
        if (i < destination.Length)
            destination[i] = low + ((uint)(Word(key, pair) >> 32) >> 8) * scale;
    }

    static ulong Word(ulong key, int index) => Mix(key + (ulong)(index + 1) * Gamma);
}
