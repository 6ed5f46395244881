// KvBlockManager bookkeeping: allocation, sharing of full prefix blocks, the hash chain, LRU eviction, and the
// never-over-commit rule. Pure bookkeeping: no model.
using SwiftKV.Engine.Serving;
using Xunit;

namespace SwiftKV.Engine.Tests.Serving;

public class KvBlockManagerTests
{
    static int[] Seq(int n, int offset = 0) => Enumerable.Range(offset, n).ToArray();

    static BlockTable Admit(KvBlockManager m, int[] tokens, out int cached, int reserve = 0)
    {
        var t = new BlockTable();
        cached = m.TryAllocatePrefix(t, tokens, tokens.Length, reserve);
        return t;
    }

    [Fact]
    public void TryAllocatePrefix_NothingCached_AllocatesBlocksForEveryToken()
    {
        var m = new KvBlockManager(10, 4);
        var t = Admit(m, Seq(9), out int cached);
        Assert.Equal(0, cached);
        Assert.Equal(3, t.Count);
        Assert.Equal(3, m.UsedBlocks);
        Assert.Equal(7, m.FreeBlocks);
    }

    [Fact]
    public void TryAllocatePrefix_CommittedPrefix_SharesFullBlocksOnly()
    {
        var m = new KvBlockManager(10, 4);
        var a = Admit(m, Seq(10), out _);
        m.CommitFullBlocks(a, Seq(10), 10);      // blocks 0,1 full; block 2 partial (never shared)
        Assert.Equal(2, a.FullBlockHashes.Count);

        var tokensB = Seq(8).Concat(new[] { 50, 51, 52 }).ToArray();
        var b = Admit(m, tokensB, out int cached);
        Assert.Equal(8, cached);
        Assert.Equal(a[0], b[0]);
        Assert.Equal(a[1], b[1]);
        Assert.NotEqual(a[2], b[2]);
        Assert.Equal(2, m.RefCount(a[0]));
        Assert.Equal(4, m.UsedBlocks);
        Assert.Equal(21, m.QueriedTokens);
        Assert.Equal(8, m.HitTokens);
    }

    [Fact]
    public void TryAllocatePrefix_WholePromptCached_LeavesLastTokenToCompute()
    {
        var m = new KvBlockManager(10, 4);
        var a = Admit(m, Seq(8), out _);
        m.CommitFullBlocks(a, Seq(8), 8);
        var b = Admit(m, Seq(8), out int cached);
        // Both blocks are cached, but the last token's logits must come from somewhere: block 1 is recomputed privately.
        Assert.Equal(4, cached);
        Assert.Equal(a[0], b[0]);
        Assert.NotEqual(a[1], b[1]);
    }

    [Fact]
    public void TryAllocatePrefix_DifferentEarlierBlock_BreaksTheChain()
    {
        var m = new KvBlockManager(10, 4);
        var tokens = Seq(12);
        var a = Admit(m, tokens, out _);
        m.CommitFullBlocks(a, tokens, 12);
        var changed = (int[])tokens.Clone();
        changed[1] = 99;                          // block 0 differs; blocks 1, 2 equal but their parent key differs
        Admit(m, changed, out int cached);
        Assert.Equal(0, cached);
    }

    [Fact]
    public void Free_CachedBlocksStayReusableUntilEvicted_LruFirst()
    {
        var m = new KvBlockManager(4, 2);
        var x = Admit(m, Seq(4), out _);               // 2 blocks
        m.CommitFullBlocks(x, Seq(4), 4);
        var y = Admit(m, Seq(4, 100), out _);          // 2 blocks, pool full
        m.CommitFullBlocks(y, Seq(4, 100), 4);
        m.Free(x);
        m.Free(y);
        Assert.Equal(0, m.UsedBlocks);
        Assert.Equal(4, m.CachedFreeBlocks);

        // A new 2-block sequence evicts the least recently freed cached blocks (x's), keeping y's.
        var z = Admit(m, Seq(3, 200), out _);
        Assert.Equal(2, m.Evictions);
        m.Free(z);
        Admit(m, Seq(5, 100), out int hitY);
        Assert.Equal(4, hitY);
    }

    [Fact]
    public void TryAllocatePrefix_NotEnoughFree_FailsWithoutChange()
    {
        var m = new KvBlockManager(5, 4);
        Admit(m, Seq(12), out _);                      // 3 of 5
        var t = new BlockTable();
        Assert.Equal(-1, m.TryAllocatePrefix(t, Seq(9), 9));          // needs 3, 2 free
        Assert.Equal(-1, m.TryAllocatePrefix(t, Seq(8), 8, reserveBlocks: 1)); // needs 2, would leave 0 < 1
        Assert.Equal(0, t.Count);
        Assert.Equal(3, m.UsedBlocks);
        Assert.Equal(0, m.QueriedTokens - 12);
        Assert.True(m.TryAllocatePrefix(t, Seq(8), 8) >= 0);
        Assert.Equal(5, m.UsedBlocks);
        Assert.False(m.TryGrow(t, 9));
        Assert.Equal(2, t.Count);
    }

    [Fact]
    public void TryGrow_AddsBlocksOnlyAtBoundaries()
    {
        var m = new KvBlockManager(6, 4);
        var t = Admit(m, Seq(4), out _);
        Assert.True(m.TryGrow(t, 4));
        Assert.Equal(1, t.Count);
        Assert.True(m.TryGrow(t, 5));
        Assert.Equal(2, t.Count);
        Assert.True(m.TryGrow(t, 8));
        Assert.Equal(2, t.Count);
    }

    [Fact]
    public void CommitFullBlocks_DuplicateContent_KeepsFirstCopyAndFreesSecondUncached()
    {
        var m = new KvBlockManager(6, 4);
        var a = Admit(m, Seq(6), out _);
        var b = Admit(m, Seq(6), out int cached);      // computed concurrently: no hit yet
        Assert.Equal(0, cached);
        m.CommitFullBlocks(a, Seq(6), 6);
        m.CommitFullBlocks(b, Seq(6), 6);
        Assert.Equal(a.FullBlockHashes, b.FullBlockHashes);
        m.Free(b);
        Assert.Equal(0, m.CachedFreeBlocks);           // b's copy was never registered
        m.Free(a);
        Assert.Equal(1, m.CachedFreeBlocks);
        Assert.Equal(0, m.UsedBlocks);
    }

    [Fact]
    public void PrefixCachingDisabled_NeverHits()
    {
        var m = new KvBlockManager(10, 2, enablePrefixCaching: false);
        var a = Admit(m, Seq(6), out _);
        m.CommitFullBlocks(a, Seq(6), 6);
        Admit(m, Seq(6), out int cached);
        Assert.Equal(0, cached);
        m.Free(a);
        Assert.Equal(0, m.CachedFreeBlocks);
    }
}
