// Registration of the in-process chat client with Microsoft.Extensions.DependencyInjection.
// NOTE: the model is a container-owned singleton (loaded once, disposed with the container); the
// returned ChatClientBuilder lets callers chain .UseFunctionInvocation().UseLogging() as with any client.
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using SwiftKV.AI;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Adds <see cref="SwiftKvChatClient"/> to a service collection.</summary>
public static class SwiftKvServiceCollectionExtensions
{
    /// <summary>Registers a SwiftKV chat client configured in code, as the <see cref="IChatClient"/> of the container.</summary>
    public static ChatClientBuilder AddSwiftKvChatClient(this IServiceCollection services, Action<SwiftKvOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        var options = new SwiftKvOptions();
        configure(options);
        // Fail at registration, not at the first request, so a misconfigured app stops at start-up.
        options.Validate();
        services.AddSingleton(_ => new SwiftKvChatClient(options));
        return services.AddChatClient(sp => sp.GetRequiredService<SwiftKvChatClient>());
    }

    /// <summary>Registers a SwiftKV chat client bound from a configuration section (keys as in <see cref="SwiftKvOptions"/>).</summary>
    public static ChatClientBuilder AddSwiftKvChatClient(this IServiceCollection services, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        return services.AddSwiftKvChatClient(o => configuration.Bind(o));
    }
}
