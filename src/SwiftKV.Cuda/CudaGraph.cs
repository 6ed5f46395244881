// CUDA graphs through the driver API: work queued on a stream between BeginCapture and EndCapture is recorded
// (not run) into a CUgraph, instantiated once into a CUgraphExec, and replayed with one cuGraphLaunch. Kernel
// arguments are baked in at capture, so anything that changes per replay (token ids, positions) must live in
// device memory that the captured kernels read.
using System.Runtime.InteropServices;
using SwiftKV.Cuda.Native;

namespace SwiftKV.Cuda;

sealed class GraphHandle() : SafeHandle(0, true)
{
    public override bool IsInvalid => handle == 0;
    public void Set(nint h) => SetHandle(h);
    protected override bool ReleaseHandle() => CudaRuntime.TryBindForRelease() && CuDriver.cuGraphDestroy(handle) == 0;
}

sealed class GraphExecHandle() : SafeHandle(0, true)
{
    public override bool IsInvalid => handle == 0;
    public void Set(nint h) => SetHandle(h);
    protected override bool ReleaseHandle() => CudaRuntime.TryBindForRelease() && CuDriver.cuGraphExecDestroy(handle) == 0;
}

/// <summary>A captured, instantiated graph, ready to replay. Owns both the CUgraph and its CUgraphExec.</summary>
public sealed unsafe class CudaGraph : IDisposable
{
    readonly GraphHandle _graph = new();
    readonly GraphExecHandle _exec = new();

    /// <summary>Takes ownership of <paramref name="graph"/> whether or not instantiation succeeds (a failure disposes both handles).</summary>
    CudaGraph(nint graph)
    {
        _graph.Set(graph);
        try
        {
            CuDriver.Check(CuDriver.cuGraphInstantiateWithFlags(out nint exec, graph, 0), "cuGraphInstantiateWithFlags");
            _exec.Set(exec);
            nuint n = 0;
            CuDriver.Check(CuDriver.cuGraphGetNodes(graph, null, ref n), "cuGraphGetNodes");
            NodeCount = (int)n;
        }
        catch
        {
            // Freed here, once: the caller must not destroy the graph again (a second cuGraphDestroy could hit a live
            // graph that reused the handle value).
            _exec.Dispose();
            _graph.Dispose();
            throw;
        }
    }

    /// <summary>Nodes (kernels, copies, memsets) in the graph.</summary>
    public int NodeCount { get; }

    /// <summary>
    /// Records what <paramref name="record"/> queues on <paramref name="stream"/> and instantiates it. Nothing runs
    /// during capture; a failure inside <paramref name="record"/> ends the capture before it propagates.
    /// </summary>
    public static CudaGraph Capture(CudaStream stream, Action record)
    {
        ArgumentNullException.ThrowIfNull(record);
        BeginCapture(stream);
        try
        {
            record();
        }
        catch
        {
            AbortCapture(stream);
            throw;
        }
        return EndCapture(stream);
    }

    /// <summary>
    /// Starts recording <paramref name="stream"/>'s work (relaxed mode: cuBLAS may set itself up meanwhile). Holds
    /// <see cref="CaptureGate"/> until the capture ends, so no other thread's module load or pinned allocation breaks it.
    /// </summary>
    public static void BeginCapture(CudaStream stream)
    {
        CudaRuntime.Bind();
        nint handle = stream.Handle;
        bool entered = stream.EnterCaptureGate();
        try
        {
            CuDriver.Check(CuDriver.cuStreamBeginCapture(handle, CuDriver.CaptureModeRelaxed), "cuStreamBeginCapture_v2");
        }
        catch
        {
            if (entered) stream.ExitCaptureGate();
            throw;
        }
    }

    /// <summary>Ends the recording started by <see cref="BeginCapture"/> and instantiates what it holds.</summary>
    public static CudaGraph EndCapture(CudaStream stream)
    {
        CudaRuntime.Bind();
        nint graph;
        try
        {
            CuDriver.Check(CuDriver.cuStreamEndCapture(stream.Handle, out graph), "cuStreamEndCapture");
        }
        finally
        {
            stream.ExitCaptureGate();
        }
        if (graph == 0) throw new CudaException("cuStreamEndCapture returned no graph (the capture was invalidated).") { Call = "cuStreamEndCapture" };
        return new CudaGraph(graph);   // owns the graph from here, also when instantiation fails
    }

    /// <summary>Ends a recording after a failure, discarding it; never throws.</summary>
    public static void AbortCapture(CudaStream stream)
    {
        try
        {
            if (CuDriver.cuStreamEndCapture(stream.Handle, out nint graph) == 0 && graph != 0) CuDriver.cuGraphDestroy(graph);
        }
        catch (ObjectDisposedException)
        {
        }
        finally
        {
            stream.ExitCaptureGate();
        }
    }

    /// <summary>Queues one replay on <paramref name="stream"/>.</summary>
    public void Launch(CudaStream stream)
    {
        if (_exec.IsClosed) throw new ObjectDisposedException(nameof(CudaGraph));
        CudaRuntime.Bind();
        CuDriver.Check(CuDriver.cuGraphLaunch(_exec.DangerousGetHandle(), stream.Handle), "cuGraphLaunch");
    }

    public void Dispose()
    {
        _exec.Dispose();
        _graph.Dispose();
    }
}
