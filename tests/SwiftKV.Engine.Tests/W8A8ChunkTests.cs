// The W8A8 MLP's row chunks (CudaBackend.EvenChunks): computed on the host, so tested without a GPU.
using SwiftKV.Engine.Cuda;
using Xunit;

namespace SwiftKV.Engine.Tests;

public sealed class W8A8ChunkTests
{
    /// <summary>
    /// Consecutive, covering, none above the limit, sizes within one row of each other; and the steps just past a
    /// multiple of the limit (4097, 4100, 8193) or below it end in no chunk of 8 rows or fewer (the GEMV's, with bf16
    /// activations), which fixed-size chunks did (4097 = 4096 + 1).
    /// </summary>
    [Theory]
    [InlineData(1, 4096)]
    [InlineData(9, 4096)]
    [InlineData(4096, 4096)]
    [InlineData(4097, 4096)]
    [InlineData(4100, 4096)]
    [InlineData(8193, 4096)]
    [InlineData(32768, 4096)]
    [InlineData(300, 128)]
    [InlineData(19, 18)]
    [InlineData(131071, 4096)]
    public void EvenChunks_CoverTheRowsInNearEqualChunks(int rows, int most)
    {
        var chunks = CudaBackend.EvenChunks(rows, most).ToList();
        Assert.Equal((rows + most - 1) / most, chunks.Count);
        int next = 0;
        foreach (var (start, count) in chunks)
        {
            Assert.Equal(next, start);
            Assert.InRange(count, 1, most);
            next += count;
        }
        Assert.Equal(rows, next);
        Assert.True(chunks.Max(c => c.Count) - chunks.Min(c => c.Count) <= 1, string.Join(", ", chunks));
        if (rows > 8 && most >= 18) Assert.True(chunks.Min(c => c.Count) > 8, string.Join(", ", chunks));
    }

    [Fact]
    public void EvenChunks_RefusesEmptyShapes()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaBackend.EvenChunks(0, 4096).ToList());
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaBackend.EvenChunks(10, 0).ToList());
    }
}
