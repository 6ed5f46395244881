// Schema-constrained decoding, checked against an independent JSON Schema validator (JsonSchema.Net): the recogniser
// accepts what the validator accepts (for the keywords it enforces), random logits under the constraint always give a
// document the validator accepts within the token budget, and every state's shortest completion is what a search finds.
using System.Text;
using System.Text.Json;
using Json.Schema;
using SwiftKV.Engine.Sampling;
using Xunit;

namespace SwiftKV.Engine.Tests;

public class JsonSchemaConstraintTests
{
    const string Person = """
        {"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},
         "tags":{"type":"array","items":{"type":"string"},"maxItems":3},"role":{"enum":["admin","user",null]}},
         "required":["name","age"],"additionalProperties":false}
        """;

    const string Mixed = """
        {"type":"object","properties":{"score":{"type":["number","null"]},"ok":{"type":"boolean"},
         "inner":{"type":"object","properties":{"x":{"const":1},
           "y":{"type":"array","prefixItems":[{"type":"integer"},{"type":"string"}],"items":false,"minItems":2}},
           "required":["x","y"]}},
         "required":["inner","ok"]}
        """;

    const string Tree = """
        {"$ref":"#/$defs/node","$defs":{"node":{"type":"object","properties":{"value":{"type":"integer"},
          "children":{"type":"array","items":{"$ref":"#/$defs/node"}}},"required":["value"],"additionalProperties":false}}}
        """;

    const string Tagged = """
        {"anyOf":[
          {"type":"object","properties":{"kind":{"const":"a"},"n":{"type":"integer"}},"required":["kind","n"],"additionalProperties":false},
          {"type":"object","properties":{"kind":{"const":"b"},"s":{"type":"string"}},"required":["kind","s"],"additionalProperties":false}]}
        """;

    const string Numbers = """{"type":"array","items":{"enum":[1,12,123,-4.5]},"minItems":1,"maxItems":4}""";

    const string Integer = """{"type":"integer"}""";

    // A tuple, then items of one schema, with more items required than the tuple holds.
    const string TupleThenItems = """{"type":"array","prefixItems":[{"type":"string"},{"enum":[123]}],"items":{"type":"integer"},"minItems":5}""";

    const string Escapes = """
        {"type":"object","properties":{"a\"b":{"type":"string"},"é":{"enum":["x\ny","ü"]}},"required":["a\"b"],
         "additionalProperties":{"type":"boolean"}}
        """;

    public static TheoryData<string> Schemas => [Person, Mixed, Tree, Tagged, Numbers, Integer, Escapes];

    static JsonElement Parse(string json) => JsonDocument.Parse(json).RootElement;

    static bool ValidatorAccepts(string schema, string document)
    {
        JsonElement instance;
        try
        {
            instance = JsonDocument.Parse(document).RootElement;
        }
        catch (JsonException)
        {
            return false;
        }
        return JsonSchema.FromText(schema).Evaluate(instance).IsValid;
    }

    static bool MachineAccepts(JsonSchemaMachine machine, string document)
    {
        int state = machine.Start;
        foreach (byte b in Encoding.UTF8.GetBytes(document))
            if (!machine.Accept(ref state, b)) return false;
        return machine.IsComplete(state);
    }

    [Theory]
    [InlineData(Person, """{"name":"Ada","age":36}""")]
    [InlineData(Person, """ { "age" : 36 , "name" : "Ada", "tags": ["a","b"], "role": null }""")]
    [InlineData(Person, """{"name":"Ada","age":36,"role":"admin"}""")]
    [InlineData(Person, """{"name":"Ada"}""")]                                  // required age missing
    [InlineData(Person, """{"name":"Ada","age":"36"}""")]                       // wrong type
    [InlineData(Person, """{"name":"Ada","age":36,"extra":1}""")]               // additionalProperties false
    [InlineData(Person, """{"name":"Ada","age":36,"tags":["a","b","c","d"]}""")] // maxItems
    [InlineData(Person, """{"name":"Ada","age":36,"role":"root"}""")]           // not in the enum
    [InlineData(Person, """{"name":"Ada","age":-0}""")]
    [InlineData(Person, """{"name":"A\u00e9\n","age":1}""")]
    [InlineData(Person, """[]""")]
    [InlineData(Mixed, """{"ok":true,"inner":{"x":1,"y":[3,"s"]}}""")]
    [InlineData(Mixed, """{"ok":false,"score":-1.5e+3,"inner":{"y":[0,""],"x":1},"free":{"any":[null]}}""")]
    [InlineData(Mixed, """{"ok":true,"inner":{"x":2,"y":[3,"s"]}}""")]          // const
    [InlineData(Mixed, """{"ok":true,"inner":{"x":1,"y":[3]}}""")]              // minItems
    [InlineData(Mixed, """{"ok":true,"inner":{"x":1,"y":[3,"s",4]}}""")]        // items false past the tuple
    [InlineData(Mixed, """{"ok":true,"inner":{"x":1,"y":["s",3]}}""")]          // tuple types
    [InlineData(Mixed, """{"ok":null,"inner":{"x":1,"y":[3,"s"]}}""")]
    [InlineData(Mixed, """{"ok":true,"score":null,"inner":{"x":1,"y":[3,"s"]}}""")]
    [InlineData(Tree, """{"value":1,"children":[{"value":2},{"value":3,"children":[{"value":4,"children":[]}]}]}""")]
    [InlineData(Tree, """{"value":1,"children":[{"children":[]}]}""")]
    [InlineData(Tree, """{"value":1,"children":[{"value":2,"x":0}]}""")]
    [InlineData(Tagged, """{"kind":"a","n":5}""")]
    [InlineData(Tagged, """{"s":"t","kind":"b"}""")]
    [InlineData(Tagged, """{"kind":"a","s":"t"}""")]
    [InlineData(Tagged, """{"kind":"c","n":5}""")]
    [InlineData(Numbers, """[1,12,123,-4.5]""")]
    [InlineData(Numbers, """[ 12 ]""")]
    [InlineData(Numbers, """[13]""")]
    [InlineData(Numbers, """[1,1,1,1,1]""")]
    [InlineData(Numbers, """[]""")]
    [InlineData(Integer, """42""")]
    [InlineData(Integer, """-7""")]
    [InlineData(Integer, "\"42\"")]
    [InlineData(Escapes, """{"a\"b":"v","é":"x\ny","other":true}""")]
    [InlineData(Escapes, """{"a\"b":"v","é":"ü"}""")]
    [InlineData(Escapes, """{"a\"b":"v","other":"no"}""")]
    [InlineData(Escapes, """{"é":"ü"}""")]
    [InlineData("""{"type":"array","prefixItems":[{"type":"integer"},{"type":"string"}],"maxItems":1}""", """[1]""")]
    [InlineData("""{"type":"array","prefixItems":[{"type":"integer"},{"type":"string"}],"maxItems":1}""", """[1,"a","b"]""")]
    [InlineData("""{"properties":{"a":{"type":"integer"},"b":false}}""", """{"a":1,"c":"x"}""")]
    [InlineData("""{"properties":{"a":{"type":"integer"},"b":false}}""", """{"b":1}""")]
    [InlineData("""{"properties":{"a":{"type":"array","items":false,"minItems":1}}}""", """{"a":1}""")]
    public void Accept_AgreesWithTheValidator(string schema, string document)
    {
        var machine = new JsonSchemaMachine(JsonSchemaGrammar.Compile(Parse(schema)));
        Assert.Equal(ValidatorAccepts(schema, document), MachineAccepts(machine, document));
    }

    /// <summary>
    /// patternProperties: keys are not matched against the patterns, so a key that is not listed may carry a value of
    /// any pattern's schema (or additionalProperties'), even beside additionalProperties false; such a key may be
    /// required. Every document the validator accepts, the machine accepts (a superset); values of no pattern's schema
    /// are still refused.
    /// </summary>
    [Fact]
    public void PatternProperties_AllowTheirValues_UnderAdditionalPropertiesFalse()
    {
        const string map = """{"type":"object","patternProperties":{"^x":{"type":"integer"},"^s":{"type":"string"}},"additionalProperties":false,"required":["x1"]}""";
        var machine = new JsonSchemaMachine(JsonSchemaGrammar.Compile(Parse(map)));
        foreach (var document in new[] { """{"x1":5}""", """{"x1":5,"x2":-7,"sa":"t"}""", """{"sa":"t","x1":0}""" })
        {
            Assert.True(ValidatorAccepts(map, document), document);
            Assert.True(MachineAccepts(machine, document), document);
        }
        Assert.False(MachineAccepts(machine, """{"x1":true}"""));   // a boolean is no pattern's value
        Assert.False(MachineAccepts(machine, """{"x2":1}"""));      // x1 is required
        Assert.True(ValidatorAccepts(map, """{"x1":1,"x2":"s"}""") == false && MachineAccepts(machine, """{"x1":1,"x2":"s"}"""));   // the superset

        const string open = """{"type":"object","patternProperties":{"^n":{"type":"integer"}},"additionalProperties":{"type":"boolean"}}""";
        var either = new JsonSchemaMachine(JsonSchemaGrammar.Compile(Parse(open)));
        Assert.True(MachineAccepts(either, """{"n":1,"b":true}"""));
        Assert.False(MachineAccepts(either, """{"b":"text"}"""));
        Assert.Throws<ArgumentException>(() => JsonSchemaGrammar.Compile(Parse("""{"type":"object","patternProperties":[]}""")));
    }

    /// <summary>
    /// Where the machine is stricter than JSON Schema, by design: the spelling of enum / const values and listed
    /// names is the compact one, an integer has no fraction or exponent (System.Text.Json would not read 1.0 into an
    /// int), and a key may not repeat. Keywords about values it does not enforce (pattern, minimum) leave it a superset.
    /// </summary>
    [Fact]
    public void Differences_FromTheValidator_AreTheDocumentedOnes()
    {
        var person = new JsonSchemaMachine(JsonSchemaGrammar.Compile(Parse(Person)));
        Assert.True(ValidatorAccepts(Person, """{"name":"Ada","age":36.0}"""));
        Assert.False(MachineAccepts(person, """{"name":"Ada","age":36.0}"""));
        Assert.False(MachineAccepts(person, """{"name":"Ada","age":1,"age":2}"""));
        Assert.False(MachineAccepts(person, """{"na\u006de":"Ada","age":1}"""));
        // With free keys beside listed ones, a key is written without escapes: "\u0061" would be "a" in another
        // spelling, and its value would dodge a's schema.
        var open = new JsonSchemaMachine(JsonSchemaGrammar.Compile(Parse("""{"properties":{"a":{"type":"integer"}}}""")));
        Assert.False(MachineAccepts(open, """{"\u0061":"x"}"""));
        Assert.True(MachineAccepts(open, """{"b":"x","a":1}"""));
        Assert.True(ValidatorAccepts(Person, """{"na\u006de":"Ada","age":1}"""));

        const string patterned = """{"type":"object","properties":{"id":{"type":"string","pattern":"^[0-9]+$"},"n":{"type":"integer","minimum":10}}}""";
        var loose = new JsonSchemaMachine(JsonSchemaGrammar.Compile(Parse(patterned)));
        Assert.False(ValidatorAccepts(patterned, """{"id":"abc","n":1}"""));
        Assert.True(MachineAccepts(loose, """{"id":"abc","n":1}"""));
    }

    static (List<byte[]?> Bytes, int Stop) Vocabulary()
    {
        var bytes = new List<byte[]?>();
        for (int b = 0; b < 256; b++) bytes.Add([(byte)b]);
        foreach (var piece in new[] { "{\"", "\": ", "\":", "true", "null", "false", "}}", "]]", "  ", "\n\n", "abc", "123", ", \"", "[[", "{{", "\\u",
            "\"name\"", "\"age\": ", "\"value\":", "children", "\"kind\": \"a\"", "\"inner\"", "ü", "\"é\"", "a\\\"b", "-4.5", "12" })
            bytes.Add(Encoding.UTF8.GetBytes(piece));
        bytes.Add(null); // a special token: never allowed
        bytes.Add([]);   // the stop token
        return (bytes, bytes.Count - 1);
    }

    /// <summary>
    /// Random logits under the constraint give a document the validator accepts, for budgets from the shortest
    /// document's length (the one token sequence of single bytes that fits) to loose ones.
    /// </summary>
    [Theory]
    [MemberData(nameof(Schemas))]
    public void RandomLogits_YieldValidDocuments_WithinBudget(string schema)
    {
        var grammar = JsonSchemaGrammar.Compile(Parse(schema));
        int shortest = grammar.Nodes[grammar.Root].MinLength;
        var (vocab, stop) = Vocabulary();
        var stops = new HashSet<int> { stop };
        foreach (int budget in new[] { shortest, shortest + 1, shortest + 5, 60, 200 }.Distinct())
        {
            for (ulong seed = 0; seed < 12; seed++)
            {
                var constraint = new JsonSchemaConstraint(grammar, vocab, stops, budget);
                string document = ConstrainedGeneration.Generate(constraint, vocab, stop, budget, seed);
                Assert.True(ValidatorAccepts(schema, document), $"budget {budget}, seed {seed}: '{document}'");
                Assert.True(constraint.IsComplete, $"budget {budget}, seed {seed}: '{document}'");
            }
        }
    }

    /// <summary>
    /// Under a schema too, white space between JSON tokens comes in runs of at most WhitespaceRuns.MaxRun bytes when the
    /// logits favour it, and the documents stay valid.
    /// </summary>
    [Theory]
    [InlineData(Person)]
    [InlineData(Mixed)]
    public void WhitespaceFavoured_RunsBetweenTokensAreCapped(string schema)
    {
        var grammar = JsonSchemaGrammar.Compile(Parse(schema));
        var (vocab, stop) = Vocabulary();
        var stops = new HashSet<int> { stop };
        float Bias(int id) => vocab[id] is { Length: > 0 } b && b.All(WhitespaceRuns.IsWhitespace) ? 8f : 0f;
        int longest = 0;
        for (ulong seed = 0; seed < 6; seed++)
        {
            string document = ConstrainedGeneration.Generate(new JsonSchemaConstraint(grammar, vocab, stops, 300), vocab, stop, 300, seed, Bias);
            Assert.True(ValidatorAccepts(schema, document), $"seed {seed}: '{document}'");
            int between = ConstrainedGeneration.LongestWhitespaceRuns(document).Between;
            Assert.True(between <= WhitespaceRuns.MaxRun, $"seed {seed}: a run of {between}: '{document}'");
            longest = Math.Max(longest, between);
        }
        Assert.True(longest > WhitespaceRuns.MaxRun / 2, $"the favoured runs reached only {longest}");
    }

    /// <summary>
    /// Every state's completion length is the length of the shortest text that completes it. Along valid documents
    /// (each prefix of them) it obeys the shortest-path equation over all 256 bytes (0 exactly when whole, else one more
    /// than the best next byte's), and where a breadth-first search over all bytes ends within its cap, equals its result.
    /// </summary>
    [Theory]
    [InlineData(Person, """{"name":"A\u00e9\n","age":36,"tags":["a","b"],"role":"user"}""")]
    [InlineData(Mixed, """{"score":-1.5e+3,"inner":{"y":[0,"x"],"x":1},"free":{"any":[null, 1]},"ok":true}""")]
    [InlineData(Tree, """{"children":[{"value":2},{"value":3,"children":[]}],"value":1}""")]
    [InlineData(Tagged, """{"kind":"b","s":"t"}""")]
    [InlineData(Numbers, """[12, 123,-4.5]""")]
    [InlineData(Escapes, """{"é":"x\ny","other":true,"a\"b":"v"}""")]
    [InlineData(TupleThenItems, """["ab",123,1,22,3,4]""")]
    public void CompletionLength_IsTheShortestCompletion(string schema, string document)
    {
        var machine = new JsonSchemaMachine(JsonSchemaGrammar.Compile(Parse(schema)));
        int state = machine.Start;
        var bytes = Encoding.UTF8.GetBytes(document);
        for (int i = 0; i <= bytes.Length; i++)
        {
            int claimed = machine.CompletionLength(state);
            int best = int.MaxValue;
            for (int b = 0; b < 256; b++)
            {
                int t = state;
                if (machine.Accept(ref t, (byte)b)) best = Math.Min(best, machine.CompletionLength(t));
            }
            Assert.Equal(machine.IsComplete(state) ? 0 : best + 1, claimed);
            if (ShortestBySearch(machine, state) is int searched and >= 0) Assert.Equal(searched, claimed);
            if (i < bytes.Length) Assert.True(machine.Accept(ref state, bytes[i]), $"byte {i} of {document}");
        }
        Assert.True(machine.IsComplete(state));
    }

    static int ShortestBySearch(JsonSchemaMachine machine, int start)
    {
        var seen = new HashSet<int> { start };
        var frontier = new List<int> { start };
        for (int length = 0; frontier.Count > 0 && seen.Count < 20_000; length++)
        {
            if (frontier.Any(s => machine.IsComplete(s))) return length;
            var next = new List<int>();
            foreach (int s in frontier)
                for (int b = 0; b < 256; b++)
                {
                    int t = s;
                    if (machine.Accept(ref t, (byte)b) && seen.Add(t)) next.Add(t);
                }
            frontier = next;
        }
        return -1;
    }

    /// <summary>
    /// Tool arguments are closed where the schema lists properties and is silent on others (AIFunctionFactory's
    /// schemas, nested parameter types included): an extra argument is refused. An object without listed properties,
    /// an explicit additionalProperties, patternProperties, and a response format's schema keep their documents open.
    /// </summary>
    [Theory]
    [InlineData("""{"city":"Oslo"}""", true)]
    [InlineData("""{"city":"Oslo","junk":1}""", false)]
    [InlineData("""{"city":"Oslo","when":{"day":3}}""", true)]
    [InlineData("""{"city":"Oslo","when":{"day":3,"hour":4}}""", false)]
    [InlineData("""{"city":"Oslo","tags":{"any":1,"thing":2}}""", true)]
    [InlineData("""{"city":"Oslo","extra":{"x":1}}""", false)]
    public void ToolCallGrammar_ClosesArgumentObjectsThatListTheirProperties(string arguments, bool accepted)
    {
        const string schema = """{"type":"object","properties":{"city":{"type":"string"},"when":{"type":"object","properties":{"day":{"type":"integer"}}},"tags":{"type":"object"}},"required":["city"]}""";
        var machine = new JsonSchemaMachine(JsonSchemaGrammar.ToolCall([("f", Parse(schema))]));
        Assert.Equal(accepted, MachineAccepts(machine, $$"""{"name":"f","parameters":{{arguments}}}"""));
        // The same schema as an answer, or with additionalProperties written out, stays as JSON Schema reads it.
        var answer = new JsonSchemaMachine(JsonSchemaGrammar.ToolCall([], Parse(schema)));
        Assert.Equal(ValidatorAccepts(schema, arguments), MachineAccepts(answer, arguments));
        const string open = """{"type":"object","properties":{"city":{"type":"string"}},"additionalProperties":true}""";
        Assert.True(MachineAccepts(new JsonSchemaMachine(JsonSchemaGrammar.ToolCall([("f", Parse(open))])), """{"name":"f","parameters":{"city":"x","junk":1}}"""));
    }

    /// <summary>
    /// A function without parameters (AIFunctionFactory writes {"type":"object","properties":{}}) takes only {}: a key
    /// would bind to nothing. A random model filled it with keys until MaxOutputTokens closed them.
    /// </summary>
    [Theory]
    [InlineData("{}", true)]
    [InlineData(" { } ", true)]
    [InlineData("""{"-":"x"}""", false)]
    public void ToolCallGrammar_NoParameters_TakesOnlyAnEmptyObject(string arguments, bool accepted)
    {
        var machine = new JsonSchemaMachine(JsonSchemaGrammar.ToolCall([("ping", Parse("""{"type":"object","properties":{}}"""))]));
        Assert.Equal(accepted, MachineAccepts(machine, $$"""{"name":"ping","parameters":{{arguments}}}"""));
    }

    /// <summary>
    /// Schemas whose other keys come from beside the listed properties stay open as tool arguments: allOf parts
    /// (zod's .and()), "at least one of" anyOf of required names, required names without properties, and keywords the
    /// machine leaves to the model. Each call here is valid by the validator and must be writable.
    /// </summary>
    [Theory]
    [InlineData("""{"allOf":[{"type":"object","properties":{"a":{"type":"string"}}},{"type":"object","properties":{"b":{"type":"integer"}}}]}""", """{"a":"x","b":1}""")]
    [InlineData("""{"type":"object","properties":{"a":{}},"allOf":[{"properties":{"b":{"type":"integer"}}}]}""", """{"a":"x","b":1}""")]
    [InlineData("""{"type":"object","properties":{"a":{},"b":{}},"anyOf":[{"required":["a"]},{"required":["b"]}]}""", """{"a":1,"b":2}""")]
    [InlineData("""{"type":"object","required":["a"]}""", """{"a":1,"b":2}""")]
    [InlineData("""{"type":"object","properties":{"a":{}},"if":{"required":["a"]},"then":{"properties":{"b":{}}}}""", """{"a":1,"b":2}""")]
    [InlineData("""{"type":"object","properties":{"a":{}},"unevaluatedProperties":true}""", """{"a":1,"b":2}""")]
    [InlineData("""{"type":"object","properties":{},"minProperties":1}""", """{"x":1}""")]                 // keys the grammar does not list
    [InlineData("""{"type":"object","properties":{},"propertyNames":{"pattern":"^x"}}""", """{"x":1}""")]
    public void ToolCallGrammar_KeepsArgumentsOpenWhereOtherKeywordsAllowKeys(string schema, string arguments)
    {
        Assert.True(ValidatorAccepts(schema, arguments));
        var machine = new JsonSchemaMachine(JsonSchemaGrammar.ToolCall([("f", Parse(schema))]));
        Assert.True(MachineAccepts(machine, $$"""{"name":"f","parameters":{{arguments}}}"""));
    }

    /// <summary>
    /// A tool call's grammar gives a call to a declared tool whose arguments the validator accepts under that tool's
    /// schema (with its own $defs), or, with an answer schema beside the tools, an answer of that schema.
    /// </summary>
    [Fact]
    public void ToolCallGrammar_GivesACallToADeclaredTool_OrTheAnswer()
    {
        const string weather = """{"type":"object","properties":{"city":{"type":"string"},"unit":{"$ref":"#/$defs/unit"}},"required":["city"],"$defs":{"unit":{"enum":["c","f"]}}}""";
        const string add = """{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"}},"required":["a","b"],"additionalProperties":false}""";
        var tools = new List<(string, JsonElement?)> { ("get_weather", Parse(weather)), ("add", Parse(add)), ("ping", null) };
        var (vocab, stop) = Vocabulary();
        var stops = new HashSet<int> { stop };
        var schemas = new Dictionary<string, string> { ["get_weather"] = weather, ["add"] = add, ["ping"] = """{"type":"object"}""" };
        foreach (bool withAnswer in new[] { false, true })
        {
            var grammar = JsonSchemaGrammar.ToolCall(tools, withAnswer ? Parse(Person) : null);
            int answers = 0;
            for (ulong seed = 0; seed < 40; seed++)
            {
                string text = ConstrainedGeneration.Generate(new JsonSchemaConstraint(grammar, vocab, stops, 150), vocab, stop, 150, seed);
                var root = JsonDocument.Parse(text).RootElement;
                if (root.TryGetProperty("parameters", out var arguments) && root.TryGetProperty("name", out var name)
                    && schemas.TryGetValue(name.GetString()!, out var toolSchema))
                {
                    Assert.Equal(2, root.EnumerateObject().Count());
                    Assert.True(JsonSchema.FromText(toolSchema).Evaluate(arguments).IsValid, text);
                }
                else
                {
                    Assert.True(withAnswer, $"not a call: {text}");
                    Assert.True(ValidatorAccepts(Person, text), text);
                    answers++;
                }
            }
            if (withAnswer) Assert.True(answers > 0, "the answer alternative was never taken in 40 seeds");
        }

        // A prefilled start of a call to one tool is read first; the rest must be that tool's arguments.
        var constraint = new JsonSchemaConstraint(JsonSchemaGrammar.ToolCall(tools), vocab, stops, 40, "{\"name\": \"add\", \"parameters\": {"u8);
        string rest = ConstrainedGeneration.Generate(constraint, vocab, stop, 40, 7);
        var call = JsonDocument.Parse("{\"name\": \"add\", \"parameters\": {" + rest).RootElement;
        Assert.True(JsonSchema.FromText(add).Evaluate(call.GetProperty("parameters")).IsValid, rest);
        var e = Assert.Throws<ArgumentException>(() => new JsonSchemaConstraint(JsonSchemaGrammar.ToolCall(tools), vocab, stops, 40, "{\"name\": \"rm\""u8));
        Assert.Contains("prefix", e.Message);
    }

    /// <summary>The vocabulary's prefix tree gives the machine exactly the tokens (and states after them) that trying each token gives.</summary>
    [Fact]
    public void TokenTrie_WithTheMachine_AcceptsExactlyTheTokensTriedOneByOne()
    {
        var tok = SwiftKV.Model.Tokenization.LlamaTokenizer.CreateDemo();
        var special = tok.SpecialTokens.Values.ToHashSet();
        var table = Enumerable.Range(0, tok.VocabularySize).Select(id => special.Contains(id) ? null : tok.GetTokenBytes(id).ToArray()).ToList();
        var trie = TokenTrie.For(table);
        var machine = new JsonSchemaMachine(JsonSchemaGrammar.Compile(Parse(Person)));
        foreach (var prefix in new[] { "", "{", "{\"na", "{\"name\": \"Ad", "{\"name\": \"Ada\", ", "{\"name\": \"Ada\", \"age\": 3", "{\"age\":1,\"role\":" })
        {
            int state = machine.Start;
            foreach (byte b in Encoding.UTF8.GetBytes(prefix)) Assert.True(machine.Accept(ref state, b), prefix);
            Assert.True(TreeAgrees(trie, machine, state, table).Count > 0, prefix);
        }
    }

    /// <summary>
    /// Inside strings the tree reads tokens' fates from a table instead of walking (TokenTrie, JsonStringBody): along
    /// random documents of schemas with string values, free keys (in objects that list names, which refuse escapes in
    /// them, and in objects that list none), enums and undecided anyOf strings, every state gets exactly the tokens,
    /// and the states after them, that trying each token alone gives, over a table thick with quotes, backslashes and
    /// \u escapes.
    /// </summary>
    [Theory]
    [InlineData("""{"type":"object","properties":{"city":{"type":"string"},"n":{"type":"integer"}},"required":["city"]}""")]
    [InlineData("""{"type":"object","additionalProperties":{"type":"array","items":{"type":"string"}}}""")]
    [InlineData("""{"type":"array","items":{"anyOf":[{"type":"string"},{"enum":["ab","a\"b"]},{"type":"object"}]},"minItems":2}""")]
    [InlineData(Person)]
    public void TokenTrie_InsideStrings_AcceptsExactlyTheTokensTriedOneByOne(string schema)
    {
        var rng = new Random(5);
        var table = QuoteHeavyTable();
        var trie = new TokenTrie(table);
        var machine = new JsonSchemaMachine(JsonSchemaGrammar.Compile(Parse(schema)));
        int inString = 0;
        for (int walk = 0; walk < 6; walk++)
        {
            int state = machine.Start;
            for (int step = 0; step < 40; step++)
            {
                var expected = TreeAgrees(trie, machine, state, table);
                if (machine.InStringBody(state, out _)) inString++;
                if (expected.Count == 0) break;
                state = expected.ElementAt(rng.Next(expected.Count)).Value;
            }
        }
        Assert.True(inString > 10, $"only {inString} states inside strings");
    }

    /// <summary>Single bytes, a few JSON pieces, and 4000 random tokens thick with quotes, backslashes and \u escapes.</summary>
    static List<byte[]?> QuoteHeavyTable()
    {
        var rng = new Random(5);
        var letters = Encoding.UTF8.GetBytes("\"\"\"\\\\u0aAdD9fF:,{}[] cityné/bn\t");
        var table = new List<byte[]?>();
        for (int b = 0; b < 256; b++) table.Add([(byte)b]);
        foreach (var piece in new[] { "\"city\"", "\\u00e9", "\\ud83d", "\\\"", "\", \"", "\":", "\"]", "\"}", "é\"" })
            table.Add(Encoding.UTF8.GetBytes(piece));
        for (int i = 0; i < 4000; i++)
            table.Add(Enumerable.Range(0, 1 + rng.Next(8)).Select(_ => letters[rng.Next(letters.Length)]).ToArray());
        return table;
    }

    /// <summary>
    /// Places a random walk seldom reaches: a free key that stopped spelling a listed name (a"b, written a\"b) inside a
    /// \u escape, where no string-body table applies, and free keys and values inside escapes elsewhere.
    /// </summary>
    [Theory]
    [InlineData("{\"a\\u")]
    [InlineData("{\"a\\u0")]
    [InlineData("{\"a\\u004")]
    [InlineData("{\"a\\u0041")]
    [InlineData("{\"zz")]
    [InlineData("{\"zz\":true,\"a\\\"b\":\"x\\u00")]
    public void TokenTrie_InsideEscapes_AcceptsExactlyTheTokensTriedOneByOne(string prefix)
    {
        const string schema = """{"type":"object","properties":{"a\"b":{"type":"string"}},"additionalProperties":{"type":"boolean"}}""";
        var table = QuoteHeavyTable();
        var trie = new TokenTrie(table);
        var machine = new JsonSchemaMachine(JsonSchemaGrammar.Compile(Parse(schema)));
        int state = machine.Start;
        foreach (byte b in Encoding.UTF8.GetBytes(prefix)) Assert.True(machine.Accept(ref state, b), prefix);
        TreeAgrees(trie, machine, state, table);
    }

    /// <summary>
    /// White space inside a string is text, also while anyOf alternatives that both hold that string are undecided (the
    /// state has two readings): it is not capped as white space between tokens is.
    /// </summary>
    [Fact]
    public void WhitespaceInsideAStringOfUndecidedAlternatives_IsNotCapped()
    {
        const string schema = """
            {"anyOf":[{"type":"object","properties":{"s":{"type":"string"},"n":{"type":"integer"}},"required":["s","n"],"additionalProperties":false},
                      {"type":"object","properties":{"s":{"type":"string"},"b":{"type":"boolean"}},"required":["s","b"],"additionalProperties":false}]}
            """;
        var grammar = JsonSchemaGrammar.Compile(Parse(schema));
        var (vocab, stop) = Vocabulary();
        int space = vocab.FindIndex(b => b is [(byte)' ']);
        var constraint = new JsonSchemaConstraint(grammar, vocab, new HashSet<int> { stop }, 200, "{\"s\": \""u8);
        for (int i = 0; i < 2 * WhitespaceRuns.MaxRun; i++)
        {
            var logits = new float[vocab.Count];
            constraint.Apply(logits);
            Assert.False(float.IsNegativeInfinity(logits[space]), $"space {i + 1} inside the string was refused");
            constraint.Accept(space);
        }
    }

    /// <summary>Asserts that the tree's walk from <paramref name="state"/> gives exactly <see cref="TriedOneByOne"/>'s tokens and states; returns them.</summary>
    static Dictionary<int, int> TreeAgrees(TokenTrie trie, JsonSchemaMachine machine, int state, IReadOnlyList<byte[]?> table)
    {
        var expected = TriedOneByOne(machine, state, table);
        var sink = new Collect { Seen = new Dictionary<int, int>() };
        trie.ForEachAccepted(machine, state, ref sink);
        Assert.Equal(expected.OrderBy(kv => kv.Key), sink.Seen.OrderBy(kv => kv.Key));
        return expected;
    }

    /// <summary>The reference for the tree: every non-empty token's bytes fed to the machine from the state alone; id -> state after.</summary>
    static Dictionary<int, int> TriedOneByOne(JsonSchemaMachine machine, int state, IReadOnlyList<byte[]?> table)
    {
        var accepted = new Dictionary<int, int>();
        for (int id = 0; id < table.Count; id++)
        {
            if (table[id] is not { Length: > 0 } bytes) continue;
            int s = state;
            bool ok = true;
            foreach (byte b in bytes) if (!(ok = machine.Accept(ref s, b))) break;
            if (ok) accepted[id] = s;
        }
        return accepted;
    }

    struct Collect : ITokenSink<int>
    {
        public Dictionary<int, int> Seen;
        public void Token(int id, in int after) => Seen.Add(id, after);
    }

    /// <summary>
    /// Constraints over one grammar share their vocabulary masks (by state configuration, across their machines):
    /// at every step of random walks, a request whose masks came from the others' masks equals the same request over
    /// a grammar of its own, for tight and loose budgets.
    /// </summary>
    [Theory]
    [InlineData(Person, 30)]
    [InlineData(Tree, 60)]
    [InlineData(Tagged, 25)]
    public void SharedMasks_EqualAGrammarOfItsOwn(string schema, int budget)
    {
        var shared = JsonSchemaGrammar.Compile(Parse(schema));
        var (vocab, stop) = Vocabulary();
        var stops = new HashSet<int> { stop };
        for (ulong seed = 0; seed < 6; seed++)
        {
            var first = new JsonSchemaConstraint(shared, vocab, stops, budget);
            var second = new JsonSchemaConstraint(shared, vocab, stops, budget);
            var alone = new JsonSchemaConstraint(JsonSchemaGrammar.Compile(Parse(schema)), vocab, stops, budget);
            var rng = new TestRng(seed + 900);
            var sampler = new Sampler(new SamplingParams { Temperature = 1, Seed = seed });
            for (int step = 0; step < budget; step++)
            {
                var logits = Enumerable.Range(0, vocab.Count).Select(_ => rng.Uniform(3)).ToArray();
                var a = (float[])logits.Clone();
                var b = (float[])logits.Clone();
                first.Apply(a);
                second.Apply(b);
                alone.Apply(logits);
                Assert.Equal(logits, a);
                Assert.Equal(logits, b);
                int token = sampler.Sample(logits);
                first.Accept(token);
                second.Accept(token);
                alone.Accept(token);
                if (token == stop) break;
            }
        }
    }

    /// <summary>A restarted machine (its tables dropped) goes on from an equivalent state.</summary>
    [Fact]
    public void Restart_KeepsTheStateItsTextIsIn()
    {
        var machine = new JsonSchemaMachine(JsonSchemaGrammar.Compile(Parse(Tree)));
        const string text = """{"value":1,"children":[{"value":2,"children":[{"value":3}]}""";
        int state = machine.Start;
        foreach (byte b in Encoding.UTF8.GetBytes(text)) Assert.True(machine.Accept(ref state, b));
        int completion = machine.CompletionLength(state);
        state = machine.Restart(state);
        Assert.Equal(1, machine.StateCount);
        Assert.Equal(completion, machine.CompletionLength(state));
        foreach (byte b in "]}"u8) Assert.True(machine.Accept(ref state, b));
        Assert.True(machine.IsComplete(state));
    }

    [Theory]
    [InlineData("false", "no finite document")]
    [InlineData("""{"type":"text"}""", "'text' is not a JSON schema type")]
    [InlineData("""{"properties":{"a":{"$ref":"#/$defs/missing"}}}""", "points at nothing")]
    [InlineData("""{"$ref":"https://example.com/s.json"}""", "pointer into the same schema")]
    [InlineData("""{"type":"object","required":["a"],"additionalProperties":false}""", "requires property 'a'")]
    [InlineData("""{"$ref":"#/$defs/n","$defs":{"n":{"type":"object","properties":{"next":{"$ref":"#/$defs/n"}},"required":["next"]}}}""", "no finite document")]
    [InlineData("""{"type":"integer","enum":["a","b"]}""", "none of its enum")]
    [InlineData("""{"type":"array","minItems":-1}""", "minItems")]
    [InlineData("[1]", "not an object or boolean")]
    [InlineData("""{"type":"object","properties":{"\ud800":{}}}""", "a key of $.properties holds a \\u escape of half a UTF-16 surrogate pair")]
    [InlineData("""{"enum":["a\udc00"]}""", "the string at $.enum[0] holds")]
    public void Compile_BadSchema_NamesTheProblem(string schema, string expected)
    {
        var e = Assert.Throws<ArgumentException>(() => JsonSchemaGrammar.Compile(Parse(schema)));
        Assert.Contains(expected, e.Message);
    }

    /// <summary>
    /// minItems comes from the request. The shortest-document pass counted an array's items one by one, ~11 s for
    /// minItems = int.MaxValue, on every pass and again at every decode step; three such arrays must still compile at
    /// once, and a required one past the length limit is refused with the reason.
    /// </summary>
    [Fact(Timeout = 20_000)]
    public async Task Compile_HugeMinItems_CompilesAtOnce()
    {
        await Task.Run(() =>
        {
            string huge = """{"type":"array","items":{"type":"integer"},"minItems":2147483647}""";
            var grammar = JsonSchemaGrammar.Compile(Parse($$$"""{"type":"object","properties":{"a":{{{huge}}},"b":{{{huge}}},"c":{{{huge}}}}}"""));
            var machine = new JsonSchemaMachine(grammar);
            // The optional arrays cannot be finished within the length limit, so decoding leaves them out.
            int state = machine.Start;
            foreach (byte b in "{}"u8) Assert.True(machine.Accept(ref state, b));
            Assert.True(machine.IsComplete(state));
            state = machine.Start;
            Assert.False("\"a\":[1"u8.ToArray().Prepend((byte)'{').All(b => machine.Accept(ref state, b)));
            var e = Assert.Throws<ArgumentException>(() => JsonSchemaGrammar.Compile(Parse(huge)));
            Assert.Contains("over 256 MB", e.Message);
        }, TestContext.Current.CancellationToken);
    }

    [Fact]
    public void Compile_MoreThan64Properties_IsRefused()
    {
        string schema = "{\"type\":\"object\",\"properties\":{" + string.Join(",", Enumerable.Range(0, 65).Select(i => $"\"p{i}\":{{}}")) + "}}";
        var e = Assert.Throws<ArgumentException>(() => JsonSchemaGrammar.Compile(Parse(schema)));
        Assert.Contains("more than 64 properties", e.Message);
    }
}
