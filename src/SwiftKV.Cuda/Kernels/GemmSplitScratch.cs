// Global scratch of the stream-K tail of our Hopper GEMMs (native-kernels/gemm_common.cuh, consume_tiles): per CTA of the
// persistent grid one slot of partial sums (2 warpgroups x 128 accumulators x 128 threads, fp32) for the unit it
// splits with the previous cluster, then one flag per CTA, zero between launches (the kernel clears what it set).
// Owned by one launcher and used in its stream order only: two launches in flight at once would share the slots.
namespace SwiftKV.Cuda.Kernels;

sealed class GemmSplitScratch : IDisposable
{
    const int SlotFloats = 2 * 128 * 128;
    DeviceBuffer<float>? _buffer;
    int _ctas;

    /// <summary>The scratch for a grid of <paramref name="ctas"/> CTAs (allocated on first use at the largest grid asked).</summary>
    public ulong For(int ctas)
    {
        if (_buffer is null || ctas > _ctas)
        {
            _buffer?.Dispose();
            _buffer = null;
            // Slots, then the flags (int32, as many floats' room): zeroed once, the kernel leaves them zero.
            var init = new float[(long)ctas * SlotFloats + ctas];
            _buffer = new DeviceBuffer<float>(init);
            _ctas = ctas;
        }
        return _buffer.Address;
    }

    public void Dispose()
    {
        _buffer?.Dispose();
        _buffer = null;
    }
}
