// Semantic Kernel over a SwiftKV chat pipeline. SK 1.82 calls a registered IChatClient directly, so whatever the
// pipeline holds (function invocation, the call recorder, telemetry) runs under every kernel call.
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.SemanticKernel;

namespace SwiftKV.Samples;

/// <summary>Builds kernels whose chat service is a SwiftKV client pipeline.</summary>
public static class SampleKernel
{
    /// <summary>
    /// The usual pipeline: <c>UseFunctionInvocation()</c> outermost (SK's auto function calling goes through it),
    /// then a <see cref="CallRecorder"/> next to the model so every model round trip is measured.
    /// </summary>
    public static (IChatClient Pipeline, CallRecorder Recorder) Pipeline(IChatClient swiftKv)
    {
        ArgumentNullException.ThrowIfNull(swiftKv);
        CallRecorder? recorder = null;
        var pipeline = swiftKv.AsBuilder()
            .UseFunctionInvocation()
            .Use(inner => recorder = new CallRecorder(inner))
            .Build();
        return (pipeline, recorder!);
    }

    /// <summary>A kernel whose <see cref="IChatClient"/> is <paramref name="pipeline"/>; <paramref name="configure"/> adds plugins.</summary>
    public static Kernel Create(IChatClient pipeline, Action<IKernelBuilder>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(pipeline);
        var builder = Kernel.CreateBuilder();
        builder.Services.AddSingleton(pipeline);
        configure?.Invoke(builder);
        return builder.Build();
    }

    /// <summary>Execution settings SK turns into <see cref="ChatOptions"/> (greedy, bounded answer).</summary>
    public static PromptExecutionSettings Settings(int maxTokens, FunctionChoiceBehavior? functions = null) => new()
    {
        ExtensionData = new Dictionary<string, object> { ["max_tokens"] = maxTokens, ["temperature"] = 0.0 },
        FunctionChoiceBehavior = functions,
    };
}
