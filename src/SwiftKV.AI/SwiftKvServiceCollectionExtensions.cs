// Registration of the in-process chat client with Microsoft.Extensions.DependencyInjection.
// NOTE: options are bound and validated at registration, so a misconfigured app fails at start-up, not at its first
// request. The model (LocalModel: weights, tokenizer, backend) is its own container-owned singleton, loaded on first
// use and disposed with the container after the client that uses it. The returned ChatClientBuilder lets callers
// chain .UseFunctionInvocation().UseOpenTelemetry().UseLogging() as with any client. Metrics use the container's
// IMeterFactory when one is registered (AddMetrics, or any host). With an ILoggerFactory registered (AddLogging, or any
// host), the load logs which backend the model runs on and why, as a warning when Auto fell back to the CPU: a server
// that meant to run on its GPU should not find out from its latency.
using System.Diagnostics.Metrics;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging;
using SwiftKV.AI;
using SwiftKV.Engine;
using SwiftKV.Engine.Cpu;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Adds <see cref="SwiftKvChatClient"/> to a service collection.</summary>
public static class SwiftKvServiceCollectionExtensions
{
    /// <summary>Registers a SwiftKV chat client configured in code, as the <see cref="IChatClient"/> of the container.</summary>
    public static ChatClientBuilder AddSwiftKvChatClient(this IServiceCollection services, Action<SwiftKvOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        var options = Build(configure);
        services.AddSingleton(sp => Load(options, sp, serviceKey: null));
        services.AddSingleton(sp => new SwiftKvChatClient(sp.GetRequiredService<LocalModel>(), options, ownsModel: false,
            meterFactory: sp.GetService<IMeterFactory>()));
        return services.AddChatClient(sp => sp.GetRequiredService<SwiftKvChatClient>());
    }

    /// <summary>Registers a SwiftKV chat client bound from a configuration section (keys as in <see cref="SwiftKvOptions"/>).</summary>
    public static ChatClientBuilder AddSwiftKvChatClient(this IServiceCollection services, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        return services.AddSwiftKvChatClient(o => SwiftKvConfigurationBinder.Bind(configuration, o));
    }

    /// <summary>
    /// Registers a SwiftKV chat client as the keyed <see cref="IChatClient"/> <paramref name="serviceKey"/> (resolve it with
    /// <c>GetRequiredKeyedService&lt;IChatClient&gt;(key)</c> or <c>[FromKeyedServices(key)]</c>); its model and client are
    /// keyed the same way, so several models can live in one container.
    /// </summary>
    public static ChatClientBuilder AddKeyedSwiftKvChatClient(this IServiceCollection services, object? serviceKey, Action<SwiftKvOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        var options = Build(configure);
        services.AddKeyedSingleton(serviceKey, (sp, _) => Load(options, sp, serviceKey));
        services.AddKeyedSingleton(serviceKey, (sp, key) => new SwiftKvChatClient(sp.GetRequiredKeyedService<LocalModel>(key), options,
            ownsModel: false, meterFactory: sp.GetService<IMeterFactory>()));
        return services.AddKeyedChatClient(serviceKey, sp => sp.GetRequiredKeyedService<SwiftKvChatClient>(serviceKey));
    }

    /// <summary>Keyed registration bound from a configuration section.</summary>
    public static ChatClientBuilder AddKeyedSwiftKvChatClient(this IServiceCollection services, object? serviceKey, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        return services.AddKeyedSwiftKvChatClient(serviceKey, o => SwiftKvConfigurationBinder.Bind(configuration, o));
    }

    static SwiftKvOptions Build(Action<SwiftKvOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(configure);
        var options = new SwiftKvOptions();
        configure(options);
        options.Validate();
        return options;
    }

    static LocalModel Load(SwiftKvOptions options, IServiceProvider services, object? serviceKey) =>
        LoadLogged(options.LoadModel, services.GetService<ILoggerFactory>()?.CreateLogger<SwiftKvChatClient>(), options.Backend, serviceKey);

    /// <summary>Loads through <paramref name="load"/> and logs the backend; a log that throws disposes the model first.</summary>
    internal static LocalModel LoadLogged(Func<LocalModel> load, ILogger? log, BackendKind asked, object? serviceKey)
    {
        var model = load();
        try
        {
            if (log is not null) LogBackend(log, model, asked, serviceKey);
        }
        catch
        {
            model.Dispose();   // the container never received it: its GPU memory and serving thread would outlive it
            throw;
        }
        return model;
    }

    /// <summary>The backend a loaded model runs on and why (<see cref="LocalModel.BackendReason"/>).</summary>
    static void LogBackend(ILogger log, LocalModel model, BackendKind asked, object? serviceKey)
    {
        string key = serviceKey is null ? "" : $" (key {serviceKey})";
        if (asked == BackendKind.Auto && model.Backend is CpuBackend)
            log.LogWarning("SwiftKV model {ModelPath}{ServiceKey} runs on the CPU backend ({Reason}): fp32 on all cores, fine for small models, slow for 8B",
                model.Path, key, model.BackendReason);
        else
            log.LogInformation("SwiftKV model {ModelPath}{ServiceKey} runs on the {Backend} backend ({Reason})", model.Path, key, model.Backend.Name, model.BackendReason);
        if (model.UnreadTensors.Count > 0)
            log.LogWarning("SwiftKV model {ModelPath}{ServiceKey}: {Note}", model.Path, key, SwiftKV.Model.Checkpoint.LlamaCheckpointLoader.UnreadNote(model.UnreadTensors));
        if (SwiftKV.Model.Tokenization.CheckpointChatTemplate.Mismatch(model.Path) is { } template)
            log.LogWarning("SwiftKV model {ModelPath}{ServiceKey}: {Note}", model.Path, key, template);
    }
}
