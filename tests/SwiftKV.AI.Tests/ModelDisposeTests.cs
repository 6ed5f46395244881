// A model disposed from its own serving thread (a step observer or a constraint calling Dispose): the engine's Dispose
// returns before the step in flight ends, so the weights must go only once the loop has stopped, not under that step.
using SwiftKV.Engine;
using SwiftKV.Engine.Sampling;
using SwiftKV.Engine.Serving;
using Xunit;

namespace SwiftKV.AI.Tests;

public sealed class ModelDisposeTests(TinyChatModel tiny)
{
    [Fact]
    public async Task Dispose_FromTheServingThread_FreesTheWeightsAfterTheLoopStops()
    {
        var ct = TestContext.Current.CancellationToken;
        LocalModel? model = null;
        bool backendAliveDuringStep = false;
        model = LocalModel.Load(tiny.Directory, BackendKind.Cpu, serving: new ServingOptions
        {
            BlockSize = 4, NumKvBlocks = 40,
            StepObserver = _ =>
            {
                model!.Dispose();
                // Still inside the step: the weights must still be there for the rest of it.
                try { model.Backend.CreateCache(8).Dispose(); backendAliveDuringStep = true; }
                catch (ObjectDisposedException) { }
            },
        });
        var serving = model.Serving!;
        var request = serving.Submit([1, 2, 3], SamplingParams.Greedy, 5, ct: ct);
        await Assert.ThrowsAsync<ObjectDisposedException>(() => request.Completion.WaitAsync(TimeSpan.FromSeconds(10), ct));
        Assert.True(backendAliveDuringStep, "the weights were freed under the step that asked for the dispose");
        await serving.Stopped.WaitAsync(TimeSpan.FromSeconds(10), ct);
        for (int i = 0; i < 500; i++)
        {
            try { model.Backend.CreateCache(8).Dispose(); }
            catch (ObjectDisposedException) { break; }
            await Task.Delay(10, ct);
        }
        Assert.Throws<ObjectDisposedException>(() => model.Backend.CreateCache(8));
        Assert.True(model.IsDisposed);
    }
}
