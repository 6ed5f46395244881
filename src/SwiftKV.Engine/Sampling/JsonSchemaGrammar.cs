// A JSON schema compiled into the nodes JsonSchemaMachine walks while it reads an answer byte by byte.
// NOTE: what is enforced is the structure: type (and type lists), properties, required, additionalProperties,
// patternProperties (their values' schemas; the keys are not matched against the patterns), items / prefixItems /
// additionalItems, minItems / maxItems, enum, const, anyOf / oneOf (both as "one of these"), allOf (one member, or the
// schema's own keywords: either is a superset of the intersection), $ref to "#..." JSON pointers (recursion included)
// and boolean schemas. Keywords about values (pattern, format, minimum, minLength, ...) and the conditional ones (not,
// if / then / else, dependentRequired, ...) are left to the model, which reads the whole schema in its prompt: the machine accepts a superset of the schema's
// documents and never refuses one the schema allows, except that enum / const values and known property names must be
// written in their compact JSON spelling, and integers without a fraction or exponent (what System.Text.Json reads
// into an int). Known limits (from a review, 2026-11-28, not yet mended): keywords beside anyOf / oneOf / $ref are
// dropped (the machine accepts more there); names and enum texts with characters outside the BMP cannot be written;
// chains of more than 32 $ref / anyOf hops and documents nested past 64 containers are refused; schemas built to
// branch (anyOf of overlapping recursive alternatives) can grow states exponentially, and a $ref chain of many
// thousands of links overflows the compiler's stack.
using System.Collections.Concurrent;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace SwiftKV.Engine.Sampling;

/// <summary>The kinds of JSON value a schema node allows.</summary>
[Flags]
public enum JsonKinds : byte
{
    None = 0,
    Object = 1,
    Array = 2,
    String = 4,
    /// <summary>An integer written without fraction or exponent.</summary>
    Integer = 8,
    /// <summary>Any number (integers included).</summary>
    Number = 16,
    Boolean = 32,
    Null = 64,
    All = Object | Array | String | Integer | Number | Boolean | Null,
}

/// <summary>One property of an object node: its name as written in JSON (escaped, without quotes) and its value's node.</summary>
public sealed record JsonSchemaProperty(string Name, byte[] Key, int Node);

/// <summary>A compiled schema node. Node 0 is "any JSON value".</summary>
public sealed class JsonSchemaNode
{
    public JsonKinds Kinds { get; internal set; } = JsonKinds.All;

    /// <summary>The compact texts the value must be one of (enum / const), sorted by bytes; null when free.</summary>
    public byte[][]? Literals { get; internal set; }

    /// <summary>The alternatives (anyOf / oneOf); when set, the node's other fields are unused.</summary>
    public int[]? AnyOf { get; internal set; }

    public JsonSchemaProperty[] Properties { get; internal set; } = [];

    /// <summary>Bit i: property i is required.</summary>
    public ulong Required { get; internal set; }

    /// <summary>The node of properties not listed, or -1 when they are not allowed.</summary>
    public int Additional { get; internal set; } = JsonSchemaGrammar.Any;

    public int[] PrefixItems { get; internal set; } = [];

    /// <summary>The node of items past <see cref="PrefixItems"/>, or -1 when there may be none.</summary>
    public int Items { get; internal set; } = JsonSchemaGrammar.Any;

    public int MinItems { get; internal set; }
    public int MaxItems { get; internal set; } = int.MaxValue;

    /// <summary>Bytes in the shortest value this node allows (<see cref="JsonSchemaGrammar.Unbounded"/> when none is finite).</summary>
    public int MinLength { get; internal set; } = JsonSchemaGrammar.Unbounded;

    /// <summary>The node of array item <paramref name="index"/>, or -1 when the array may not have it.</summary>
    public int ItemAt(int index) => index >= MaxItems ? -1 : index < PrefixItems.Length ? PrefixItems[index] : Items;
}

/// <summary>A JSON schema, compiled. Build with <see cref="Compile"/>; immutable after that and shared freely.</summary>
public sealed class JsonSchemaGrammar
{
    /// <summary>The node that allows any JSON value.</summary>
    public const int Any = 0;

    /// <summary>A length no finite document reaches (saturating sums stay below int overflow).</summary>
    public const int Unbounded = 1 << 28;

    /// <summary>Most properties one object node may list (a required / seen set is one 64-bit mask).</summary>
    public const int MaxProperties = 64;

    /// <summary>Most vocabulary masks one grammar keeps for its constraints to share (256 KB each at Llama 3's vocabulary).</summary>
    public const int MaxSharedMasks = 64;

    /// <summary>
    /// Vocabulary masks made by constraints over this grammar, by (state's configurations, token table, row length),
    /// for other constraints over it: requests of one schema pass through the same states.
    /// </summary>
    internal ConcurrentDictionary<(object State, object Table, int Length), object> SharedMasks { get; } = new();

    static readonly JsonSerializerOptions s_compact = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    readonly List<JsonSchemaNode> _nodes = [new JsonSchemaNode()];
    readonly Dictionary<string, int> _byPointer = new(StringComparer.Ordinal);
    JsonElement _root;      // the schema being compiled, which its "#..." pointers resolve against
    string _scope = "";     // keeps the pointers of one schema apart from another's in _byPointer
    bool _closeListedObjects;   // while compiling a tool's parameters (ToolCall)
    int _allOfDepth;            // inside an allOf member, whose properties are only part of the object's
    int _schemas;

    /// <summary>The compiled nodes; <see cref="Root"/> is where a document starts.</summary>
    public IReadOnlyList<JsonSchemaNode> Nodes => _nodes;

    /// <summary>The node of the whole document.</summary>
    public int Root { get; private set; }

    JsonSchemaGrammar()
    {
    }

    /// <summary>Compiles <paramref name="schema"/>; a malformed schema is an <see cref="ArgumentException"/> naming where.</summary>
    public static JsonSchemaGrammar Compile(JsonElement schema)
    {
        var grammar = new JsonSchemaGrammar();
        grammar.Root = grammar.Schema(schema, "schema");
        return grammar.Finish();
    }

    /// <summary>
    /// The grammar of a Llama 3.1 JSON tool call, <c>{"name": "f", "parameters": {...}}</c>, to one of
    /// <paramref name="tools"/> with arguments of that tool's parameter schema (any object where it has none; objects
    /// that list properties without saying whether others are allowed take no others), or,
    /// when <paramref name="answer"/> is given, of an answer instead of a call.
    /// </summary>
    /// <param name="tools">Each tool's name and parameter schema.</param>
    /// <param name="answer">The answer's schema; null: a call only.</param>
    public static JsonSchemaGrammar ToolCall(IReadOnlyList<(string Name, JsonElement? Parameters)> tools, JsonElement? answer = null)
    {
        ArgumentNullException.ThrowIfNull(tools);
        if (tools.Count == 0 && answer is null) throw new ArgumentException("A tool call needs at least one tool.", nameof(tools));
        var grammar = new JsonSchemaGrammar();
        var alternatives = new List<int>();
        var anyObject = grammar.Add(new JsonSchemaNode { Kinds = JsonKinds.Object });
        foreach (var (name, parameters) in tools)
        {
            // NOTE: arguments are held closed, as OpenAI's strict function calling holds them: an object that lists its
            // properties and says nothing of others takes no other key, since an extra argument has no parameter to
            // bind to (AIFunctionFactory's schemas never say). A response format's schema keeps JSON Schema's default.
            grammar._closeListedObjects = true;
            int arguments = parameters is { } p ? grammar.Schema(p, $"the parameters of tool '{name}'") : anyObject;
            grammar._closeListedObjects = false;
            using var nameDoc = JsonDocument.Parse(JsonSerializer.Serialize(name));
            var nameNode = grammar.Add(new JsonSchemaNode { Kinds = JsonKinds.String, Literals = [CompactText(nameDoc.RootElement)] });
            alternatives.Add(grammar.Add(new JsonSchemaNode
            {
                Kinds = JsonKinds.Object,
                Properties = [new("name", "name"u8.ToArray(), nameNode), new("parameters", "parameters"u8.ToArray(), arguments)],
                Required = 0b11,
                Additional = -1,
            }));
        }
        if (answer is { } a) alternatives.Add(grammar.Schema(a, "the response format's schema"));
        grammar.Root = grammar.Add(new JsonSchemaNode { AnyOf = [.. alternatives] });
        return grammar.Finish();
    }

    /// <summary>
    /// Whether a tool's argument object may be held to the properties it lists: it lists them itself, and no keyword
    /// that could allow other keys sits beside them (those the machine drops or leaves to the model included).
    /// </summary>
    static bool ClosesAsToolArguments(JsonElement schema)
    {
        // An empty list counts: AIFunctionFactory writes {"type":"object","properties":{}} for a function without
        // parameters, whose only arguments are {}; left open, a model could pass it keys that bind to nothing.
        if (!schema.TryGetProperty("properties", out var properties) || properties.ValueKind != JsonValueKind.Object)
            return false;
        foreach (var word in (ReadOnlySpan<string>)["additionalProperties", "patternProperties", "unevaluatedProperties", "allOf", "anyOf",
                     "oneOf", "not", "if", "then", "else", "dependentSchemas", "dependentRequired", "dependencies", "$ref",
                     "minProperties", "maxProperties", "propertyNames"])
            if (schema.TryGetProperty(word, out _)) return false;
        return true;
    }

    int Add(JsonSchemaNode node)
    {
        _nodes.Add(node);
        return _nodes.Count - 1;
    }

    /// <summary>Compiles one whole schema document, whose "#..." pointers resolve against itself.</summary>
    int Schema(JsonElement schema, string what)
    {
        if (schema.ValueKind == JsonValueKind.Undefined)
            throw new ArgumentException($"The JSON schema of {what} is an undefined JsonElement.");
        if (SwiftKV.Model.JsonText.FindNotText(schema) is { } notText)
            throw new ArgumentException($"In {what}: {notText} {SwiftKV.Model.JsonText.NotTextReason}.");
        (_root, _scope) = (schema.Clone(), $"{_schemas++}:");
        try
        {
            return Node(_root, "#");
        }
        catch (ArgumentException e) when (!e.Message.StartsWith("In ", StringComparison.Ordinal))
        {
            throw new ArgumentException($"In {what}: {e.Message}", e);
        }
    }

    JsonSchemaGrammar Finish()
    {
        ComputeMinLengths();
        if (_nodes[Root].MinLength >= Unbounded)
            throw new ArgumentException("The JSON schema allows no finite document (a required property or item refers back to itself with no way out, or the shortest document is over 256 MB).");
        return this;
    }

    /// <summary>The compact JSON text of a value, as enum / const literals and property names are matched.</summary>
    public static byte[] CompactText(JsonElement value) => Encoding.UTF8.GetBytes(JsonSerializer.Serialize(value, s_compact));

    int Node(JsonElement schema, string pointer)
    {
        if (_byPointer.TryGetValue(_scope + pointer, out int known)) return known;
        if (schema.ValueKind == JsonValueKind.True) return _byPointer[_scope + pointer] = Any;
        // false allows no value: a node of no kind, whose MinLength stays Unbounded, so the machine never enters it
        // (a whole schema of false fails in Finish as "no finite document").
        if (schema.ValueKind == JsonValueKind.False) return _byPointer[_scope + pointer] = Add(new JsonSchemaNode { Kinds = JsonKinds.None });
        if (schema.ValueKind != JsonValueKind.Object)
            throw new ArgumentException($"The JSON schema at {pointer} is a {schema.ValueKind}, not an object or boolean.");

        if (schema.TryGetProperty("$ref", out var reference))
        {
            // Claim the pointer first so a schema that refers to itself compiles to a cycle, not a recursion.
            int at = _byPointer[_scope + pointer] = Add(new JsonSchemaNode());
            _nodes[at] = new JsonSchemaNode { AnyOf = [Node(Resolve(reference, pointer), Target(reference, pointer))] };
            return at;
        }

        var node = new JsonSchemaNode();
        int index = _byPointer[_scope + pointer] = Add(node);

        foreach (var word in (ReadOnlySpan<string>)["anyOf", "oneOf"])
        {
            if (!schema.TryGetProperty(word, out var alternatives)) continue;
            if (alternatives.ValueKind != JsonValueKind.Array || alternatives.GetArrayLength() == 0)
                throw new ArgumentException($"The JSON schema at {pointer}: {word} must be a non-empty array of schemas.");
            node.AnyOf = [.. alternatives.EnumerateArray().Select((a, i) => Node(a, $"{pointer}/{word}/{i}"))];
            return index;
        }

        bool own = schema.EnumerateObject().Any(p => p.Name is "type" or "properties" or "items" or "prefixItems" or "enum" or "const");
        if (!own && schema.TryGetProperty("allOf", out var all) && all.ValueKind == JsonValueKind.Array && all.GetArrayLength() > 0)
        {
            _allOfDepth++;
            try { node.AnyOf = [Node(all[0], $"{pointer}/allOf/0")]; }
            finally { _allOfDepth--; }
            return index;
        }

        if (schema.TryGetProperty("type", out var type)) node.Kinds = Kinds(type, pointer);
        if (schema.TryGetProperty("const", out var constant)) node.Literals = [CompactText(constant)];
        else if (schema.TryGetProperty("enum", out var values))
        {
            if (values.ValueKind != JsonValueKind.Array || values.GetArrayLength() == 0)
                throw new ArgumentException($"The JSON schema at {pointer}: enum must be a non-empty array.");
            var texts = values.EnumerateArray().Select(CompactText).DistinctBy(Convert.ToBase64String).ToList();
            texts.Sort((a, b) => a.AsSpan().SequenceCompareTo(b));
            node.Literals = [.. texts];
        }
        if (node.Literals is not null && schema.TryGetProperty("type", out _))
        {
            // A literal of a kind the type list refuses can never be written.
            node.Literals = [.. node.Literals.Where(t => (KindOf(t) & node.Kinds) != 0)];
            if (node.Literals.Length == 0)
                throw new ArgumentException($"The JSON schema at {pointer} allows no value: none of its enum / const values has one of its types.");
        }

        if (schema.TryGetProperty("properties", out var properties))
        {
            if (properties.ValueKind != JsonValueKind.Object)
                throw new ArgumentException($"The JSON schema at {pointer}: properties must be an object.");
            node.Properties = [.. properties.EnumerateObject().Select(p =>
                new JsonSchemaProperty(p.Name, KeyText(p.Name), Node(p.Value, $"{pointer}/properties/{Escape(p.Name)}")))];
        }
        if (schema.TryGetProperty("additionalProperties", out var additional))
            node.Additional = additional.ValueKind == JsonValueKind.False ? -1 : Node(additional, $"{pointer}/additionalProperties");
        if (schema.TryGetProperty("patternProperties", out var patterns))
        {
            if (patterns.ValueKind != JsonValueKind.Object)
                throw new ArgumentException($"The JSON schema at {pointer}: patternProperties must be an object.");
            // Decoding does not match keys against the patterns (regular expressions), so a key that is not listed may
            // be any key, its value of any pattern's schema or additionalProperties' (a superset, as for pattern): with
            // additionalProperties false, "^x" keys are still allowed, and so may be required.
            var alternatives = patterns.EnumerateObject()
                .Select(p => Node(p.Value, $"{pointer}/patternProperties/{Escape(p.Name)}")).ToList();
            // Free keys of any value already take every pattern's values: an anyOf would only split their states.
            if (alternatives.Count > 0 && node.Additional != Any)
            {
                if (node.Additional >= 0) alternatives.Add(node.Additional);
                node.Additional = alternatives.Count == 1 ? alternatives[0] : Add(new JsonSchemaNode { AnyOf = [.. alternatives] });
            }
        }
        if (schema.TryGetProperty("required", out var required))
        {
            if (required.ValueKind != JsonValueKind.Array || required.EnumerateArray().Any(r => r.ValueKind != JsonValueKind.String))
                throw new ArgumentException($"The JSON schema at {pointer}: required must be an array of property names.");
            var list = node.Properties.ToList();
            foreach (string name in required.EnumerateArray().Select(r => r.GetString()!).Distinct())
            {
                int i = list.FindIndex(p => p.Name == name);
                if (i < 0)
                {
                    if (node.Additional < 0)
                        throw new ArgumentException($"The JSON schema at {pointer} requires property '{name}', which additionalProperties: false forbids.");
                    list.Add(new JsonSchemaProperty(name, KeyText(name), node.Additional));
                    i = list.Count - 1;
                }
                if (i >= MaxProperties)
                    throw new ArgumentException($"The JSON schema at {pointer} lists more than {MaxProperties} properties; decoding enforces at most {MaxProperties} per object.");
                node.Required |= 1UL << i;
            }
            node.Properties = [.. list];
        }
        if (node.Properties.Length > MaxProperties)
            throw new ArgumentException($"The JSON schema at {pointer} lists more than {MaxProperties} properties; decoding enforces at most {MaxProperties} per object.");
        if (_closeListedObjects && _allOfDepth == 0 && node.Additional == Any && ClosesAsToolArguments(schema))
            node.Additional = -1;

        JsonElement? rest = null;
        string restPointer = $"{pointer}/items";
        if (schema.TryGetProperty("prefixItems", out var prefix)) node.PrefixItems = Tuple(prefix, $"{pointer}/prefixItems");
        if (schema.TryGetProperty("items", out var items))
        {
            if (items.ValueKind == JsonValueKind.Array)
            {
                node.PrefixItems = Tuple(items, $"{pointer}/items");
                if (schema.TryGetProperty("additionalItems", out var more)) (rest, restPointer) = (more, $"{pointer}/additionalItems");
            }
            else rest = items;
        }
        if (rest is { } r) node.Items = r.ValueKind == JsonValueKind.False ? -1 : Node(r, restPointer);
        if (schema.TryGetProperty("minItems", out var min)) node.MinItems = Count(min, "minItems", pointer);
        if (schema.TryGetProperty("maxItems", out var max)) node.MaxItems = Count(max, "maxItems", pointer);
        if (node.Items < 0) node.MaxItems = Math.Min(node.MaxItems, node.PrefixItems.Length);
        return index;
    }

    int[] Tuple(JsonElement list, string pointer)
    {
        if (list.ValueKind != JsonValueKind.Array)
            throw new ArgumentException($"The JSON schema at {pointer} must be an array of schemas.");
        return [.. list.EnumerateArray().Select((s, i) => Node(s, $"{pointer}/{i}"))];
    }

    static int Count(JsonElement value, string word, string pointer) =>
        value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out int n) && n >= 0 ? n
            : throw new ArgumentException($"The JSON schema at {pointer}: {word} must be a non-negative integer.");

    static JsonKinds Kinds(JsonElement type, string pointer)
    {
        if (type.ValueKind == JsonValueKind.String) return Kind(type.GetString()!, pointer);
        if (type.ValueKind == JsonValueKind.Array && type.GetArrayLength() > 0 && type.EnumerateArray().All(t => t.ValueKind == JsonValueKind.String))
            return type.EnumerateArray().Aggregate(JsonKinds.None, (k, t) => k | Kind(t.GetString()!, pointer));
        throw new ArgumentException($"The JSON schema at {pointer}: type must be a type name or a non-empty array of them.");
    }

    static JsonKinds Kind(string name, string pointer) => name switch
    {
        "object" => JsonKinds.Object,
        "array" => JsonKinds.Array,
        "string" => JsonKinds.String,
        "integer" => JsonKinds.Integer,
        "number" => JsonKinds.Number,
        "boolean" => JsonKinds.Boolean,
        "null" => JsonKinds.Null,
        _ => throw new ArgumentException($"The JSON schema at {pointer}: '{name}' is not a JSON schema type (object, array, string, integer, number, boolean, null)."),
    };

    static JsonKinds KindOf(byte[] literal) => literal[0] switch
    {
        (byte)'{' => JsonKinds.Object,
        (byte)'[' => JsonKinds.Array,
        (byte)'"' => JsonKinds.String,
        (byte)'t' or (byte)'f' => JsonKinds.Boolean,
        (byte)'n' => JsonKinds.Null,
        _ => literal.AsSpan().IndexOfAny("."u8) < 0 && literal.AsSpan().IndexOfAny("eE"u8) < 0 ? JsonKinds.Integer | JsonKinds.Number : JsonKinds.Number,
    };

    static byte[] KeyText(string name)
    {
        var text = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(name, s_compact));
        return text[1..^1];
    }

    static string Escape(string name) => name.Replace("~", "~0").Replace("/", "~1");

    static string Target(JsonElement reference, string from) =>
        reference.ValueKind == JsonValueKind.String && reference.GetString() is { } r && r.StartsWith('#') ? (r == "#" ? "#" : r.TrimEnd('/'))
            : throw new ArgumentException($"The JSON schema at {from}: $ref must be a '#...' pointer into the same schema (other documents cannot be fetched).");

    JsonElement Resolve(JsonElement reference, string from)
    {
        string target = Target(reference, from);
        var at = _root;
        if (target.Length > 1)
        {
            if (target[1] != '/')
                throw new ArgumentException($"The JSON schema at {from}: $ref '{target}' is not a JSON pointer ('#/...'); anchors are not supported.");
            foreach (string raw in target[2..].Split('/'))
            {
                string part = Uri.UnescapeDataString(raw).Replace("~1", "/").Replace("~0", "~");
                if (at.ValueKind == JsonValueKind.Object && at.TryGetProperty(part, out var child)) at = child;
                else if (at.ValueKind == JsonValueKind.Array && int.TryParse(part, out int i) && i >= 0 && i < at.GetArrayLength()) at = at[i];
                else throw new ArgumentException($"The JSON schema at {from}: $ref '{target}' points at nothing ('{part}' is not there).");
            }
        }
        return at;
    }

    // The shortest value of every node, by iterating to a fixed point from "none": recursive schemas converge, and a node
    // whose every way down recurses stays Unbounded (the machine never enters it).
    void ComputeMinLengths()
    {
        for (bool changed = true; changed;)
        {
            changed = false;
            foreach (var node in _nodes)
            {
                int length = MinLength(node);
                if (length < node.MinLength) { node.MinLength = length; changed = true; }
            }
        }
    }

    int MinLength(JsonSchemaNode node)
    {
        if (node.AnyOf is { } alternatives) return alternatives.Min(a => _nodes[a].MinLength);
        if (node.Literals is { } literals) return literals.Min(t => t.Length);
        int best = Unbounded;
        var k = node.Kinds;
        if ((k & (JsonKinds.Integer | JsonKinds.Number)) != 0) best = 1;
        else if ((k & JsonKinds.String) != 0) best = 2;
        else if ((k & (JsonKinds.Boolean | JsonKinds.Null)) != 0) best = 4;
        if ((k & JsonKinds.Object) != 0) best = Math.Min(best, Add(RequiredRest(node, node.Required, comma: false), 2));
        if ((k & JsonKinds.Array) != 0) best = Math.Min(best, Add(ItemsRest(node, 0, comma: false), 2));
        return best;
    }

    /// <summary>Bytes to write the properties in <paramref name="missing"/> (each `"key":value`, with commas), not the brace.</summary>
    internal int RequiredRest(JsonSchemaNode node, ulong missing, bool comma)
    {
        int total = 0, n = 0;
        for (ulong m = missing; m != 0; m &= m - 1)
        {
            var p = node.Properties[System.Numerics.BitOperations.TrailingZeroCount(m)];
            total = Add(total, Add(p.Key.Length + 3, _nodes[p.Node].MinLength));
            n++;
        }
        return n == 0 ? 0 : Add(total, comma ? n : n - 1);
    }

    /// <summary>Bytes to write the items an array still needs from index <paramref name="count"/> (with commas), not the bracket.</summary>
    internal int ItemsRest(JsonSchemaNode node, int count, bool comma)
    {
        if (count >= node.MinItems) return 0;
        // The tuple's items one by one; past them every item has one schema, so the rest is a product. A loop per item
        // would cost a request's minItems (up to int.MaxValue) for every node of every pass, and again at every step.
        int total = 0, i = count;
        for (; i < node.MinItems && i < node.PrefixItems.Length; i++) total = Add(total, ItemLength(node.ItemAt(i)));
        if (i < node.MinItems)
        {
            long each = node.MinItems > node.MaxItems ? Unbounded : ItemLength(node.ItemAt(i));
            total = Add(total, (int)Math.Min(Unbounded, (node.MinItems - i) * each));
        }
        long commas = (long)node.MinItems - count - (comma ? 0 : 1);
        return Add(total, (int)Math.Min(Unbounded, commas));
    }

    int ItemLength(int item) => item < 0 ? Unbounded : _nodes[item].MinLength;

    internal static int Add(int a, int b) => Math.Min(Unbounded, a + b);
}
