// Llama 3.1 custom tool calling: the prompt text is compared character for character with what the official HF
// chat_template (tools_in_user_message=true) renders for the same conversation, written out by hand here; the
// parser accepts the model's call shapes and turns everything else into "not a call".
using System.Text.Json;
using SwiftKV.Model.Tokenization;
using Xunit;

namespace SwiftKV.Model.Tests.Tokenization;

public sealed class Llama31ToolFormatTests
{
    static readonly ToolDefinition Weather = new("get_weather", "Current weather in a city",
        JsonDocument.Parse("""{"type":"object","properties":{"city":{"type":"string","description":"City name"},"days":{"type":"integer"}},"required":["city"]}""").RootElement);

    static readonly string[] Known = ["get_weather"];

    [Fact]
    public void Render_ToolConversation_MatchesOfficialTemplate()
    {
        var args = JsonDocument.Parse("""{"city":"Zürich","days":2}""").RootElement;
        var turns = new List<ChatTurn>
        {
            new("system", "Be brief."),
            new("user", Llama31ToolFormat.FirstUserMessage([Weather], " Weather in Zürich? ")),
            new("assistant", Llama31ToolFormat.RenderCall("get_weather", args)),
            new("ipython", """{"temp": 21}"""),
        };
        string expected =
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" +
            "Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" +
            "Be brief.<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\n" +
            "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n" +
            "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n" +
            "{\n" +
            "    \"type\": \"function\",\n" +
            "    \"function\": {\n" +
            "        \"name\": \"get_weather\",\n" +
            "        \"description\": \"Current weather in a city\",\n" +
            "        \"parameters\": {\n" +
            "            \"type\": \"object\",\n" +
            "            \"properties\": {\n" +
            "                \"city\": {\n" +
            "                    \"type\": \"string\",\n" +
            "                    \"description\": \"City name\"\n" +
            "                },\n" +
            "                \"days\": {\n" +
            "                    \"type\": \"integer\"\n" +
            "                }\n" +
            "            },\n" +
            "            \"required\": [\n" +
            "                \"city\"\n" +
            "            ]\n" +
            "        }\n" +
            "    }\n" +
            "}\n\n" +
            "Weather in Zürich?<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Zürich\", \"days\": 2}}<|eot_id|>" +
            "<|start_header_id|>ipython<|end_header_id|>\n\n{\"temp\": 21}<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\n";
        Assert.Equal(expected, Llama31ChatFormat.Render(turns, addGenerationPrompt: true, ipythonEnvironment: true));
    }

    [Fact]
    public void RenderDefinition_NoSchema_GivesEmptyObjectParameters()
    {
        string text = Llama31ToolFormat.RenderDefinition(new ToolDefinition("now", null, null));
        Assert.Equal("{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"now\",\n        \"parameters\": {\n            \"type\": \"object\",\n            \"properties\": {}\n        }\n    }\n}", text);
    }

    [Fact]
    public void RenderCall_EscapesLikePythonJsonDumps()
    {
        var args = JsonDocument.Parse("{\"q\":\"a\\\"b\\n\\u0001é/\",\"l\":[1,2.5,true,null],\"o\":{}}").RootElement;
        Assert.Equal("{\"name\": \"f\", \"parameters\": {\"q\": \"a\\\"b\\n\\u0001é/\", \"l\": [1, 2.5, true, null], \"o\": {}}}",
            Llama31ToolFormat.RenderCall("f", args));
    }

    [Theory]
    [InlineData("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}", 1)]
    [InlineData("  <|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}\n", 1)]
    [InlineData("{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}", 1)]
    [InlineData("{\"name\": \"get_weather\", \"parameters\": \"{\\\"city\\\": \\\"Oslo\\\"}\"}", 1)]
    [InlineData("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}; {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}", 2)]
    [InlineData("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}\n{\"name\": \"get_weather\", \"parameters\": {}}", 2)]
    [InlineData("{\"type\": \"function\", \"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}", 1)]
    [InlineData("[{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}, {\"name\": \"get_weather\"}]", 2)]
    public void TryParseCalls_WellFormed(string output, int count)
    {
        var calls = Llama31ToolFormat.TryParseCalls(output, Known);
        Assert.NotNull(calls);
        Assert.Equal(count, calls.Count);
        Assert.All(calls, c => Assert.Equal("get_weather", c.Name));
        Assert.All(calls, c => Assert.Equal(JsonValueKind.Object, c.Arguments.ValueKind));
        if (output.Contains("Oslo")) Assert.Equal("Oslo", calls[0].Arguments.GetProperty("city").GetString());
    }

    [Theory]
    [InlineData("The weather is fine.")]
    [InlineData("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}")]          // cut off
    [InlineData("{\"name\": \"launch_rockets\", \"parameters\": {}}")]                          // not a declared tool
    [InlineData("{\"name\": \"get_weather\", \"parameters\": [1]}")]
    [InlineData("{\"name\": 3, \"parameters\": {}}")]
    [InlineData("{\"name\": \"get_weather\", \"parameters\": {}} and then some prose")]
    [InlineData("<|python_tag|>brave_search.call(query=\"x\")")]
    [InlineData("{}")]
    [InlineData("{\"name\": \"get_weather\", \"note\": \"an answer with a name field, not a call\"}")]
    [InlineData("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}, \"why\": \"x\"}")]
    [InlineData("{\"name\": \"get_weather\\ud800\", \"parameters\": {}}")]                            // not text: malformed
    [InlineData("{\"name\": \"get_weather\", \"parameters\": {\"\\ud800\": 1}}")]
    [InlineData("{\"name\": \"get_weather\", \"parameters\": \"\\ud800\"}")]
    [InlineData("{\"name\": \"get_weather\", \"parameters\": \"{\\\"\\\\ud800\\\": 1}\"}")]      // inside arguments given as a string
    [InlineData("[]")]
    [InlineData("")]
    public void TryParseCalls_Malformed_IsNull(string output) =>
        Assert.Null(Llama31ToolFormat.TryParseCalls(output, Known));
}
