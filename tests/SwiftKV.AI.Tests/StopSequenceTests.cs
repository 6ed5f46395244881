// Stop sequences with a scripted "model" (ScriptedBackend), so the answer, special tokens included, is known.
using Microsoft.Extensions.AI;
using SwiftKV.Engine;
using Xunit;

namespace SwiftKV.AI.Tests;

public sealed class StopSequenceTests(TinyChatModel tiny)
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    SwiftKvChatClient Scripted(string answer, int contextLength = 8192)
    {
        var backend = new ScriptedBackend(tiny.Model.Config, tiny.Model.Tokenizer, answer);
        var model = new LocalModel { Path = tiny.Directory, Config = tiny.Model.Config, Tokenizer = tiny.Model.Tokenizer, Backend = backend, BackendReason = "scripted" };
        return new SwiftKvChatClient(model, new SwiftKvOptions { ModelPath = tiny.Directory, DefaultMaxOutputTokens = 64, ContextLength = contextLength },
            ownsModel: true, today: () => new DateOnly(2026, 11, 26));
    }

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
}
