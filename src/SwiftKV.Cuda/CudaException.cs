// The one exception type of the native boundary: every failed driver, NVRTC or cuBLAS status becomes one,
// naming the call and the library's own error string, so a failure deep in a forward pass reads on its own.
namespace SwiftKV.Cuda;

/// <summary>A CUDA driver, NVRTC or cuBLAS call failed, or a CUDA library could not be found.</summary>
public sealed class CudaException : Exception
{
    public CudaException(string message) : base(message) { }
    public CudaException(string message, Exception inner) : base(message, inner) { }

    /// <summary>The failed call ("cuMemAlloc_v2"); null when the error is not a status code (missing library).</summary>
    public string? Call { get; init; }
    /// <summary>The numeric status the call returned.</summary>
    public int Status { get; init; }
    /// <summary>The call ran out of memory (the driver's CUDA_ERROR_OUT_OF_MEMORY, cuBLAS's ALLOC_FAILED, NVRTC's OUT_OF_MEMORY).</summary>
    public bool IsOutOfMemory { get; init; }
    /// <summary>
    /// The error leaves the CUDA context unusable (a kernel faulted: CUDA_ERROR_ILLEGAL_ADDRESS and the like): every later
    /// GPU call in the process fails, so a server should restart rather than keep serving.
    /// </summary>
    public bool IsContextLost { get; init; }
}
