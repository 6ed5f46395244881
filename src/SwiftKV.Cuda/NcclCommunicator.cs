// One rank's NCCL communicator: processes, one per GPU, that sum buffers across their GPUs (data-parallel training
// sums its gradients). Rank 0 makes the unique id; every rank is handed the same bytes and joins with its rank.
using System.Runtime.InteropServices;
using SwiftKV.Cuda.Native;

namespace SwiftKV.Cuda;

/// <summary>
/// An owned ncclComm_t. Released with ncclCommDestroy only after <see cref="NcclCommunicator.Finish"/>, when every rank
/// has done its last collective: destroy is itself a collective (it waits for every rank to destroy too, so no rank frees
/// buffers a peer may still read). Otherwise, a rank leaving on an error, with ncclCommAbort, which does not wait: with
/// destroy it would wait forever for a peer spinning in an all-reduce for it.
/// </summary>
sealed class NcclHandle : SafeHandle
{
    public NcclHandle() : base(0, true) { }
    public override bool IsInvalid => handle == 0;
    public bool Finished { get; set; }
    public void Set(nint h) => SetHandle(h);
    protected override bool ReleaseHandle() =>
        CudaRuntime.TryBindForRelease() && (Finished ? NcclNative.ncclCommDestroy(handle) : NcclNative.ncclCommAbort(handle)) == 0;
}

/// <summary>This process's place among <see cref="World"/> ranks, one GPU each, and sums across them.</summary>
public sealed unsafe class NcclCommunicator : IDisposable
{
    readonly NcclHandle _comm = new();

    /// <summary>A fresh unique id (made once, by rank 0, and given to every rank).</summary>
    public static byte[] NewUniqueId()
    {
        if (!CudaLibraries.TryLoad(CudaLibraries.Nccl, out _, out var why)) throw new CudaException(why);
        CudaRuntime.Bind();
        NcclUniqueId id;
        NcclNative.Check(NcclNative.ncclGetUniqueId(&id), "ncclGetUniqueId");
        return new ReadOnlySpan<byte>(id.Internal, NcclUniqueId.Bytes).ToArray();
    }

    /// <summary>NCCL's version as major.minor.patch, or why it cannot be loaded.</summary>
    public static bool TryVersion(out string version)
    {
        if (!CudaLibraries.TryLoad(CudaLibraries.Nccl, out _, out var why)) { version = why; return false; }
        NcclNative.Check(NcclNative.ncclGetVersion(out int v), "ncclGetVersion");
        version = $"{v / 10000}.{v / 100 % 100}.{v % 100}";
        return true;
    }

    /// <summary>Joins the communicator <paramref name="uniqueId"/> names as <paramref name="rank"/> of <paramref name="world"/>; blocks until every rank has joined.</summary>
    public NcclCommunicator(ReadOnlySpan<byte> uniqueId, int rank, int world)
    {
        if (uniqueId.Length != NcclUniqueId.Bytes) throw new ArgumentException($"an NCCL unique id is {NcclUniqueId.Bytes} bytes, not {uniqueId.Length}.", nameof(uniqueId));
        if (world < 1 || rank < 0 || rank >= world) throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} of {world}: need 0 <= rank < world.");
        if (!CudaLibraries.TryLoad(CudaLibraries.Nccl, out _, out var why)) throw new CudaException(why);
        CudaRuntime.Bind();
        NcclUniqueId id;
        uniqueId.CopyTo(new Span<byte>(id.Internal, NcclUniqueId.Bytes));
        NcclNative.Check(NcclNative.ncclCommInitRank(out nint comm, world, id, rank), $"ncclCommInitRank(rank {rank} of {world})");
        _comm.Set(comm);
        Rank = rank;
        World = world;
    }

    public int Rank { get; }
    public int World { get; }

    nint Handle => _comm.IsClosed ? throw new ObjectDisposedException(nameof(NcclCommunicator)) : _comm.DangerousGetHandle();

    /// <summary>Sums <paramref name="buffer"/> over every rank, in place, queued on <paramref name="stream"/>.</summary>
    public void AllReduceSum(DeviceSpan<float> buffer, CudaStream stream) => AllReduce(buffer.Address, buffer.Length, NcclNative.Float32, stream);

    /// <inheritdoc cref="AllReduceSum(DeviceSpan{float}, CudaStream)"/>
    public void AllReduceSum(DeviceSpan<double> buffer, CudaStream stream) => AllReduce(buffer.Address, buffer.Length, NcclNative.Float64, stream);

    void AllReduce(ulong address, long count, int type, CudaStream stream)
    {
        if (count < 1) return;
        CudaRuntime.Bind();
        NcclNative.Check(NcclNative.ncclAllReduce(address, address, (nuint)count, type, NcclNative.Sum, Handle, stream.Handle), "ncclAllReduce");
    }

    /// <summary>Calls between Group() and its Dispose go to NCCL as one (many small sums in one launch).</summary>
    public static GroupScope Group()
    {
        NcclNative.Check(NcclNative.ncclGroupStart(), "ncclGroupStart");
        return new GroupScope();
    }

    public readonly struct GroupScope : IDisposable
    {
        public void Dispose() => NcclNative.Check(NcclNative.ncclGroupEnd(), "ncclGroupEnd");
    }

    /// <summary>Every rank is past its last collective: Dispose may wait for the others (see <see cref="NcclHandle"/>).</summary>
    public void Finish() => _comm.Finished = true;

    public void Dispose() => _comm.Dispose();
}
