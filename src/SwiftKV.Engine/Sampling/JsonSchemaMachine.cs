// The recogniser of a compiled JSON schema (JsonSchemaGrammar), for constrained decoding.
// NOTE: a pushdown recogniser run as a lazily built automaton. A configuration is a stack of frames (the object,
// array, string, number or literal being read, each knowing its schema node); a state is the set of configurations
// the text so far can be in (more than one only while anyOf alternatives are undecided: a tool call or the answer,
// two tools with the same argument names). States are interned to ints and each transition is computed once and
// kept in a 256-entry row, so the vocabulary pass (TokenTrie) costs an array read per prefix. Every state knows the
// length of the shortest text that completes the document, which is what the constraint's budget rule needs;
// configurations that cannot complete at all are dropped as they appear, so no accepted text leads to a dead end.
using System.Numerics;
using System.Runtime.CompilerServices;

namespace SwiftKV.Engine.Sampling;

/// <summary>Reads a document of a <see cref="JsonSchemaGrammar"/> byte by byte; one instance per request (not thread-safe).</summary>
public sealed class JsonSchemaMachine : IByteGrammar<int>
{
    const int Unknown = -2, Refused = -1;
    const int MaxFrames = 130;   // 64 nested containers with their values' frames, as JsonGrammarState allows

    static readonly byte[][] s_booleans = ["false"u8.ToArray(), "true"u8.ToArray()];
    static readonly byte[][] s_null = ["null"u8.ToArray()];
    static readonly byte[][] s_booleansAndNull = ["false"u8.ToArray(), "null"u8.ToArray(), "true"u8.ToArray()];

    readonly JsonSchemaGrammar _grammar;
    readonly IReadOnlyList<JsonSchemaNode> _nodes;
    readonly List<StateInfo> _states = [];
    readonly Dictionary<ConfigSet, int> _ids = new();
    int[]?[] _rows = new int[]?[64];   // state -> its transitions by byte (Unknown until computed), made on first use

    public JsonSchemaMachine(JsonSchemaGrammar grammar)
    {
        ArgumentNullException.ThrowIfNull(grammar);
        _grammar = grammar;
        _nodes = grammar.Nodes;
        Start = Intern([new Stack(new ValueFrame(grammar.Root), null, 1)]);
    }

    /// <summary>The state before the first byte.</summary>
    public int Start { get; }

    /// <summary>States built so far (they grow with the variety of text read and tried; see <see cref="Restart"/>).</summary>
    public int StateCount => _states.Count;

    /// <inheritdoc />
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool Accept(ref int state, byte b)
    {
        // The vocabulary pass calls this once per prefix of the token tree: a row read when the transition is known.
        var row = _rows[state] ?? NewRow(state);
        int next = row[b];
        if (next == Unknown) next = row[b] = Compute(_states[state].Configs, b);
        if (next == Refused) return false;
        state = next;
        return true;
    }

    /// <summary>This machine as a struct grammar, so a constraint's generic code calls it without interface dispatch.</summary>
    public Grammar AsGrammar() => new(this);

    /// <inheritdoc />
    public int CompletionLength(in int state) => _states[state].CompletionLength;

    /// <inheritdoc />
    public bool IsComplete(in int state) => _states[state].IsComplete;

    /// <inheritdoc />
    public bool InStringBody(in int state, out JsonStringBody body)
    {
        body = _states[state].Body.GetValueOrDefault();
        return _states[state].Body.HasValue;
    }

    /// <inheritdoc />
    public int WithEscape(in int state, byte escape)
    {
        var s = _states[state].Configs[0];
        return Intern([s.With(s.Top switch
        {
            StringFrame => new StringFrame(escape),
            ObjectFrame o => o with { Escape = escape },
            _ => throw new InvalidOperationException("The state is not inside a string."),
        })]);
    }

    /// <summary>
    /// The string a state is inside when its only configuration reads a string value or a key that no listed name
    /// fits any more (undecided anyOf alternatives read more than a string's bytes).
    /// </summary>
    JsonStringBody? BodyOf(Stack[] configs) => configs is [{ Top: var top }] ? top switch
    {
        StringFrame str => new JsonStringBody(str.Escape, EscapesAllowed: true),
        // A free key starts no escape of its own in an object that lists names (InObject), but may be inside one it
        // began while it still spelled a listed name ("a\u" against the listed a"b): no table holds that state.
        ObjectFrame { Phase: ObjectPhase.InKey, FreeKey: true, Candidates: 0 } o when _nodes[o.Node].Properties.Length == 0 =>
            new JsonStringBody(o.Escape, EscapesAllowed: true),
        ObjectFrame { Phase: ObjectPhase.InKey, FreeKey: true, Candidates: 0, Escape: 0 } => new JsonStringBody(0, EscapesAllowed: false),
        _ => null,
    } : null;

    /// <inheritdoc />
    public bool InText(in int state) => _states[state].InText;

    /// <summary>Whether a configuration reads a string, a key or a literal, where white space is text.</summary>
    static bool ReadsText(Stack s) => s.Top is StringFrame or LiteralFrame or ObjectFrame { Phase: ObjectPhase.InKey };

    /// <summary>
    /// The state's configurations as a key that equals the key of the same state in any machine of this grammar (for
    /// sharing work between them); compared by value.
    /// </summary>
    public object KeyOf(int state) => _states[state].Key;

    /// <summary>Forgets every state but <paramref name="state"/>, which it returns renumbered (to bound the tables).</summary>
    public int Restart(int state)
    {
        var configs = _states[state].Configs;
        _states.Clear();
        _ids.Clear();
        System.Array.Clear(_rows);
        return Intern(configs);
    }

    int[] NewRow(int state)
    {
        var row = new int[256];
        Array.Fill(row, Unknown);
        return _rows[state] = row;
    }

    int Compute(Stack[] configs, byte b)
    {
        var outs = new List<Stack>();
        foreach (var config in configs) Feed(config, b, outs);
        var kept = new HashSet<Stack>();
        foreach (var s in outs)
            if (s.Depth <= MaxFrames && Completion(s) < JsonSchemaGrammar.Unbounded) kept.Add(s);
        return kept.Count == 0 ? Refused : Intern([.. kept]);
    }

    int Intern(Stack[] configs)
    {
        var key = new ConfigSet(configs);
        if (_ids.TryGetValue(key, out int id)) return id;
        int completion = JsonSchemaGrammar.Unbounded;
        bool complete = false;
        foreach (var s in key.Configs)
        {
            completion = Math.Min(completion, Completion(s));
            complete |= IsWhole(s);
        }
        _states.Add(new StateInfo(key.Configs, completion, complete, key, BodyOf(key.Configs), key.Configs.Any(ReadsText)));
        if (_states.Count > _rows.Length) System.Array.Resize(ref _rows, _rows.Length * 2);
        return _ids[key] = _states.Count - 1;
    }

    // ---- transitions -------------------------------------------------------------------------------------------

    void Feed(Stack s, byte c, List<Stack> outs)
    {
        switch (s.Top)
        {
            case ValueFrame v:
                Value(v.Node, s.Below, c, outs, 0);
                break;
            case StringFrame str:
                if (str.Escape == 0 && c == '"') { outs.Add(AfterValue(s.Below)); break; }
                byte e = str.Escape;
                if (JsonStringBody.Step(ref e, c)) outs.Add(s.With(new StringFrame(e)));
                break;
            case NumberFrame num:
                Number(num, s, c, outs);
                break;
            case LiteralFrame lit:
                Literal(lit.Texts, lit.Pos, lit.Lo, lit.Hi, s.Below, c, outs);
                break;
            case ObjectFrame obj:
                InObject(obj, s, c, outs);
                break;
            case ArrayFrame arr:
                InArray(arr, s, c, outs);
                break;
        }
    }

    /// <summary>The first byte of a value of node <paramref name="index"/> (or white space before it).</summary>
    void Value(int index, Stack? below, byte c, List<Stack> outs, int depth)
    {
        var node = _nodes[index];
        if (node.MinLength >= JsonSchemaGrammar.Unbounded) return;
        if (IsWhite(c)) { outs.Add(Push(below, new ValueFrame(index))); return; }
        if (node.AnyOf is { } alternatives)
        {
            if (depth > 32) return;   // a cycle of $refs / anyOf that never reaches a schema of its own
            foreach (int a in alternatives) Value(a, below, c, outs, depth + 1);
            return;
        }
        if (node.Literals is { } literals) { Literal(literals, 0, 0, literals.Length, below, c, outs); return; }
        var k = node.Kinds;
        bool numeric = (k & (JsonKinds.Integer | JsonKinds.Number)) != 0;
        bool integerOnly = (k & JsonKinds.Number) == 0;
        switch (c)
        {
            case (byte)'{' when (k & JsonKinds.Object) != 0:
                outs.Add(Push(below, new ObjectFrame(index, 0, ObjectPhase.First, -1, 0, 0, false, 0)));
                break;
            case (byte)'[' when (k & JsonKinds.Array) != 0:
                outs.Add(Push(below, new ArrayFrame(index, 0, ArrayPhase.First)));
                break;
            case (byte)'"' when (k & JsonKinds.String) != 0:
                outs.Add(Push(below, new StringFrame(0)));
                break;
            case (byte)'-' when numeric:
                outs.Add(Push(below, new NumberFrame(integerOnly, NumberMode.Minus)));
                break;
            case (byte)'0' when numeric:
                outs.Add(Push(below, new NumberFrame(integerOnly, NumberMode.Zero)));
                break;
            case >= (byte)'1' and <= (byte)'9' when numeric:
                outs.Add(Push(below, new NumberFrame(integerOnly, NumberMode.Int)));
                break;
            case (byte)'t' or (byte)'f' or (byte)'n':
                var words = (k & (JsonKinds.Boolean | JsonKinds.Null)) switch
                {
                    JsonKinds.Boolean => s_booleans,
                    JsonKinds.Null => s_null,
                    JsonKinds.Boolean | JsonKinds.Null => s_booleansAndNull,
                    _ => null,
                };
                if (words is not null) Literal(words, 0, 0, words.Length, below, c, outs);
                break;
        }
    }

    /// <summary>
    /// One byte of a value that must be one of <paramref name="texts"/>[lo..hi) (sorted; all share their first
    /// <paramref name="pos"/> bytes, so the texts that go on with <paramref name="c"/> are a contiguous run).
    /// </summary>
    void Literal(byte[][] texts, int pos, int lo, int hi, Stack? below, byte c, List<Stack> outs)
    {
        int first = lo;
        while (first < hi && !(texts[first].Length > pos && texts[first][pos] == c)) first++;
        int end = first;
        while (end < hi && texts[end].Length > pos && texts[end][pos] == c) end++;
        if (first < end)
        {
            if (end - first == 1 && texts[first].Length == pos + 1) outs.Add(AfterValue(below));
            else outs.Add(Push(below, new LiteralFrame(texts, pos + 1, first, end)));
            return;
        }
        // A text that is whole here (a number, since other JSON values end on a closing byte of their own) ends at c.
        if (texts[lo].Length == pos) Feed(AfterValue(below), c, outs);
    }

    void Number(NumberFrame num, Stack s, byte c, List<Stack> outs)
    {
        NumberMode? next = (num.Mode, c) switch
        {
            (NumberMode.Minus, (byte)'0') => NumberMode.Zero,
            (NumberMode.Minus, >= (byte)'1' and <= (byte)'9') => NumberMode.Int,
            (NumberMode.Int, >= (byte)'0' and <= (byte)'9') => NumberMode.Int,
            (NumberMode.Zero or NumberMode.Int, (byte)'.') when !num.IntegerOnly => NumberMode.Dot,
            (NumberMode.Zero or NumberMode.Int or NumberMode.Frac, (byte)'e' or (byte)'E') when !num.IntegerOnly => NumberMode.Exp,
            (NumberMode.Dot or NumberMode.Frac, >= (byte)'0' and <= (byte)'9') => NumberMode.Frac,
            (NumberMode.Exp, (byte)'+' or (byte)'-') => NumberMode.ExpSign,
            (NumberMode.Exp or NumberMode.ExpSign or NumberMode.ExpDigits, >= (byte)'0' and <= (byte)'9') => NumberMode.ExpDigits,
            _ => null,
        };
        if (next is { } mode) outs.Add(s.With(num with { Mode = mode }));
        else if (CanEnd(num.Mode)) Feed(AfterValue(s.Below), c, outs);
    }

    void InObject(ObjectFrame o, Stack s, byte c, List<Stack> outs)
    {
        var node = _nodes[o.Node];
        switch (o.Phase)
        {
            case ObjectPhase.First or ObjectPhase.Key or ObjectPhase.After:
                if (IsWhite(c)) { outs.Add(s); return; }
                if (c == '}' && o.Phase != ObjectPhase.Key && (node.Required & ~o.Seen) == 0) { outs.Add(AfterValue(s.Below)); return; }
                if (!KeyPossible(node, o.Seen)) return;
                if (c == ',' && o.Phase == ObjectPhase.After) { outs.Add(s.With(o with { Phase = ObjectPhase.Key })); return; }
                if (c == '"' && o.Phase != ObjectPhase.After)
                {
                    // With free keys every listed name stays a candidate, so a repeat of a seen one is caught at its end.
                    bool free = FreeKeys(node);
                    ulong candidates = free ? AllProperties(node) : Viable(node) & ~o.Seen;
                    outs.Add(s.With(o with { Phase = ObjectPhase.InKey, KeyPos = 0, Candidates = candidates, FreeKey = free, Escape = 0 }));
                }
                return;
            case ObjectPhase.InKey:
                if (o.Escape == 0 && c == '"')
                {
                    int match = -1;
                    for (ulong m = o.Candidates; m != 0; m &= m - 1)
                    {
                        int i = BitOperations.TrailingZeroCount(m);
                        if (node.Properties[i].Key.Length == o.KeyPos) match = i;
                    }
                    if (match >= 0 && ((o.Seen >> match) & 1) != 0) return;   // a key written twice
                    if (match >= 0 && _nodes[node.Properties[match].Node].MinLength >= JsonSchemaGrammar.Unbounded) return;   // no value fits it
                    if (match < 0 && !o.FreeKey) return;
                    outs.Add(s.With(o with
                    {
                        Phase = ObjectPhase.Colon, Property = match, Seen = match >= 0 ? o.Seen | (1UL << match) : o.Seen,
                        Candidates = 0, KeyPos = 0, FreeKey = false,
                    }));
                    return;
                }
                // A free key in an object that lists names starts no escape of its own: "\u0061" would be the listed
                // "a" in another spelling, and its value would escape that property's schema.
                byte e = o.Escape;
                if (!JsonStringBody.Step(ref e, c)) return;
                ulong next = 0;
                for (ulong m = o.Candidates; m != 0; m &= m - 1)
                {
                    int i = BitOperations.TrailingZeroCount(m);
                    var key = node.Properties[i].Key;
                    if (key.Length > o.KeyPos && key[o.KeyPos] == c) next |= 1UL << i;
                }
                if (next == 0 && !o.FreeKey) return;
                if (next == 0 && c == '\\' && node.Properties.Length > 0) return;   // see above: no escapes in a free key
                // Once no listed name fits, the position no longer matters: all such free keys are one state.
                outs.Add(s.With(o with { Escape = e, Candidates = next, KeyPos = next == 0 ? 0 : o.KeyPos + 1 }));
                return;
            case ObjectPhase.Colon:
                if (IsWhite(c)) { outs.Add(s); return; }
                if (c != ':') return;
                int value = o.Property >= 0 ? node.Properties[o.Property].Node : node.Additional;
                outs.Add(Push(s.With(o with { Phase = ObjectPhase.Value }), new ValueFrame(value)));
                return;
        }
    }

    void InArray(ArrayFrame a, Stack s, byte c, List<Stack> outs)
    {
        var node = _nodes[a.Node];
        if (IsWhite(c)) { outs.Add(s); return; }
        if (c == ']' && a.Phase != ArrayPhase.Item && a.Count >= node.MinItems) { outs.Add(AfterValue(s.Below)); return; }
        if (!ItemPossible(node, a.Count)) return;
        if (a.Phase == ArrayPhase.After)
        {
            if (c == ',') outs.Add(s.With(a with { Phase = ArrayPhase.Item }));
            return;
        }
        Value(node.ItemAt(a.Count), s.With(a with { Phase = ArrayPhase.Value }), c, outs, 0);
    }

    /// <summary>The stack once the value on top of <paramref name="below"/> is whole.</summary>
    Stack AfterValue(Stack? below) => below switch
    {
        null => Stack.Done,
        { Top: ObjectFrame o } => below.With(o with { Phase = ObjectPhase.After }),
        { Top: ArrayFrame a } => below.With(a with { Phase = ArrayPhase.After, Count = Math.Min(a.Count + 1, CountCap(_nodes[a.Node])) }),
        _ => throw new InvalidOperationException("A value ended inside a frame that holds no values."),
    };

    // Past this many items the count changes nothing (no minimum, maximum or tuple position is left to reach), so
    // arrays of any length share their states.
    static int CountCap(JsonSchemaNode node) =>
        node.MaxItems != int.MaxValue ? node.MaxItems : Math.Max(node.MinItems, node.PrefixItems.Length);

    static Stack Push(Stack? below, Frame top) => new(top, below, (below?.Depth ?? 0) + 1);

    bool KeyPossible(JsonSchemaNode node, ulong seen) => FreeKeys(node) || (Viable(node) & ~seen) != 0;

    bool FreeKeys(JsonSchemaNode node) => node.Additional >= 0 && _nodes[node.Additional].MinLength < JsonSchemaGrammar.Unbounded;

    static ulong AllProperties(JsonSchemaNode node) => node.Properties.Length == 64 ? ~0UL : (1UL << node.Properties.Length) - 1;

    /// <summary>The properties whose values can be written at all.</summary>
    ulong Viable(JsonSchemaNode node)
    {
        ulong mask = 0;
        for (int i = 0; i < node.Properties.Length; i++)
            if (_nodes[node.Properties[i].Node].MinLength < JsonSchemaGrammar.Unbounded) mask |= 1UL << i;
        return mask;
    }

    bool ItemPossible(JsonSchemaNode node, int count) =>
        node.ItemAt(count) is int item and >= 0 && _nodes[item].MinLength < JsonSchemaGrammar.Unbounded;


    static bool CanEnd(NumberMode mode) => mode is NumberMode.Zero or NumberMode.Int or NumberMode.Frac or NumberMode.ExpDigits;

    static bool IsWhite(byte c) => c is (byte)' ' or (byte)'\t' or (byte)'\n' or (byte)'\r';


    // ---- completion ----------------------------------------------------------------------------------------------

    /// <summary>True when the configuration's text is a whole document.</summary>
    static bool IsWhole(Stack s) => s.Top is DoneFrame
        || (s.Below is null && s.Top switch
        {
            NumberFrame n => CanEnd(n.Mode),
            LiteralFrame l => l.Texts[l.Lo].Length == l.Pos,
            _ => false,
        });

    /// <summary>Bytes in the shortest text that completes the configuration's document.</summary>
    int Completion(Stack s)
    {
        int total = 0;
        for (Stack? f = s; f is not null; f = f.Below) total = JsonSchemaGrammar.Add(total, Rest(f.Top));
        return total;
    }

    /// <summary>Bytes a frame still needs once the frames above it are whole.</summary>
    int Rest(Frame frame)
    {
        switch (frame)
        {
            case DoneFrame:
                return 0;
            case ValueFrame v:
                return _nodes[v.Node].MinLength;
            case StringFrame str:
                return 1 + JsonStringBody.EscapeRest(str.Escape);
            case NumberFrame n:
                return CanEnd(n.Mode) ? 0 : 1;
            case LiteralFrame l:
                int shortest = JsonSchemaGrammar.Unbounded;
                for (int i = l.Lo; i < l.Hi; i++) shortest = Math.Min(shortest, l.Texts[i].Length - l.Pos);
                return shortest;
            case ObjectFrame o:
                return ObjectRest(o);
            case ArrayFrame a:
                return ArrayRest(a);
            default:
                throw new InvalidOperationException($"Unknown frame {frame.GetType().Name}.");
        }
    }

    int ObjectRest(ObjectFrame o)
    {
        var node = _nodes[o.Node];
        ulong missing = node.Required & ~o.Seen;
        int Close(ulong left) => JsonSchemaGrammar.Add(_grammar.RequiredRest(node, left, comma: true), 1);
        switch (o.Phase)
        {
            case ObjectPhase.First:
                return JsonSchemaGrammar.Add(_grammar.RequiredRest(node, missing, comma: false), 1);
            case ObjectPhase.After:
            case ObjectPhase.Value:
                return Close(missing);
            case ObjectPhase.Colon:
                int value = o.Property >= 0 ? node.Properties[o.Property].Node : node.Additional;
                return JsonSchemaGrammar.Add(1 + _nodes[value].MinLength, Close(missing));
            case ObjectPhase.Key:
                if (missing != 0) return JsonSchemaGrammar.Add(_grammar.RequiredRest(node, missing, comma: false), 1);
                int best = JsonSchemaGrammar.Unbounded;
                ulong open = Viable(node) & ~o.Seen;
                for (ulong m = open; m != 0; m &= m - 1)
                {
                    var p = node.Properties[BitOperations.TrailingZeroCount(m)];
                    best = Math.Min(best, JsonSchemaGrammar.Add(p.Key.Length + 3, _nodes[p.Node].MinLength));
                }
                if (FreeKeys(node))
                {
                    // An empty key is the shortest free one, unless a listed property has the empty name.
                    int key = node.Properties.Any(p => p.Key.Length == 0) ? 1 : 0;
                    best = Math.Min(best, JsonSchemaGrammar.Add(key + 3, _nodes[node.Additional].MinLength));
                }
                return JsonSchemaGrammar.Add(best, 1);
            case ObjectPhase.InKey:
                int shortest = JsonSchemaGrammar.Unbounded;
                bool exact = false;
                for (ulong m = o.Candidates; m != 0; m &= m - 1)
                {
                    int i = BitOperations.TrailingZeroCount(m);
                    var p = node.Properties[i];
                    exact |= p.Key.Length == o.KeyPos;
                    if (((o.Seen >> i) & 1) != 0) continue;
                    int rest = p.Key.Length - o.KeyPos + 2 + _nodes[p.Node].MinLength;
                    shortest = Math.Min(shortest, JsonSchemaGrammar.Add(rest, Close(missing & ~(1UL << i))));
                }
                if (o.FreeKey)
                {
                    // Closing the key right here would make it the listed name it spells: one more byte first.
                    int rest = JsonStringBody.EscapeRest(o.Escape) + (exact && o.Escape == 0 ? 1 : 0) + 2 + _nodes[node.Additional].MinLength;
                    shortest = Math.Min(shortest, JsonSchemaGrammar.Add(rest, Close(missing)));
                }
                return shortest;
            default:
                throw new InvalidOperationException($"Unknown object phase {o.Phase}.");
        }
    }

    int ArrayRest(ArrayFrame a)
    {
        var node = _nodes[a.Node];
        return a.Phase switch
        {
            ArrayPhase.First => JsonSchemaGrammar.Add(_grammar.ItemsRest(node, a.Count, comma: false), 1),
            ArrayPhase.After => JsonSchemaGrammar.Add(_grammar.ItemsRest(node, a.Count, comma: true), 1),
            ArrayPhase.Value => JsonSchemaGrammar.Add(_grammar.ItemsRest(node, a.Count + 1, comma: true), 1),
            // After a comma one more item must come, whether or not the minimum is reached.
            ArrayPhase.Item => JsonSchemaGrammar.Add(a.Count < node.MinItems ? _grammar.ItemsRest(node, a.Count, comma: false)
                : node.ItemAt(a.Count) is int item and >= 0 ? _nodes[item].MinLength : JsonSchemaGrammar.Unbounded, 1),
            _ => throw new InvalidOperationException($"Unknown array phase {a.Phase}."),
        };
    }

    // ---- frames ----------------------------------------------------------------------------------------------------

    enum ObjectPhase : byte { First, Key, InKey, Colon, Value, After }
    enum ArrayPhase : byte { First, Item, Value, After }
    enum NumberMode : byte { Minus, Zero, Int, Dot, Frac, Exp, ExpSign, ExpDigits }

    abstract record Frame;

    /// <summary>The document is whole.</summary>
    sealed record DoneFrame : Frame;

    /// <summary>Before a value of <c>Node</c> (white space may come first).</summary>
    sealed record ValueFrame(int Node) : Frame;

    /// <summary>Inside a string value.</summary>
    sealed record StringFrame(byte Escape) : Frame;

    sealed record NumberFrame(bool IntegerOnly, NumberMode Mode) : Frame;

    /// <summary>Inside a value that must be one of Texts[Lo..Hi), Pos bytes read.</summary>
    sealed record LiteralFrame(byte[][] Texts, int Pos, int Lo, int Hi) : Frame;

    /// <summary>
    /// Inside an object: the properties seen, and in a key, the listed names it may still become (Candidates),
    /// whether it may be a name not listed (FreeKey) and its escape state; Property is the key being valued (-1: not listed).
    /// </summary>
    sealed record ObjectFrame(int Node, ulong Seen, ObjectPhase Phase, int Property, int KeyPos, ulong Candidates, bool FreeKey, byte Escape) : Frame;

    sealed record ArrayFrame(int Node, int Count, ArrayPhase Phase) : Frame;

    /// <summary>A configuration: a stack of frames, immutable and compared by value.</summary>
    sealed record Stack(Frame Top, Stack? Below, int Depth)
    {
        public static readonly Stack Done = new(new DoneFrame(), null, 0);

        public Stack With(Frame top) => new(top, Below, Depth);
    }

    /// <summary>A state: its configurations, shortest completion, whether it is whole, its configurations as a
    /// value-compared key (boxed once, equal across machines of one grammar), and the string it is inside (null when
    /// its next bytes do more than move a string's escape state).</summary>
    sealed record StateInfo(Stack[] Configs, int CompletionLength, bool IsComplete, object Key, JsonStringBody? Body, bool InText);

    /// <summary>A <see cref="JsonSchemaMachine"/> as a struct <see cref="IByteGrammar{TState}"/>.</summary>
    public readonly struct Grammar(JsonSchemaMachine machine) : IByteGrammar<int>
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public bool Accept(ref int state, byte b) => machine.Accept(ref state, b);

        public int CompletionLength(in int state) => machine.CompletionLength(state);

        public bool IsComplete(in int state) => machine.IsComplete(state);

        public bool InStringBody(in int state, out JsonStringBody body) => machine.InStringBody(state, out body);

        public int WithEscape(in int state, byte escape) => machine.WithEscape(state, escape);

        public bool InText(in int state) => machine.InText(state);
    }

    /// <summary>A set of configurations as a dictionary key (ordered by hash, so equal sets usually compare equal).</summary>
    readonly struct ConfigSet : IEquatable<ConfigSet>
    {
        readonly int _hash;

        public ConfigSet(Stack[] configs)
        {
            var hashes = configs.Select(c => c.GetHashCode()).ToArray();
            System.Array.Sort(hashes, configs);
            Configs = configs;
            var h = new HashCode();
            foreach (int x in hashes) h.Add(x);
            _hash = h.ToHashCode();
        }

        public Stack[] Configs { get; }

        public bool Equals(ConfigSet other) => _hash == other._hash && Configs.AsSpan().SequenceEqual(other.Configs);

        public override bool Equals(object? obj) => obj is ConfigSet other && Equals(other);

        public override int GetHashCode() => _hash;
    }
}
