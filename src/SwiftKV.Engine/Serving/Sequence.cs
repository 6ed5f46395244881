// One request's state inside the engine: its known tokens (prompt, then every sampled token) and how many of them
// have K/V in the cache. The scheduler only ever moves "computed" toward "known"; the engine appends known tokens.
namespace SwiftKV.Engine.Serving;

internal enum SequenceStatus { Waiting, Running, Finished }

internal sealed class Sequence
{
    readonly int[] _tokens;

    public Sequence(long id, ReadOnlySpan<int> prompt, int maxTokens)
    {
        Id = id;
        _tokens = new int[prompt.Length + maxTokens];
        prompt.CopyTo(_tokens);
        PromptLength = KnownTokens = prompt.Length;
        MaxTokens = maxTokens;
    }

    public long Id { get; }
    public int PromptLength { get; }
    public int MaxTokens { get; }
    /// <summary>Prompt plus sampled tokens.</summary>
    public int KnownTokens { get; private set; }
    /// <summary>Leading tokens whose K/V are in the cache.</summary>
    public int ComputedTokens { get; set; }
    public int OutputTokens => KnownTokens - PromptLength;
    public BlockTable Blocks { get; } = new();
    public SequenceStatus Status { get; set; } = SequenceStatus.Waiting;
    /// <summary>Prompt tokens found in the prefix cache at first admission (-1 until admitted).</summary>
    public int CachedPromptTokens { get; set; } = -1;
    public int Preemptions { get; set; }
    /// <summary>Set from any thread by cancellation; the loop acts on it between steps.</summary>
    public volatile bool CancelRequested;

    public ReadOnlySpan<int> Tokens => _tokens.AsSpan(0, KnownTokens);
    public ReadOnlyMemory<int> TokenMemory(int start, int count) => _tokens.AsMemory(start, count);

    public void Append(int token) => _tokens[KnownTokens++] = token;
}
