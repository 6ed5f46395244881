// What one generation did, filled in while its token stream is enumerated.
namespace SwiftKV.Engine.Generation;

/// <summary>Why generation ended.</summary>
public enum FinishReason
{
    /// <summary>A stop token was sampled (and not emitted).</summary>
    Stop,
    /// <summary>maxNewTokens was reached or the cache is full.</summary>
    Length,
}

/// <summary>Counters and timings of one <see cref="Generator.Generate"/> call; read them during or after enumeration.</summary>
public sealed class GenerationStats
{
    public int PromptTokens { get; internal set; }
    /// <summary>Tokens yielded so far (a stop token is not counted).</summary>
    public int OutputTokens { get; internal set; }
    /// <summary>Forward passes the prompt took (1 unless the caller bounded them): with SwiftKV, the last row of each
    /// runs the later layers, so the prompt tokens that skipped them are PromptTokens minus this.</summary>
    public int PrefillPasses { get; internal set; }
    /// <summary>Time of the prefill forward pass.</summary>
    public TimeSpan PrefillTime { get; internal set; }
    /// <summary>Time of the decode forward passes and sampling, excluding time spent by the consumer.</summary>
    public TimeSpan DecodeTime { get; internal set; }
    /// <summary>From the start of generation until the first token was sampled.</summary>
    public TimeSpan? TimeToFirstToken { get; internal set; }
    /// <summary>Null until generation ends.</summary>
    public FinishReason? FinishReason { get; internal set; }

    /// <summary>Decode throughput in tokens per second (tokens after the first over decode time).</summary>
    public double DecodeTokensPerSecond =>
        DecodeTime > TimeSpan.Zero && OutputTokens > 1 ? (OutputTokens - 1) / DecodeTime.TotalSeconds : 0;
}
