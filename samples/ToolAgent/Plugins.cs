// The agent's Semantic Kernel plugins: a calculator and a lookup over a few product facts. Every invocation is
// written to a ToolLog, so the sample (and its test) can show which tools the model really called.
// NOTE: parameters have defaults so a call with missing arguments (an untrained model's, say) still runs and
// answers with guidance instead of failing to bind.
using System.ComponentModel;
using System.Globalization;
using Microsoft.SemanticKernel;

namespace SwiftKV.Samples.ToolAgent;

/// <summary>Invocations of the sample's tools, in order.</summary>
public sealed class ToolLog
{
    readonly List<string> _entries = [];

    public IReadOnlyList<string> Entries
    {
        get { lock (_entries) return _entries.ToArray(); }
    }

    internal void Add(string entry)
    {
        lock (_entries) _entries.Add(entry);
    }
}

/// <summary>Arithmetic the model should not do in its head.</summary>
public sealed class CalculatorPlugin(ToolLog log)
{
    [KernelFunction("multiply"), Description("Multiplies two numbers and returns the product.")]
    public double Multiply([Description("first factor")] double a = 0, [Description("second factor")] double b = 0)
    {
        log.Add($"calculator.multiply({a.ToString(CultureInfo.InvariantCulture)}, {b.ToString(CultureInfo.InvariantCulture)})");
        return a * b;
    }

    [KernelFunction("add"), Description("Adds two numbers and returns the sum.")]
    public double Add([Description("first term")] double a = 0, [Description("second term")] double b = 0)
    {
        log.Add($"calculator.add({a.ToString(CultureInfo.InvariantCulture)}, {b.ToString(CultureInfo.InvariantCulture)})");
        return a + b;
    }
}

/// <summary>Looks up facts about the Tidewater Mow-3 by topic.</summary>
public sealed class DocumentLookupPlugin(ToolLog log)
{
    static readonly Dictionary<string, string> Facts = new(StringComparer.OrdinalIgnoreCase)
    {
        ["warranty"] = "Chassis, motors and deck: 3 years from delivery. Battery: 2 years or 500 full cycles, whichever comes first.",
        ["battery"] = "28 V lithium-ion, 5.2 Ah; about 90 minutes to charge and 70 minutes of mowing on flat ground.",
        ["blades"] = "Three double-edged blades: turn them after 6 weeks, replace after 12. Spare set: part TW-B9 (9 blades and screws).",
        ["returns"] = "Unused: 30 days, full refund. Used: 14 days, minus a 25 euro cleaning fee.",
    };

    [KernelFunction("lookup"), Description("Returns what the Mow-3 documentation says about a topic: warranty, battery, blades or returns.")]
    public string Lookup([Description("the topic to look up")] string topic = "")
    {
        log.Add($"documents.lookup(\"{topic}\")");
        return Facts.TryGetValue(topic.Trim(), out var fact)
            ? fact
            : $"No entry for '{topic}'. Known topics: {string.Join(", ", Facts.Keys)}.";
    }
}
