// Binding SwiftKvOptions from configuration with the keys checked first: the binder's own errors name CLR types
// ("Failed to convert 'Gpu' to type 'SwiftKV.Engine.BackendKind'") and it ignores sub-keys under a scalar option.
using Microsoft.Extensions.Configuration;

namespace SwiftKV.AI;

/// <summary>Binds a configuration section onto <see cref="SwiftKvOptions"/>, refusing keys and values it cannot take by name.</summary>
internal static class SwiftKvConfigurationBinder
{
    /// <summary>
    /// Binds the section. Each key is checked first, so a typo (ContextLenght) or a value of the wrong kind (Backend Gpu)
    /// is refused with the key, the options or values it may take, and the nearest match, not the binder's type names.
    /// </summary>
    public static void Bind(IConfiguration configuration, SwiftKvOptions o)
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
            // Every option is a single value: the binder would skip "SwiftKV:ModelPath:x" without a word.
            if (child.GetChildren().FirstOrDefault() is { } sub)
                throw new ArgumentException($"SwiftKV configuration: {sub.Path} is not an option: {prefix}{option.Name} takes a single value, not sub-keys.");
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
