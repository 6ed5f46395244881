// A second stream for work that runs beside the backend's own: forked from it at one point, joined back at the end, and
// with one event per KV cache in between, so the backend's stream waits for exactly the cache it is about to read and
// nothing more. The SwiftKV prefill uses it for the SingleInputKV GEMMs (compute-bound) beside the last prompt row's
// later layers (bound by streaming their weights).
using SwiftKV.Cuda;

namespace SwiftKV.Engine.Cuda;

sealed class SideStream : IDisposable
{
    readonly CudaEvent _forked, _done;
    readonly CudaEvent[] _cacheWritten;
    readonly bool[] _writtenSinceFork;

    public SideStream(int caches)
    {
        var owned = new List<IDisposable>();
        try
        {
            _forked = new CudaEvent(timing: false); owned.Add(_forked);
            _done = new CudaEvent(timing: false); owned.Add(_done);
            _cacheWritten = new CudaEvent[caches];
            for (int i = 0; i < caches; i++) { _cacheWritten[i] = new CudaEvent(timing: false); owned.Add(_cacheWritten[i]); }
            _writtenSinceFork = new bool[caches];
            Stream = new CudaStream(nonBlocking: true);   // like the backend's: never ordered with the legacy stream
        }
        catch
        {
            for (int i = owned.Count - 1; i >= 0; i--) owned[i].Dispose();
            throw;
        }
    }

    /// <summary>The side stream: work queued here after <see cref="Fork"/> starts once <c>main</c>'s earlier work is done.</summary>
    public CudaStream Stream { get; }

    /// <summary>Orders the side stream's next work after everything queued on <paramref name="main"/> so far.</summary>
    public void Fork(CudaStream main)
    {
        _forked.Record(main);
        Stream.Wait(_forked);
        Array.Clear(_writtenSinceFork);
    }

    /// <summary>Marks the side work queued so far as what writes cache <paramref name="cacheIndex"/>.</summary>
    public void CacheWritten(int cacheIndex)
    {
        _cacheWritten[cacheIndex].Record(Stream);
        _writtenSinceFork[cacheIndex] = true;
    }

    /// <summary>Makes <paramref name="main"/>'s next work wait until cache <paramref name="cacheIndex"/> is written (if side work writes it).</summary>
    public void WaitForCache(CudaStream main, int cacheIndex)
    {
        if (_writtenSinceFork[cacheIndex]) main.Wait(_cacheWritten[cacheIndex]);
    }

    /// <summary>Makes <paramref name="main"/>'s next work wait for all side work queued so far.</summary>
    public void Join(CudaStream main)
    {
        _done.Record(Stream);
        main.Wait(_done);
    }

    public void Dispose()
    {
        Stream?.Dispose();
        foreach (var e in _cacheWritten ?? []) e?.Dispose();
        _done?.Dispose();
        _forked?.Dispose();
    }
}
