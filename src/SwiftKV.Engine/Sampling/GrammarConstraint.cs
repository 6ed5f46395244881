// Constrained decoding by a byte-level grammar: before each sample, every vocabulary entry is tried against the
// grammar from the current state and masked out unless its bytes continue a valid document. Stop tokens are allowed
// only once the document is complete (and then beside whatever may still extend it, such as a top-level number's
// digits), so generation ends when the grammar says it may.
// NOTE: the budget rule — a token is allowed only if the shortest completion after it still fits the tokens left —
// makes even a random-weight model close its document before MaxOutputTokens (every byte is a token in byte-level
// BPE, so a completing step always exists). When the budget is already smaller than the shortest completion (a tiny
// MaxOutputTokens), the rule is dropped: the answer is then cut off mid-document and the caller sees FinishReason
// Length. A state's grammar pass (the vocabulary's prefix tree through the grammar: TokenTrie) is kept with the
// shortest completion each taken token leaves, so the budget rule is one comparison per token, and with the longest
// of them: while the budget still covers that, the rule removes nothing and the kept mask is the answer. Inside a
// string most steps return to one state, so most steps reuse it. A schema needs tens of bytes at least, so with a
// few hundred output tokens its budget rule binds for much of the answer: re-walking every token per step then cost
// more than the GPU's step (docs/BENCHMARKS.md, structured output).
namespace SwiftKV.Engine.Sampling;

/// <summary>A byte-level recogniser that a <see cref="GrammarConstraint{TState, TGrammar}"/> drives over token bytes.</summary>
public interface IByteGrammar<TState> where TState : struct, IEquatable<TState>
{
    /// <summary>Advances by one byte; false (state unspecified) when the byte cannot continue a valid document.</summary>
    bool Accept(ref TState state, byte b);

    /// <summary>Bytes in the shortest text that completes the document from here (0 when it may end here).</summary>
    int CompletionLength(in TState state);

    /// <summary>True when the text so far is a whole document (an end of turn may follow).</summary>
    bool IsComplete(in TState state);

    /// <summary>
    /// Whether the next bytes, up to an unescaped quote, change nothing but the escape state of a string the state is
    /// inside (<paramref name="body"/>): a vocabulary pass then reads each token's fate from a table (TokenTrie).
    /// </summary>
    bool InStringBody(in TState state, out JsonStringBody body);

    /// <summary>The state <see cref="InStringBody"/> accepted, with its string's escape state set to <paramref name="escape"/>.</summary>
    TState WithEscape(in TState state, byte escape);

    /// <summary>Whether the state is inside a string, key or literal (in any of its readings), where white space is text.</summary>
    bool InText(in TState state);
}

/// <summary>A decoding constraint that can tell whether its document is whole.</summary>
public interface IGrammarConstraint : ILogitsConstraint
{
    /// <summary>True once the generated text is a complete document.</summary>
    bool IsComplete { get; }

    /// <summary>
    /// True when the budget rule (the shortest completion must fit the tokens left) masked a token the grammar allowed,
    /// other than white space, before the document was complete: MaxOutputTokens may have shaped the answer, which can
    /// be shorter than the model would have written (a list closed early, a string ended). Callers report it as cut
    /// short (FinishReason Length) even though the document is whole.
    /// NOTE: it errs towards true. The mask is made without the logits (the serving engine applies it on the GPU), so
    /// whether the model would have picked a masked token is unknown: an answer that ends within a few tokens of the
    /// budget (the rule counts the completion's bytes against the tokens left) is flagged although the model may have
    /// ended it the same way. Reporting a whole answer as cut short costs a retry with more room; reporting a shortened
    /// one as whole runs a tool on cut arguments.
    /// </summary>
    bool BudgetShaped => false;
}

/// <summary>Masks logits so the generated text follows <typeparamref name="TGrammar"/>.</summary>
public abstract class GrammarConstraint<TState, TGrammar> : IGrammarConstraint
    where TState : struct, IEquatable<TState> where TGrammar : IByteGrammar<TState>
{
    readonly IReadOnlyList<byte[]?> _tokenBytes;
    readonly IReadOnlySet<int> _stopTokenIds;
    readonly int _maxNewTokens;
    readonly TGrammar _grammar;
    TState _state;
    int _generated;
    int _whitespaceRun;   // white-space bytes just read between JSON tokens (WhitespaceRuns)
    WhitespaceRuns? _whitespace;
    readonly Dictionary<(TState, int), StateMask> _masks = new();
    TokenTrie? _trie;   // the table's, shared by every constraint over it
    const int MaxKeptStates = 8;    // 8 x 256 KB a request at Llama 3's vocabulary

    /// <summary>
    /// A state's grammar pass: for each token, the shortest completion it leaves (<see cref="Refused"/> when the grammar
    /// refuses it; <see cref="Saturated"/> when too long to keep), whether any token is taken, and the longest
    /// completion a taken token leaves.
    /// </summary>
    /// <remarks>Immutable once made, so constraints over the same grammar and token table may share it.</remarks>
    protected sealed record StateMask(ushort[] Completion, bool Any, int LongestCompletion);

    /// <summary>In <see cref="StateMask.Completion"/>: the grammar refuses the token here.</summary>
    protected const ushort Refused = ushort.MaxValue;

    /// <summary>In <see cref="StateMask.Completion"/>: taken, with a completion too long to keep (found again when needed).</summary>
    protected const ushort Saturated = ushort.MaxValue - 1;

    /// <param name="grammar">The recogniser.</param>
    /// <param name="start">Its state before the answer.</param>
    /// <param name="tokenBytes">Bytes of each token id; null for ids that may never be generated (special tokens).</param>
    /// <param name="stopTokenIds">End-of-turn ids, allowed once the document is complete.</param>
    /// <param name="maxNewTokens">The request's token budget (for closing the document in time).</param>
    /// <param name="prefix">Text already in the answer (e.g. a prefilled start of a tool call) that the grammar reads first.</param>
    /// <param name="what">What the grammar recognises, for the error about a prefix it refuses ("a JSON object").</param>
    protected GrammarConstraint(TGrammar grammar, TState start, IReadOnlyList<byte[]?> tokenBytes, IReadOnlySet<int> stopTokenIds,
        int maxNewTokens, ReadOnlySpan<byte> prefix, string what)
    {
        ArgumentNullException.ThrowIfNull(grammar);
        ArgumentNullException.ThrowIfNull(tokenBytes);
        ArgumentNullException.ThrowIfNull(stopTokenIds);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxNewTokens);
        _grammar = grammar;
        _tokenBytes = tokenBytes;
        _stopTokenIds = stopTokenIds;
        _maxNewTokens = maxNewTokens;
        _state = start;
        foreach (byte b in prefix)
        {
            if (!_grammar.Accept(ref _state, b))
                throw new ArgumentException($"The prefix is not the start of {what}.", nameof(prefix));
            _whitespaceRun = !WhitespaceRuns.IsWhitespace(b) ? 0 : BetweenTokens(_state) ? _whitespaceRun + 1 : _whitespaceRun;
        }
    }

    /// <summary>True once the generated text is a complete document.</summary>
    public bool IsComplete => _grammar.IsComplete(_state);

    /// <summary>The recogniser's current state.</summary>
    protected TState State => _state;

    /// <summary>Replaces the state by an equivalent one (a grammar that renumbers its states) and drops the kept masks.</summary>
    protected void Rebase(TState equivalent)
    {
        _state = equivalent;
        _masks.Clear();
    }

    /// <inheritdoc />
    public void Apply(Span<float> logits)
    {
        ApplyGrammar(logits);
        var next = _state;
        if (_grammar.Accept(ref next, (byte)' ') && BetweenTokens(next))
            (_whitespace ??= WhitespaceRuns.For(_tokenBytes)).MaskLongerThan(WhitespaceRuns.MaxRun - _whitespaceRun, logits);
    }

    /// <summary>
    /// Whether the state lies between JSON tokens, where white space is not text: not inside a string, key or literal,
    /// and the recogniser takes a space and stays where it is. A space that ends a number lands here too.
    /// </summary>
    bool BetweenTokens(TState state)
    {
        if (_grammar.InText(state)) return false;
        var next = state;
        return _grammar.Accept(ref next, (byte)' ') && next.Equals(state);
    }

    void ApplyGrammar(Span<float> logits)
    {
        int budgetAfter = _maxNewTokens - _generated - 1;
        bool complete = _grammar.IsComplete(_state);
        // When even the shortest completion no longer fits, the rule is dropped (see the NOTE above).
        int limit = _grammar.CompletionLength(_state) <= budgetAfter + 1 ? budgetAfter : int.MaxValue;
        var kept = Kept(logits.Length);
        var completion = kept.Completion;
        if (!complete && kept.LongestCompletion <= limit)
        {
            // The budget rule removes nothing here: the grammar's mask is the answer.
            if (!kept.Any) return;   // nothing fits: leave the row alone rather than sample from nothing
            for (int id = 0; id < logits.Length; id++)
                if (completion[id] == Refused) logits[id] = float.NegativeInfinity;
            return;
        }
        bool any = false;
        for (int id = 0; id < logits.Length && !any; id++) any = Fits(id, completion, limit, complete);
        if (!any) return;
        bool inText = _grammar.InText(_state);
        for (int id = 0; id < logits.Length; id++)
            if (!Fits(id, completion, limit, complete))
            {
                logits[id] = float.NegativeInfinity;
                // The grammar took it, the budget did not; white space between JSON tokens changes nothing of the document.
                if (!complete && completion[id] != Refused && (!IsWhitespace(id) || inText)) BudgetShaped = true;
            }
    }

    /// <inheritdoc />
    public bool BudgetShaped { get; private set; }

    bool IsWhitespace(int id) => id < _tokenBytes.Count && _tokenBytes[id] is { Length: > 0 } b && b.AsSpan().IndexOfAnyExcept(" \t\n\r"u8) < 0;

    /// <summary>Whether token <paramref name="id"/> may come next: taken by the grammar within the budget, or a stop once whole.</summary>
    bool Fits(int id, ushort[] completion, int limit, bool complete)
    {
        int length = completion[id];
        if (length == Refused) return complete && id < _tokenBytes.Count && _stopTokenIds.Contains(id);
        if (length == Saturated)
        {
            var next = _state;
            foreach (byte b in _tokenBytes[id]!) _grammar.Accept(ref next, b);
            length = _grammar.CompletionLength(next);
        }
        return length <= limit;
    }

    /// <summary>The current state's mask without the budget rule, from the kept ones or by a grammar pass.</summary>
    StateMask Kept(int length)
    {
        if (_masks.TryGetValue((_state, length), out var kept)) return kept;
        var mask = SharedMask(_state, _tokenBytes, length);
        if (mask is null)
        {
            var pass = new MaskPass { Completion = new ushort[length], Length = length, Grammar = _grammar };
            Array.Fill(pass.Completion, Refused);
            (_trie ??= TokenTrie.For(_tokenBytes)).ForEachAccepted(_grammar, _state, ref pass);
            mask = new StateMask(pass.Completion, pass.Any, pass.Longest);
            Share(_state, _tokenBytes, length, mask);
        }
        if (_masks.Count >= MaxKeptStates) _masks.Clear();
        return _masks[(_state, length)] = mask;
    }

    /// <summary>A mask another constraint over the same grammar made for an equivalent state (none by default).</summary>
    protected virtual StateMask? SharedMask(TState state, IReadOnlyList<byte[]?> tokenBytes, int length) => null;

    /// <summary>Offers a new mask to other constraints over the same grammar (ignored by default).</summary>
    protected virtual void Share(TState state, IReadOnlyList<byte[]?> tokenBytes, int length, StateMask mask)
    {
    }

    /// <summary>Collects a grammar pass: each taken token's completion, whether any is taken, and the longest.</summary>
    struct MaskPass : ITokenSink<TState>
    {
        public ushort[] Completion;
        public int Length, Longest;
        public bool Any;
        public TGrammar Grammar;

        TState _last;
        int _lastCompletion;
        bool _hasLast;

        public void Token(int id, in TState after)
        {
            if (id >= Length) return;   // a logits row shorter than the token table
            // Runs of tokens end in one state (inside a string, nearly all of them): its completion is asked once a run.
            if (!_hasLast || !after.Equals(_last))
            {
                _last = after;
                _lastCompletion = Grammar.CompletionLength(after);
                _hasLast = true;
            }
            int completion = _lastCompletion;
            Completion[id] = (ushort)Math.Min(completion, Saturated);
            Any = true;
            Longest = Math.Max(Longest, completion);
        }
    }

    /// <inheritdoc />
    public virtual void Accept(int tokenId)
    {
        _generated++;
        if ((uint)tokenId >= (uint)_tokenBytes.Count || _tokenBytes[tokenId] is not { } bytes) return;
        var next = _state;
        int run = _whitespaceRun;
        foreach (byte b in bytes)
        {
            if (!_grammar.Accept(ref next, b)) return;   // a token the mask refused (a stop token, or an unmasked row)
            run = !WhitespaceRuns.IsWhitespace(b) ? 0 : BetweenTokens(next) ? run + 1 : run;
        }
        _state = next;
        _whitespaceRun = run;
    }
}
