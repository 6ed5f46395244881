// JSON-constrained decoding: the grammar state agrees with System.Text.Json (the independent reference) on valid and
// invalid documents, and random logits under the constraint always yield a document that parses, within budget.
using System.Text;
using System.Text.Json;
using SwiftKV.Engine.Sampling;
using Xunit;

namespace SwiftKV.Engine.Tests;

public class JsonConstraintTests
{
    static bool Recognises(string text)
    {
        var state = new JsonGrammarState();
        return state.Accept(Encoding.UTF8.GetBytes(text)) && state.IsComplete;
    }

    static bool ReferenceParsesObject(string text)
    {
        try
        {
            using var doc = JsonDocument.Parse(text);
            return doc.RootElement.ValueKind == JsonValueKind.Object;
        }
        catch (JsonException)
        {
            return false;
        }
    }

    [Theory]
    [InlineData("{}")]
    [InlineData(" { \"a\" : 1 } ")]
    [InlineData("{\"a\":[1,-2.5e+3,0.0,true,false,null,\"x\\n\\u00e9\"],\"b\":{\"c\":{}},\"d\":[]}")]
    [InlineData("{\"é\":\"ünïcode ✓\"}")]
    [InlineData("{\"a\":-0}")]
    [InlineData("[1]")]
    [InlineData("{\"a\":01}")]
    [InlineData("{\"a\":1,}")]
    [InlineData("{\"a\" 1}")]
    [InlineData("{a:1}")]
    [InlineData("{\"a\":tru}")]
    [InlineData("{\"a\":1.}")]
    [InlineData("{\"a\":\"\\x\"}")]
    [InlineData("{\"a\":[1,2}")]
    [InlineData("{\"a\":\"tab\there\"}")]
    [InlineData("{\"a\":1}}")]
    [InlineData("\"s\"")]
    public void Accept_AgreesWithSystemTextJson(string text)
    {
        // A trailing space after the top-level object is not accepted by the constraint (it stops there), so
        // compare on the trimmed end.
        Assert.Equal(ReferenceParsesObject(text), Recognises(text.TrimEnd()));
    }

    [Fact]
    public void Accept_RefusesSurrogateEscapes()
    {
        Assert.False(Recognises("{\"a\":\"\\ud83d\\ude00\"}"));
        Assert.True(Recognises("{\"a\":\"\\u00e9\\u20AC\"}"));
    }

    [Theory]
    [InlineData("", 2)]
    [InlineData("{", 1)]
    [InlineData("{\"ke", 4)]            // `":0}`
    [InlineData("{\"k\":[", 2)]
    [InlineData("{\"k\":[tr", 4)]
    [InlineData("{\"k\":-", 2)]
    [InlineData("{\"k\":1,", 5)]        // `"":0}`
    [InlineData("{\"k\":{\"a\":\"x\\u0", 6)]
    [InlineData("{}", 0)]
    public void CompletionLength_IsTheShortestCompletion(string prefix, int expected)
    {
        var state = new JsonGrammarState();
        Assert.True(state.Accept(Encoding.UTF8.GetBytes(prefix)));
        Assert.Equal(expected, state.CompletionLength);
    }

    /// <summary>A toy byte-level vocabulary: every single byte plus a few multi-byte pieces, then a stop token.</summary>
    static (List<byte[]?> Bytes, int Stop) Vocabulary()
    {
        var bytes = new List<byte[]?>();
        for (int b = 0; b < 256; b++) bytes.Add([(byte)b]);
        foreach (var piece in new[] { "{\"", "\": ", "true", "null", "}}", "]]", "  ", "\n\n", "abc", "123", ", \"", "[[", "{{", "\\u" })
            bytes.Add(Encoding.UTF8.GetBytes(piece));
        bytes.Add(null); // a special token: never allowed
        bytes.Add([]);   // the stop token
        return (bytes, bytes.Count - 1);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(8)]
    [InlineData(40)]
    public void RandomLogits_AlwaysYieldParsableJson_WithinBudget(int maxNewTokens)
    {
        var (vocab, stop) = Vocabulary();
        var stops = new HashSet<int> { stop };
        for (ulong seed = 0; seed < 40; seed++)
        {
            string json = ConstrainedGeneration.Generate(new JsonConstraint(vocab, stops, maxNewTokens), vocab, stop, maxNewTokens, seed);
            Assert.True(ReferenceParsesObject(json), $"seed {seed}, budget {maxNewTokens}: '{json}'");
        }
    }

    /// <summary>
    /// BudgetShaped tells whether the budget rule masked a token the grammar allowed before the document closed. A model
    /// writing {"a": [1, 1, 1, ...]} byte by byte with room to spare (24 tokens) is not shaped; with 12 tokens the rule closes
    /// the list early (the document still parses) and says so. The second case is driven as the serving engine drives
    /// a constraint: Apply on a row of zeros, then the preferred token if it is still allowed.
    /// </summary>
    [Fact]
    public void BudgetShaped_OnlyWhenTheBudgetRuleMaskedAGrammarToken()
    {
        var (vocab, stop) = Vocabulary();
        var stops = new HashSet<int> { stop };
        string Drive(JsonConstraint c, int budget)
        {
            byte[] want = Encoding.UTF8.GetBytes("{\"a\": [" + string.Join(", ", Enumerable.Repeat("1", 40)) + "]}");
            var text = new List<byte>();
            for (int step = 0; step < budget; step++)
            {
                var row = new float[vocab.Count];
                c.Apply(row);
                int token = text.Count < want.Length && !float.IsNegativeInfinity(row[want[text.Count]]) ? want[text.Count]
                    : !float.IsNegativeInfinity(row[stop]) ? stop
                    : Array.FindIndex(row, v => !float.IsNegativeInfinity(v));
                c.Accept(token);
                if (token == stop) break;
                text.AddRange(vocab[token]!);
            }
            return Encoding.UTF8.GetString(text.ToArray());
        }

        // The answer is 130 single-byte tokens and its stop: 24 to spare (the rule counts the completion's bytes).
        var roomy = new JsonConstraint(vocab, stops, 155);
        string whole = Drive(roomy, 155);
        Assert.Equal(40, JsonDocument.Parse(whole).RootElement.GetProperty("a").GetArrayLength());
        Assert.False(roomy.BudgetShaped);

        var tight = new JsonConstraint(vocab, stops, 12);
        string shaped = Drive(tight, 12);
        Assert.True(ReferenceParsesObject(shaped), shaped);
        Assert.True(tight.BudgetShaped, shaped);
    }

    /// <summary>
    /// White space between JSON tokens comes in runs of at most WhitespaceRuns.MaxRun bytes, however strongly the
    /// logits favour it (a random model otherwise spends its budget on it); inside strings it is text and is not capped.
    /// </summary>
    [Fact]
    public void WhitespaceFavoured_RunsBetweenTokensAreCapped_NotInsideStrings()
    {
        var (vocab, stop) = Vocabulary();
        var stops = new HashSet<int> { stop };
        float Bias(int id) => vocab[id] is { Length: > 0 } b && b.All(WhitespaceRuns.IsWhitespace) ? 8f : 0f;
        int longest = 0, inside = 0;
        for (ulong seed = 0; seed < 6; seed++)
        {
            string json = ConstrainedGeneration.Generate(new JsonConstraint(vocab, stops, 300), vocab, stop, 300, seed, Bias);
            Assert.True(ReferenceParsesObject(json), $"seed {seed}: '{json}'");
            var (between, _) = ConstrainedGeneration.LongestWhitespaceRuns(json);
            Assert.True(between <= WhitespaceRuns.MaxRun, $"seed {seed}: a run of {between} between tokens: '{json}'");
            longest = Math.Max(longest, between);

            string text = "{\"a\": \"" + ConstrainedGeneration.Generate(new JsonConstraint(vocab, stops, 300, "{\"a\": \""u8), vocab, stop, 300, seed, Bias);
            Assert.True(ReferenceParsesObject(text), $"seed {seed}: '{text}'");
            inside = Math.Max(inside, ConstrainedGeneration.LongestWhitespaceRuns(text).Inside);
        }
        Assert.True(longest > WhitespaceRuns.MaxRun / 2, $"the favoured runs reached only {longest}");
        Assert.True(inside > WhitespaceRuns.MaxRun, $"inside strings the longest run was {inside}");
    }

    /// <summary>
    /// A constraint that has seen a state before reuses that state's mask (while the budget rule would remove nothing):
    /// its masks equal the rule written out plainly (every token tried from the state reached by the same tokens, the
    /// budget rule applied to each), at every step of random walks with budgets from tight to loose.
    /// </summary>
    [Theory]
    [InlineData(6)]
    [InlineData(12)]
    [InlineData(40)]
    public void KeptStateMasks_EqualAFreshGrammarPass(int maxNewTokens)
    {
        var (vocab, stop) = Vocabulary();
        var stops = new HashSet<int> { stop };
        for (ulong seed = 0; seed < 30; seed++)
        {
            var rng = new TestRng(seed + 300);
            var constraint = new JsonConstraint(vocab, stops, maxNewTokens);
            var sampler = new Sampler(new SamplingParams { Temperature = 1, Seed = seed });
            var taken = new List<int>();
            for (int step = 0; step < maxNewTokens; step++)
            {
                var logits = Enumerable.Range(0, vocab.Count).Select(_ => rng.Uniform(3)).ToArray();
                var expected = PlainMask(vocab, stops, maxNewTokens, taken, logits);
                constraint.Apply(logits);
                Assert.Equal(expected, logits);
                int token = sampler.Sample(logits);
                constraint.Accept(token);
                taken.Add(token);
                if (token == stop) break;
            }
        }
    }

    /// <summary>
    /// The vocabulary's prefix tree gives every state exactly the tokens, and the states after them, that trying each
    /// token's bytes alone gives: over a table with shared prefixes, tokens that are prefixes of others, two ids with the
    /// same bytes, bytes >= 0x80, null and empty entries, from a state in every mode of the recogniser.
    /// </summary>
    [Fact]
    public void TokenTrie_AcceptsExactlyTheTokensTriedOneByOne()
    {
        var rng = new Random(11);
        var table = new List<byte[]?>();
        for (int b = 0; b < 256; b++) table.Add([(byte)b]);
        foreach (var piece in new[] { "\"", "\": ", "\":", "true", "tr", "null", "}}", "}", "]]", "  ", "\n\n", "abc", "ab", "abcd", "123", "12", "1.5e+", "-0.", ", \"", "[[", "{{", "\\u", "\\u00e9", "é", "ü\"", "{\"a\":", "\"}" })
            table.Add(Encoding.UTF8.GetBytes(piece));
        table.Add(Encoding.UTF8.GetBytes("abc"));   // same bytes as an earlier id
        table.Add(null);
        table.Add([]);
        const string alphabet = "{}[]\",:. -+0123456789eEtrufalsn\\/abcé";
        var letters = Encoding.UTF8.GetBytes(alphabet);
        for (int i = 0; i < 3000; i++)
            table.Add(Enumerable.Range(0, 1 + rng.Next(7)).Select(_ => letters[rng.Next(letters.Length)]).ToArray());
        var trie = new TokenTrie(table);
        string[] prefixes = ["", "{", "{\"k", "{\"k\\", "{\"k\\u00", "{\"k\"", "{\"k\":", "{\"k\": -", "{\"k\": 0", "{\"k\": 12.",
            "{\"k\": 12.5", "{\"k\": 1.5e", "{\"k\": 1e+", "{\"k\": t", "{\"k\": [", "{\"k\": [1", "{\"k\": [1,", "{\"k\": \"v", "{\"k\": {}",
            "{\"k\": {\"j\": [[", "{\"k\": 1}", "{\"k\": \"v\\", "{\"k\": \"\\u0", "{\"k\": \"\\u00e", "{\"k\\u0", "{\"k\": [\"\\u00e9x"];
        foreach (var prefix in prefixes)
        {
            var state = new JsonGrammarState();
            Assert.True(state.Accept(Encoding.UTF8.GetBytes(prefix)), prefix);
            var expected = new Dictionary<int, JsonGrammarState>();
            for (int id = 0; id < table.Count; id++)
            {
                if (table[id] is not { Length: > 0 } bytes) continue;
                var next = state;
                if (next.Accept(bytes)) expected[id] = next;
            }
            var sink = new Collect { Seen = new Dictionary<int, JsonGrammarState>() };
            trie.ForEachAccepted(state, ref sink);
            Assert.True(sink.Repeated == 0, $"'{prefix}': a token was reported twice");
            Assert.Equal(expected.Keys.Order(), sink.Seen.Keys.Order());
            foreach (var (id, after) in expected) Assert.True(after.Equals(sink.Seen[id]), $"'{prefix}': token {id} leaves another state");
        }
        Assert.Same(TokenTrie.For(table), TokenTrie.For(table));   // built once per table
    }

    /// <summary>
    /// States that read the same text from here on are equal, whatever came before: a closed string's key flag, a
    /// finished \u escape's digit count or a closed container's kind does not tell them apart (kept masks are found
    /// by state).
    /// </summary>
    [Theory]
    [InlineData("{\"a\":\"b\",", "{\"a\":1,")]
    [InlineData("{\"a\":\"\\u00e9", "{\"a\":\"x")]
    [InlineData("{\"a\":true", "{\"a\":[]")]
    [InlineData("{\"a\":[{}],", "{\"a\":{\"b\":[]},")]
    public void Equals_SameFutureAfterDifferentText(string first, string second)
    {
        var a = new JsonGrammarState();
        var b = new JsonGrammarState();
        Assert.True(a.Accept(Encoding.UTF8.GetBytes(first)) && b.Accept(Encoding.UTF8.GetBytes(second)));
        Assert.Equal(a, b);
        Assert.Equal(a.GetHashCode(), b.GetHashCode());
        var elsewhere = new JsonGrammarState();
        Assert.True(elsewhere.Accept("{\"a\":[0,"u8));
        Assert.NotEqual(a, elsewhere);
    }

    /// <summary>
    /// The same over a real byte-level BPE vocabulary (the demo tokenizer: cl100k_base's ranks plus Llama 3's special
    /// tokens, 128256 ids), where tokens share long prefixes: the tree and trying each token alone allow the same set.
    /// </summary>
    [Fact]
    public void TokenTrie_OnARealVocabulary_AllowsWhatTryingEachTokenAllows()
    {
        var tok = SwiftKV.Model.Tokenization.LlamaTokenizer.CreateDemo();
        var special = tok.SpecialTokens.Values.ToHashSet();
        var table = Enumerable.Range(0, tok.VocabularySize).Select(id => special.Contains(id) ? null : tok.GetTokenBytes(id).ToArray()).ToList();
        var trie = new TokenTrie(table);
        foreach (var prefix in new[] { "{", "{\"name\": \"get_wea", "{\"a\": [1.5, tr", "{\"a\": {\"b\": -" })
        {
            var state = new JsonGrammarState();
            Assert.True(state.Accept(Encoding.UTF8.GetBytes(prefix)), prefix);
            var expected = new List<int>();
            for (int id = 0; id < table.Count; id++)
            {
                var next = state;
                if (table[id] is { Length: > 0 } b && next.Accept(b)) expected.Add(id);
            }
            var sink = new Collect { Seen = new Dictionary<int, JsonGrammarState>() };
            trie.ForEachAccepted(state, ref sink);
            Assert.Equal(expected, sink.Seen.Keys.Order());
            Assert.True(expected.Count > 0, prefix);
        }
    }

    struct Collect : ITokenSink<JsonGrammarState>
    {
        public Dictionary<int, JsonGrammarState> Seen;
        public int Repeated;
        public void Token(int id, in JsonGrammarState after)
        {
            if (!Seen.TryAdd(id, after)) Repeated++;
        }
    }

    /// <summary>A logits row shorter than the token table: the ids past it are neither allowed nor written.</summary>
    [Fact]
    public void Apply_RowShorterThanTheTable_MasksOnlyTheRow()
    {
        var (vocab, stop) = Vocabulary();
        var constraint = new JsonConstraint(vocab, new HashSet<int> { stop }, 50, "{\"a\": "u8);
        var logits = new float[100];
        constraint.Apply(logits);
        for (int id = 0; id < logits.Length; id++)
        {
            var next = new JsonGrammarState();
            next.Accept("{\"a\": "u8);
            bool ok = vocab[id] is { Length: > 0 } b && next.Accept(b);
            Assert.True(ok == !float.IsNegativeInfinity(logits[id]), $"token {id} ({(char)id})");
        }
    }

    static float[] PlainMask(List<byte[]?> vocab, HashSet<int> stops, int maxNewTokens, List<int> taken, float[] logits)
    {
        var state = new JsonGrammarState();
        foreach (int t in taken)
        {
            if (state.IsComplete || vocab[t] is not { } b) continue;
            var next = state;
            if (next.Accept(b)) state = next;
        }
        int budgetAfter = maxNewTokens - taken.Count - 1;
        bool enforce = state.CompletionLength <= budgetAfter + 1;
        var allowed = new bool[logits.Length];
        for (int id = 0; id < vocab.Count; id++)
        {
            if (state.IsComplete) allowed[id] = stops.Contains(id);
            else if (vocab[id] is { Length: > 0 } bytes)
            {
                var next = state;
                allowed[id] = next.Accept(bytes) && (!enforce || next.CompletionLength <= budgetAfter);
            }
        }
        var masked = (float[])logits.Clone();
        if (!allowed.Contains(true)) return masked;
        for (int id = 0; id < masked.Length; id++) if (!allowed[id]) masked[id] = float.NegativeInfinity;
        return masked;
    }

    [Fact]
    public void Prefix_IsReadFirst_AndOnlyStopFollowsACompleteObject()
    {
        var (vocab, stop) = Vocabulary();
        var constraint = new JsonConstraint(vocab, new HashSet<int> { stop }, 4, "{\"name\": \"f\", \"parameters\": {"u8);
        var logits = new float[vocab.Count];
        constraint.Apply(logits);
        Assert.True(float.IsNegativeInfinity(logits['x']));          // a key must start with a quote
        Assert.True(float.IsNegativeInfinity(logits[stop]));         // not complete yet
        Assert.False(float.IsNegativeInfinity(logits['}']));
        constraint.Accept(vocab.FindIndex(b => b is not null && Encoding.UTF8.GetString(b) == "}}"));
        Assert.True(constraint.IsComplete);
        logits = new float[vocab.Count];
        constraint.Apply(logits);
        Assert.Equal([stop], Enumerable.Range(0, vocab.Count).Where(i => !float.IsNegativeInfinity(logits[i])));
    }

    [Fact]
    public void Constructor_BadPrefix_Throws()
    {
        var (vocab, stop) = Vocabulary();
        var e = Assert.Throws<ArgumentException>(() => new JsonConstraint(vocab, new HashSet<int> { stop }, 4, "x"u8));
        Assert.Contains("prefix", e.Message);
    }
}
