// Finds caller-given stop sequences in streamed text, across token boundaries.
// NOTE: text that could still be the start of a stop sequence is held back until it cannot, so the stop
// text itself is never returned to the caller (OpenAI semantics).
namespace SwiftKV.AI;

internal sealed class StopSequenceMatcher(IReadOnlyList<string> stopSequences)
{
    readonly System.Text.StringBuilder _pending = new();

    /// <summary>Adds newly decoded text; returns what is safe to emit. <paramref name="stopped"/> is set when a stop sequence completed.</summary>
    public string Push(string text, out bool stopped)
    {
        stopped = false;
        if (stopSequences.Count == 0) return text;
        _pending.Append(text);
        string buffer = _pending.ToString();
        int first = -1;
        foreach (var s in stopSequences)
        {
            int at = buffer.IndexOf(s, StringComparison.Ordinal);
            if (at >= 0 && (first < 0 || at < first)) first = at;
        }
        if (first >= 0)
        {
            stopped = true;
            _pending.Clear();
            return buffer[..first];
        }
        int hold = LongestSuffixThatStartsAStop(buffer);
        _pending.Clear().Append(buffer, buffer.Length - hold, hold);
        return buffer[..^hold];
    }

    /// <summary>End of stream: releases held text (it did not become a stop sequence).</summary>
    public string Flush(string text, out bool stopped)
    {
        string emitted = Push(text, out stopped);
        if (stopped) return emitted;
        string rest = _pending.ToString();
        _pending.Clear();
        return emitted + rest;
    }

    int LongestSuffixThatStartsAStop(string buffer)
    {
        int best = 0;
        foreach (var s in stopSequences)
        {
            for (int len = Math.Min(s.Length - 1, buffer.Length); len > best; len--)
            {
                if (buffer.AsSpan(buffer.Length - len).SequenceEqual(s.AsSpan(0, len)))
                {
                    best = len;
                    break;
                }
            }
        }
        return best;
    }
}
