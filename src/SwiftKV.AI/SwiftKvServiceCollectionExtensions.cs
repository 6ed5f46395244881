// Registration of the in-process chat client with Microsoft.Extensions.DependencyInjection.
// NOTE: options are bound and validated at registration, so a misconfigured app fails at start-up, not at its first
// request. The model (LocalModel: weights, tokenizer, backend) is its own container-owned singleton, loaded on first
// use and disposed with the container after the client that uses it. The returned ChatClientBuilder lets callers
// chain .UseFunctionInvocation().UseOpenTelemetry().UseLogging() as with any client. Metrics use the container's
// IMeterFactory when one is registered (AddMetrics, or any host).
using System.Diagnostics.Metrics;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using SwiftKV.AI;
using SwiftKV.Engine;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Adds <see cref="SwiftKvChatClient"/> to a service collection.</summary>
public static class SwiftKvServiceCollectionExtensions
{
    /// <summary>Registers a SwiftKV chat client configured in code, as the <see cref="IChatClient"/> of the container.</summary>
    public static ChatClientBuilder AddSwiftKvChatClient(this IServiceCollection services, Action<SwiftKvOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        var options = Build(configure);
        services.AddSingleton(_ => Load(options));
        services.AddSingleton(sp => new SwiftKvChatClient(sp.GetRequiredService<LocalModel>(), options, ownsModel: false,
            meterFactory: sp.GetService<IMeterFactory>()));
        return services.AddChatClient(sp => sp.GetRequiredService<SwiftKvChatClient>());
    }

    /// <summary>Registers a SwiftKV chat client bound from a configuration section (keys as in <see cref="SwiftKvOptions"/>).</summary>
    public static ChatClientBuilder AddSwiftKvChatClient(this IServiceCollection services, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        return services.AddSwiftKvChatClient(o => Bind(configuration, o));
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
        services.AddKeyedSingleton(serviceKey, (_, _) => Load(options));
        services.AddKeyedSingleton(serviceKey, (sp, key) => new SwiftKvChatClient(sp.GetRequiredKeyedService<LocalModel>(key), options,
            ownsModel: false, meterFactory: sp.GetService<IMeterFactory>()));
        return services.AddKeyedChatClient(serviceKey, sp => sp.GetRequiredKeyedService<SwiftKvChatClient>(serviceKey));
    }

    /// <summary>Keyed registration bound from a configuration section.</summary>
    public static ChatClientBuilder AddKeyedSwiftKvChatClient(this IServiceCollection services, object? serviceKey, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        return services.AddKeyedSwiftKvChatClient(serviceKey, o => Bind(configuration, o));
    }

    static SwiftKvOptions Build(Action<SwiftKvOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(configure);
        var options = new SwiftKvOptions();
        configure(options);
        options.Validate();
        return options;
    }

    static LocalModel Load(SwiftKvOptions options) => options.LoadModel();

    /// <summary>
    /// Binds the section. Each key is checked first, so a typo (ContextLenght) or a value of the wrong kind (Backend Gpu)
    /// is refused with the key, the options or values it may take, and the nearest match, not the binder's type names.
    /// </summary>
    static void Bind(IConfiguration configuration, SwiftKvOptions o)
    {
        CheckKeys(configuration);
        try
        {
            configuration.Bind(o, b => b.ErrorOnUnknownConfiguration = true);
        }
        catch (InvalidOperationException e)
        {
            throw new ArgumentException($"SwiftKV configuration: {e.Message}", e);
        }
    }

    static readonly System.Reflection.PropertyInfo[] s_options =
        typeof(SwiftKvOptions).GetProperties().Where(p => p.CanWrite).ToArray();

    static void CheckKeys(IConfiguration configuration)
    {
        string prefix = configuration is IConfigurationSection { Path: { Length: > 0 } path } ? path + ":" : "";
        var names = s_options.Select(p => p.Name).ToList();
        foreach (var child in configuration.GetChildren())
        {
            var option = s_options.FirstOrDefault(p => string.Equals(p.Name, child.Key, StringComparison.OrdinalIgnoreCase));
            if (option is null)
            {
                string near = SwiftKV.Model.Spelling.Nearest(child.Key, names, StringComparison.OrdinalIgnoreCase) is { } n ? $" (did you mean {n}?)" : "";
                throw new ArgumentException($"SwiftKV configuration: {prefix}{child.Key} is not an option{near}; the options are {string.Join(", ", names)}.");
            }
            var nullable = Nullable.GetUnderlyingType(option.PropertyType);
            // An empty value of a nullable option (KvCacheBytes: "") binds as null: the default.
            if (child.Value is not { } value || nullable is not null && string.IsNullOrWhiteSpace(value)
                || ValueProblem(nullable ?? option.PropertyType, value) is not { } problem)
                continue;
            throw new ArgumentException($"SwiftKV configuration: {prefix}{option.Name} '{value}' {problem}.");
        }
    }

    // Why the binder could not convert a value to the option's type; null when it can (range checks are Validate's).
    static string? ValueProblem(Type type, string value)
    {
        var invariant = System.Globalization.CultureInfo.InvariantCulture;
        if (type.IsEnum)
            return Enum.GetNames(type).Any(n => string.Equals(n, value.Trim(), StringComparison.OrdinalIgnoreCase)) ? null
                : $"is not one of {string.Join(", ", Enum.GetNames(type))}";
        if (type == typeof(bool)) return bool.TryParse(value, out _) ? null : "is not true or false";
        if (type == typeof(int)) return int.TryParse(value, System.Globalization.NumberStyles.Integer, invariant, out _) ? null : $"is not a whole number in {int.MinValue}..{int.MaxValue}";
        if (type == typeof(long)) return long.TryParse(value, System.Globalization.NumberStyles.Integer, invariant, out _) ? null : $"is not a whole number in {long.MinValue}..{long.MaxValue}";
        return null;
    }
}
