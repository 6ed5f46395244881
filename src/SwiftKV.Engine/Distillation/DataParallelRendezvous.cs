// How the ranks of a data-parallel distillation find each other: rank 0 makes NCCL's unique id and leaves it in the
// rendezvous directory (written beside and renamed, so no rank reads half of it); the others wait for it, then all join.
using SwiftKV.Cuda;

namespace SwiftKV.Engine.Distillation;

internal static class DataParallelRendezvous
{
    const string IdFile = "nccl-unique-id";

    /// <summary>How long a rank waits for rank 0's id (rank 0 is loading the same checkpoint meanwhile).</summary>
    internal static TimeSpan Wait { get; set; } = TimeSpan.FromMinutes(5);

    /// <summary>Joins the ranks through <paramref name="directory"/>; blocks until all <paramref name="world"/> have joined.</summary>
    public static NcclCommunicator Join(string directory, int rank, int world, CancellationToken cancellationToken)
    {
        string file = Path.Combine(directory, IdFile);
        byte[] id;
        if (rank == 0)
        {
            id = NcclCommunicator.NewUniqueId();
            string tmp = file + ".tmp";
            File.WriteAllBytes(tmp, id);
            File.Move(tmp, file, overwrite: true);
        }
        else
        {
            var deadline = DateTime.UtcNow + Wait;
            while (!File.Exists(file))
            {
                if (DateTime.UtcNow > deadline)
                    throw new TimeoutException($"rank {rank} of {world} waited {Wait.TotalSeconds:F0} s for rank 0's NCCL id in {directory}: did rank 0 start?");
                Task.Delay(50, cancellationToken).GetAwaiter().GetResult();
            }
            id = File.ReadAllBytes(file);
        }
        return new NcclCommunicator(id, rank, world);
    }
}
