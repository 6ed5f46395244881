// CpuBackend.ForwardBatch against CpuBackend.Forward run one sequence at a time (itself tested against the
// double-precision reference): every sequence's logits must be BITWISE equal to its solo logits, whatever the
// chunking, block layout and batch neighbours. Plus the SwiftKV row cut, AcrossKV memory and input validation.
using SwiftKV.Engine.Cpu;
using SwiftKV.Engine.Serving;
using Xunit;

namespace SwiftKV.Engine.Tests.Serving;

public class BatchedForwardTests
{
    public static TheoryData<string> Specs => new(SpecTable.Keys);

    internal static readonly Dictionary<string, (ModelSpec Spec, bool SwiftKv)> SpecTable = new()
    {
        ["llama gqa2 bias"] = (new ModelSpec(Bias: true, Seed: 11), false),
        ["swiftkv 50% on"] = (new ModelSpec(SwiftKvLayers: 2, Seed: 12), true),
        ["swiftkv 50% acrosskv g=2 on"] = (new ModelSpec(SwiftKvLayers: 2, GroupSize: 2, Seed: 13, RopeScaling: true), true),
        ["swiftkv 50% acrosskv g=2 off (teacher)"] = (new ModelSpec(SwiftKvLayers: 2, GroupSize: 2, Seed: 13), false),
    };

    /// <summary>Solo logits of the last token after feeding <paramref name="tokens"/> in one Forward call.</summary>
    static float[] Solo(CpuBackend backend, int[] tokens)
    {
        using var cache = backend.CreateCache(tokens.Length);
        return backend.Forward(cache, tokens, LogitsSelection.LastToken);
    }

    [Theory]
    [MemberData(nameof(Specs))]
    public void ForwardBatch_MixedChunksAndDecodes_BitwiseEqualSolo(string name)
    {
        var (spec, swift) = SpecTable[name];
        using var backend = new CpuBackend(TestModels.Build(spec, swift));
        int vocab = backend.Config.VocabSize, bs = 4;
        using var kv = backend.CreatePagedKvCache(64, bs);
        // Five sequences of different lengths; blocks handed out interleaved (and reversed) so tables are scattered.
        int[] lengths = [13, 7, 1, 22, 9];
        var seqs = lengths.Select((n, i) => TestModels.RandomTokens(n, vocab, 100 + (ulong)i)).ToArray();
        var tables = lengths.Select(_ => new List<int>()).ToArray();
        int next = 63;
        for (int b = 0; b < 6; b++)
            for (int s = 0; s < seqs.Length; s++)
                if (tables[s].Count * bs < seqs[s].Length) tables[s].Add(next--);
        var done = new int[seqs.Length];

        // Step plan: chunk sizes per step per sequence (0 = sits out), ending every sequence at its length.
        int[][] plan = [[5, 3, 1, 8, 9], [4, 4, 0, 8, 0], [4, 0, 0, 6, 0]];
        foreach (var chunkSizes in plan)
        {
            var batch = new List<BatchSequence>();
            var members = new List<int>();
            for (int s = 0; s < seqs.Length; s++)
            {
                if (chunkSizes[s] == 0) continue;
                bool last = done[s] + chunkSizes[s] == seqs[s].Length;
                batch.Add(new BatchSequence(seqs[s].AsMemory(done[s], chunkSizes[s]), done[s], tables[s].ToArray(), last));
                members.Add(s);
            }
            var logits = backend.ForwardBatch(kv, batch.ToArray());
            int row = 0;
            for (int i = 0; i < members.Count; i++)
            {
                int s = members[i];
                done[s] += chunkSizes[s];
                if (!batch[i].NeedsLogits) continue;
                var expected = Solo(backend, seqs[s]);
                Assert.Equal(expected, logits.AsSpan(row++ * vocab, vocab).ToArray());
            }
            Assert.Equal(row * vocab, logits.Length);
        }
        Assert.Equal(lengths, done);
    }

    [Theory]
    [MemberData(nameof(Specs))]
    public void ForwardBatch_DecodeAfterChunkedPrefill_BitwiseEqualSolo(string name)
    {
        var (spec, swift) = SpecTable[name];
        using var backend = new CpuBackend(TestModels.Build(spec, swift));
        int vocab = backend.Config.VocabSize;
        using var kv = backend.CreatePagedKvCache(8, 3);
        var tokens = TestModels.RandomTokens(12, vocab, 7);
        int[] table = [5, 0, 7, 2];
        backend.ForwardBatch(kv, [new BatchSequence(tokens.AsMemory(0, 4), 0, table, false)]);
        backend.ForwardBatch(kv, [new BatchSequence(tokens.AsMemory(4, 6), 4, table, false)]);
        for (int t = 10; t < 12; t++)
        {
            var logits = backend.ForwardBatch(kv, [new BatchSequence(tokens.AsMemory(t, 1), t, table, true)]);
            Assert.Equal(Solo(backend, tokens[..(t + 1)]), logits);
        }
    }

    [Fact]
    public void ForwardBatch_NoSequenceNeedsLogits_ReturnsEmpty()
    {
        using var backend = new CpuBackend(TestModels.Build(new ModelSpec(SwiftKvLayers: 2, Seed: 3)));
        using var kv = backend.CreatePagedKvCache(4, 4);
        var logits = backend.ForwardBatch(kv, [new BatchSequence(new[] { 1, 2, 3 }, 0, new[] { 1 }, false)]);
        Assert.Empty(logits);
    }

    [Fact]
    public void KvBytes_AcrossKvShrinksBlocks()
    {
        var spec = new ModelSpec(Layers: 6, SwiftKvLayers: 2, GroupSize: 4, Hidden: 32, HeadDim: 16, Heads: 4, KvHeads: 1, Seed: 8);
        var full = TestModels.Checkpoint(spec);
        using var on = new CpuBackend(TestModels.View(full, true));
        using var off = new CpuBackend(TestModels.View(full, false));
        using var kvOn = on.CreatePagedKvCache(10, 16);
        using var kvOff = off.CreatePagedKvCache(10, 16);
        // 2 full layers + 1 group cache vs 6 layer caches; 2 (K and V) x 16 positions x 16 floats x 4 bytes each.
        Assert.Equal(3, kvOn.NumCaches);
        Assert.Equal(6, kvOff.NumCaches);
        Assert.Equal(3L * 2 * 16 * 16 * 4, kvOn.BytesPerBlock);
        Assert.Equal(kvOn.BytesPerBlock, on.KvBytesPerToken * 16);
        Assert.Equal(2 * kvOn.BytesPerBlock, kvOff.BytesPerBlock);
    }

    [Fact]
    public void ForwardBatch_BadInput_NamesTheProblem()
    {
        using var backend = new CpuBackend(TestModels.Build(new ModelSpec(Seed: 3)));
        using var kv = backend.CreatePagedKvCache(4, 4);
        using var other = new CpuBackend(TestModels.Build(new ModelSpec(Seed: 3)));
        using var foreign = other.CreatePagedKvCache(4, 4);

        Assert.Contains("no tokens", Assert.Throws<ArgumentException>(() => backend.ForwardBatch(kv, [new BatchSequence(Array.Empty<int>(), 0, new[] { 0 }, true)])).Message);
        Assert.Contains("token id 500", Assert.Throws<ArgumentException>(() => backend.ForwardBatch(kv, [new BatchSequence(new[] { 500 }, 0, new[] { 0 }, true)])).Message);
        Assert.Contains("block table has 1 blocks", Assert.Throws<ArgumentException>(() => backend.ForwardBatch(kv, [new BatchSequence(new[] { 1, 2 }, 3, new[] { 0 }, true)])).Message);
        Assert.Contains("block id 9", Assert.Throws<ArgumentException>(() => backend.ForwardBatch(kv, [new BatchSequence(new[] { 1 }, 0, new[] { 9 }, true)])).Message);
        Assert.Contains("not created by this backend", Assert.Throws<ArgumentException>(() => backend.ForwardBatch(foreign, [new BatchSequence(new[] { 1 }, 0, new[] { 0 }, true)])).Message);
        Assert.Throws<ArgumentException>(() => backend.ForwardBatch(kv, ReadOnlySpan<BatchSequence>.Empty));
    }
}
