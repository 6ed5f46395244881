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
            var type = nullable ?? option.PropertyType;
            if (child.Value is not { } value)
            {
                // A JSON null: the binder would write the type's default (SwiftKv: null turned SwiftKV off).
                if (option.PropertyType.IsValueType && nullable is null)
                    throw new ArgumentException($"SwiftKV configuration: {prefix}{option.Name} needs a value (got null).");
                continue;
            }
            // An empty value of a nullable option (KvCacheBytes: "") binds as null: the default.
            if (nullable is not null && value.Length == 0) continue;
            if (ValueProblem(type, value) is { } problem)
                throw new ArgumentException($"SwiftKV configuration: {prefix}{option.Name} '{value}' {problem}.");
        }
    }

    // Why the binder could not convert a value to the option's type; null when it can. The binder's own converter
    // decides (so "1" for an enum and "0x100" for an int pass as they always did); range checks are Validate's.
    static string? ValueProblem(Type type, string value)
    {
        try
        {
            System.ComponentModel.TypeDescriptor.GetConverter(type).ConvertFromInvariantString(value);
            return null;
        }
        catch (Exception e) when (e is FormatException or ArgumentException or NotSupportedException or OverflowException
            || e.InnerException is FormatException or OverflowException)
        {
            return type.IsEnum ? $"is not one of {string.Join(", ", Enum.GetNames(type))}"
                : type == typeof(bool) ? "is not true or false"
                : type == typeof(int) || type == typeof(long) ? "is not a whole number of the size this option takes"
                : $"cannot be read as {type.Name}";
        }
    }
}
