// The blocks one sequence holds, in position order, plus the hash chain of its full, computed blocks (the keys
// under which those blocks are, or could be, shared through the prefix cache). Owned by KvBlockManager's callers;
// changed only through KvBlockManager.
namespace SwiftKV.Engine.Serving;

/// <summary>A sequence's block table: block i holds positions i*block_size .. (i+1)*block_size - 1.</summary>
public sealed class BlockTable
{
    int[] _blocks = new int[4];
    readonly List<ulong> _hashes = [];

    /// <summary>Blocks held.</summary>
    public int Count { get; private set; }

    /// <summary>The block ids, as a backend reads them.</summary>
    public ReadOnlyMemory<int> Blocks => _blocks.AsMemory(0, Count);

    public int this[int index] => (uint)index < (uint)Count ? _blocks[index] : throw new ArgumentOutOfRangeException(nameof(index));

    /// <summary>Hash-chain keys of the leading full blocks whose K/V are computed (block i's key covers tokens 0..(i+1)*block_size).</summary>
    public IReadOnlyList<ulong> FullBlockHashes => _hashes;

    internal void Add(int block)
    {
        if (Count == _blocks.Length) Array.Resize(ref _blocks, _blocks.Length * 2);
        _blocks[Count++] = block;
    }

    internal void AddHash(ulong hash) => _hashes.Add(hash);

    internal void Clear()
    {
        Count = 0;
        _hashes.Clear();
    }
}
