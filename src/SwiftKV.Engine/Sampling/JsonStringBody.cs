// The inside of a JSON string, which both recognisers (JsonGrammarState, JsonSchemaMachine) read by one rule: up to
// its closing quote a byte changes nothing but the escape state. That is what lets a vocabulary pass that starts
// inside a string read each token's fate from a table made once per token table (TokenTrie) instead of walking the
// tree of 128K tokens through the grammar, nearly all of whose bytes a string accepts.
namespace SwiftKV.Engine.Sampling;

/// <summary>
/// A place inside a JSON string whose bytes, until its closing quote, change only <see cref="Escape"/>: 0 plain,
/// 1 after a backslash, 2..5 after "\u" and (Escape - 2) hex digits. <see cref="EscapesAllowed"/> false: a
/// backslash is refused (a free key in a schema object that lists names: an escape could spell a listed name).
/// </summary>
public readonly record struct JsonStringBody(byte Escape, bool EscapesAllowed)
{
    /// <summary>Distinct bodies: six escape states with escapes allowed, and the plain state without.</summary>
    internal const int Kinds = 7;

    /// <summary>This body's index among the <see cref="Kinds"/>.</summary>
    internal int Kind => EscapesAllowed ? Escape
        : Escape == 0 ? 6 : throw new InvalidOperationException("A string without escapes has no escape state to be in.");

    /// <summary>The body of index <paramref name="kind"/>.</summary>
    internal static JsonStringBody OfKind(int kind) => kind == 6 ? new JsonStringBody(0, false) : new JsonStringBody((byte)kind, true);

    /// <summary>Advances <paramref name="escape"/> by one byte that is not the string's closing quote; false when JSON refuses it.</summary>
    /// <remarks>\u escapes of UTF-16 surrogates are refused, so no document holds a lone surrogate.</remarks>
    public static bool Step(ref byte escape, byte c, bool escapesAllowed = true)
    {
        switch (escape)
        {
            case 0:
                if (c == '\\')
                {
                    escape = 1;
                    return escapesAllowed;
                }
                return c >= 0x20;
            case 1:
                if (c == 'u') { escape = 2; return true; }
                escape = 0;
                return c is (byte)'"' or (byte)'\\' or (byte)'/' or (byte)'b' or (byte)'f' or (byte)'n' or (byte)'r' or (byte)'t';
            default:
                if (!JsonGrammarState.IsHex(c) || (escape == 2 && c is (byte)'d' or (byte)'D')) return false;
                escape = escape == 5 ? (byte)0 : (byte)(escape + 1);
                return true;
        }
    }

    /// <summary>Whether <paramref name="c"/> closes the string here (an unescaped quote).</summary>
    public static bool Closes(byte escape, byte c) => escape == 0 && c == '"';

    /// <summary>Bytes the escape state still needs before the string may close.</summary>
    public static int EscapeRest(byte escape) => escape == 0 ? 0 : escape == 1 ? 1 : 6 - escape;
}
