// Stop sequences with a scripted "model" (ScriptedBackend), so the answer, special tokens included, is known.
using Microsoft.Extensions.AI;
using SwiftKV.Engine;
using Xunit;

namespace SwiftKV.AI.Tests;

public sealed class StopSequenceTests(TinyChatModel tiny)
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    SwiftKvChatClient Scripted(string answer, int contextLength = 8192) => ScriptedBackend.Client(tiny, contextLength, answer).Client;

    /// <summary>
    /// Special tokens are left out of the streamed text, so a stop sequence that is one's text could never match there;
    /// the engine stops on the token instead. Before, the answer ran on past it ("Helloworld").
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task StopSequence_ThatIsASpecialToken_StopsOnThatToken(bool streaming)
    {
        const string answer = "Hello<|start_header_id|>world";
        using (var plain = Scripted(answer))
        {
            var r = await plain.GetResponseAsync("Hi", cancellationToken: Ct);
            Assert.Equal("Helloworld", r.Text);   // the special token is markup, not text
        }
        using var client = Scripted(answer);
        var options = new ChatOptions { StopSequences = ["zzz", "<|start_header_id|>"] };
        var cut = streaming
            ? await client.GetStreamingResponseAsync("Hi", options, Ct).ToChatResponseAsync(Ct)
            : await client.GetResponseAsync("Hi", options, Ct);
        Assert.Equal("Hello", cut.Text);
        Assert.Equal(ChatFinishReason.Stop, cut.FinishReason);
    }

    /// <summary>
    /// &lt;|python_tag|&gt; as a stop: with tools offered it is streamed (it opens a Llama 3.1 tool call), so it is matched
    /// in the text; without, it is hidden markup like the other special tokens, so the engine stops on the token.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task StopSequence_PythonTag_StopsWithAndWithoutTools(bool tools)
    {
        using var client = Scripted("Hello<|python_tag|>world");
        var options = new ChatOptions { StopSequences = ["<|python_tag|>"] };
        if (tools) options.Tools = [AIFunctionFactory.Create(() => 1, "f")];
        var cut = await client.GetResponseAsync("Hi", options, Ct);
        Assert.Equal("Hello", cut.Text);
        Assert.Equal(ChatFinishReason.Stop, cut.FinishReason);
    }

    [Fact]
    public async Task ContextOfOneToken_IsNamed_NotAPromptOfMoreThanZeroTokens()
    {
        using var client = Scripted("unused", contextLength: 1);
        var e = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync("Hi", cancellationToken: Ct));
        Assert.Contains("No prompt fits with room for an answer: the context is 1 token, set by SwiftKvOptions.ContextLength", e.Message);
    }

    /// <summary>
    /// A top-level JSON number is complete after every digit, yet the model may go on: one the output budget ended is
    /// FinishReason Length, as M.E.AI defines it (the token limit was reached). It was Stop, so a caller took a cut-off
    /// number for the whole answer. A number the model ended (the end-of-turn token) stays Stop.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task JsonNumber_EndedByTheBudget_IsLength_EndedByTheModel_IsStop(bool streaming)
    {
        var number = ChatResponseFormat.ForJsonSchema(System.Text.Json.JsonDocument.Parse("""{"type":"number"}""").RootElement, "n");
        async Task<ChatResponse> Ask(string answer, int budget)
        {
            using var client = Scripted(answer);
            var options = new ChatOptions { ResponseFormat = number, MaxOutputTokens = budget };
            return streaming
                ? await client.GetStreamingResponseAsync("A number?", options, Ct).ToChatResponseAsync(Ct)
                : await client.GetResponseAsync("A number?", options, Ct);
        }
        var tokenizer = tiny.Model.Tokenizer;
        var digits = tokenizer.Encode("123456789012", parseSpecialTokens: false);
        Assert.True(digits.Count >= 3, "the script must be longer than the budget");
        var cut = await Ask("123456789012", 2);
        Assert.Equal(2, cut.Usage!.OutputTokenCount);
        Assert.Equal(tokenizer.Decode(digits.Take(2).ToArray()), cut.Text);
        Assert.Equal(ChatFinishReason.Length, cut.FinishReason);

        var whole = await Ask("42", 8);
        Assert.Equal("42", whole.Text);
        Assert.Equal(ChatFinishReason.Stop, whole.FinishReason);
    }
}
