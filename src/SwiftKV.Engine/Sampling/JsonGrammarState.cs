// A byte-level pushdown recogniser for one JSON object (RFC 8259, top level restricted to an object as OpenAI's
// json_object mode is). It knows, in every state, the length of the shortest text that would complete the
// document; JsonConstraint uses that to close the JSON before the token budget runs out.
// NOTE: a plain struct (nesting kept as bits of a ulong, depth <= 64) so trying a token is a copy and a loop over
// its bytes, cheap enough to test every vocabulary entry at every step. Bytes >= 0x80 are allowed only inside
// strings; \u escapes of UTF-16 surrogates are refused so every accepted document decodes without a lone surrogate.
namespace SwiftKV.Engine.Sampling;

/// <summary>Where a JSON recogniser is; <c>Accept</c> advances it byte by byte.</summary>
public struct JsonGrammarState : IEquatable<JsonGrammarState>
{
    enum Mode : byte
    {
        TopObject, ValueExpected, ArrayFirst, ObjectFirst, KeyExpected, ColonExpected, AfterValue,
        InString, Escape, Unicode, NumMinus, NumZero, NumInt, NumDot, NumFrac, NumExp, NumExpSign, NumExpDigits,
        Literal, Done,
    }

    const int MaxDepth = 64;
    static readonly string[] s_literals = ["true", "false", "null"];

    Mode _mode;
    byte _sub;       // \u digits read, or letters of a literal matched
    byte _literal;   // index into s_literals
    bool _stringIsKey;
    byte _depth;
    ulong _objects;  // bit d set: the container at depth d+1 is an object

    /// <summary>True once a whole top-level object has been read.</summary>
    public readonly bool IsComplete => _mode == Mode.Done;

    /// <summary>Same state: every byte sequence is accepted or refused alike from both.</summary>
    public readonly bool Equals(JsonGrammarState other) => Key == other.Key;

    public override readonly bool Equals(object? obj) => obj is JsonGrammarState other && Equals(other);

    public override readonly int GetHashCode() => Key.GetHashCode();

    // The fields that matter in this mode: a field left over from an earlier mode (the last \u digit count, the key
    // flag of a string already closed, the kinds of containers already closed) would tell equal states apart.
    readonly (Mode, byte, byte, bool, byte, ulong) Key => (_mode,
        _mode is Mode.Unicode or Mode.Literal ? _sub : (byte)0,
        _mode == Mode.Literal ? _literal : (byte)0,
        _mode is Mode.InString or Mode.Escape or Mode.Unicode && _stringIsKey,
        _depth,
        _depth == MaxDepth ? _objects : _objects & ((1UL << _depth) - 1));

    /// <summary>Advances by one byte; false (state unspecified) when the byte cannot continue valid JSON.</summary>
    public bool Accept(byte c)
    {
        bool ws = c is (byte)' ' or (byte)'\t' or (byte)'\n' or (byte)'\r';
        switch (_mode)
        {
            case Mode.TopObject:
                if (ws) return true;
                return c == '{' && Push(isObject: true);
            case Mode.ValueExpected:
            case Mode.ArrayFirst:
                if (ws) return true;
                if (c == ']' && _mode == Mode.ArrayFirst) return Pop();
                return StartValue(c);
            case Mode.ObjectFirst:
            case Mode.KeyExpected:
                if (ws) return true;
                if (c == '}' && _mode == Mode.ObjectFirst) return Pop();
                if (c != '"') return false;
                _mode = Mode.InString;
                _stringIsKey = true;
                return true;
            case Mode.ColonExpected:
                if (ws) return true;
                if (c != ':') return false;
                _mode = Mode.ValueExpected;
                return true;
            case Mode.AfterValue:
                if (ws) return true;
                bool inObject = TopIsObject;
                if (c == ',') { _mode = inObject ? Mode.KeyExpected : Mode.ValueExpected; return true; }
                if ((c == '}' && inObject) || (c == ']' && !inObject)) return Pop();
                return false;
            case Mode.InString:
                if (c == '"') { if (_stringIsKey) _mode = Mode.ColonExpected; else ValueDone(); return true; }
                if (c == '\\') { _mode = Mode.Escape; return true; }
                return c >= 0x20;
            case Mode.Escape:
                if (c == 'u') { _mode = Mode.Unicode; _sub = 0; return true; }
                if (c is (byte)'"' or (byte)'\\' or (byte)'/' or (byte)'b' or (byte)'f' or (byte)'n' or (byte)'r' or (byte)'t') { _mode = Mode.InString; return true; }
                return false;
            case Mode.Unicode:
                if (!IsHex(c) || (_sub == 0 && (c == 'd' || c == 'D'))) return false;
                if (++_sub == 4) _mode = Mode.InString;
                return true;
            case Mode.NumMinus:
                if (c == '0') { _mode = Mode.NumZero; return true; }
                if (c is >= (byte)'1' and <= (byte)'9') { _mode = Mode.NumInt; return true; }
                return false;
            case Mode.NumZero:
            case Mode.NumInt:
                if (_mode == Mode.NumInt && IsDigit(c)) return true;
                if (c == '.') { _mode = Mode.NumDot; return true; }
                if (c is (byte)'e' or (byte)'E') { _mode = Mode.NumExp; return true; }
                return EndNumber(c);
            case Mode.NumDot:
                if (!IsDigit(c)) return false;
                _mode = Mode.NumFrac;
                return true;
            case Mode.NumFrac:
                if (IsDigit(c)) return true;
                if (c is (byte)'e' or (byte)'E') { _mode = Mode.NumExp; return true; }
                return EndNumber(c);
            case Mode.NumExp:
                if (c is (byte)'+' or (byte)'-') { _mode = Mode.NumExpSign; return true; }
                if (IsDigit(c)) { _mode = Mode.NumExpDigits; return true; }
                return false;
            case Mode.NumExpSign:
                if (!IsDigit(c)) return false;
                _mode = Mode.NumExpDigits;
                return true;
            case Mode.NumExpDigits:
                return IsDigit(c) || EndNumber(c);
            case Mode.Literal:
                string word = s_literals[_literal];
                if (c != word[_sub]) return false;
                if (++_sub == word.Length) ValueDone();
                return true;
            default:
                return false;
        }
    }

    /// <summary>Advances by every byte of <paramref name="bytes"/>; false at the first that does not fit.</summary>
    public bool Accept(ReadOnlySpan<byte> bytes)
    {
        foreach (byte b in bytes)
            if (!Accept(b)) return false;
        return true;
    }

    /// <summary>Bytes in the shortest text that completes the document from here (0 when complete).</summary>
    public readonly int CompletionLength
    {
        get
        {
            int stringRest = (_stringIsKey ? 3 : 1) + _depth; // closing quote (+ `:0` for a key) and the closers
            return _mode switch
            {
                Mode.TopObject => 2,
                Mode.ValueExpected => 1 + _depth,
                Mode.KeyExpected => 4 + _depth,
                Mode.ColonExpected => 2 + _depth,
                Mode.InString => stringRest,
                Mode.Escape => 1 + stringRest,
                Mode.Unicode => 4 - _sub + stringRest,
                Mode.NumMinus or Mode.NumDot or Mode.NumExp or Mode.NumExpSign => 1 + _depth,
                Mode.Literal => s_literals[_literal].Length - _sub + _depth,
                Mode.Done => 0,
                _ => _depth, // ArrayFirst, ObjectFirst, AfterValue, a number that could end here
            };
        }
    }

    /// <summary>Whether the state is inside a string (key or value), and where in its escapes.</summary>
    internal readonly bool InStringBody(out JsonStringBody body)
    {
        body = new JsonStringBody(_mode switch { Mode.Escape => 1, Mode.Unicode => (byte)(2 + _sub), _ => 0 }, EscapesAllowed: true);
        return _mode is Mode.InString or Mode.Escape or Mode.Unicode;
    }

    /// <summary>Whether the state is inside a string or a literal (true, false, null), where white space is text.</summary>
    internal readonly bool InText => _mode is Mode.InString or Mode.Escape or Mode.Unicode or Mode.Literal;

    /// <summary>The same string with its escape state set to <paramref name="escape"/> (see <see cref="JsonStringBody"/>).</summary>
    internal readonly JsonGrammarState WithEscape(byte escape)
    {
        var next = this;
        next._mode = escape switch { 0 => Mode.InString, 1 => Mode.Escape, _ => Mode.Unicode };
        // _sub counts \u digits only in Mode.Unicode; elsewhere in a string it keeps what it held, so equal states stay equal.
        if (escape >= 2) next._sub = (byte)(escape - 2);
        return next;
    }

    readonly bool TopIsObject => _depth > 0 && ((_objects >> (_depth - 1)) & 1) != 0;

    bool StartValue(byte c)
    {
        switch (c)
        {
            case (byte)'{': return Push(isObject: true);
            case (byte)'[': return Push(isObject: false);
            case (byte)'"': _mode = Mode.InString; _stringIsKey = false; return true;
            case (byte)'-': _mode = Mode.NumMinus; return true;
            case (byte)'0': _mode = Mode.NumZero; return true;
            case (byte)'t': _literal = 0; break;
            case (byte)'f': _literal = 1; break;
            case (byte)'n': _literal = 2; break;
            default:
                if (c is >= (byte)'1' and <= (byte)'9') { _mode = Mode.NumInt; return true; }
                return false;
        }
        _mode = Mode.Literal;
        _sub = 1;
        return true;
    }

    bool Push(bool isObject)
    {
        if (_depth == MaxDepth) return false;
        if (isObject) _objects |= 1UL << _depth;
        else _objects &= ~(1UL << _depth);
        _depth++;
        _mode = isObject ? Mode.ObjectFirst : Mode.ArrayFirst;
        return true;
    }

    bool Pop()
    {
        _depth--;
        ValueDone();
        return true;
    }

    void ValueDone() => _mode = _depth == 0 ? Mode.Done : Mode.AfterValue;

    bool EndNumber(byte c)
    {
        ValueDone();
        return Accept(c);
    }

    static bool IsDigit(byte c) => c is >= (byte)'0' and <= (byte)'9';
    internal static bool IsHex(byte c) => IsDigit(c) || c is >= (byte)'a' and <= (byte)'f' || c is >= (byte)'A' and <= (byte)'F';
}

/// <summary><see cref="JsonGrammarState"/> as a grammar a <see cref="GrammarConstraint{TState, TGrammar}"/> drives.</summary>
public readonly struct JsonObjectGrammar : IByteGrammar<JsonGrammarState>
{
    public bool Accept(ref JsonGrammarState state, byte b) => state.Accept(b);
    public int CompletionLength(in JsonGrammarState state) => state.CompletionLength;
    public bool IsComplete(in JsonGrammarState state) => state.IsComplete;
    public bool InStringBody(in JsonGrammarState state, out JsonStringBody body) => state.InStringBody(out body);
    public JsonGrammarState WithEscape(in JsonGrammarState state, byte escape) => state.WithEscape(escape);
    public bool InText(in JsonGrammarState state) => state.InText;
}
