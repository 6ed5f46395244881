// Which Llama 3 template a checkpoint's chat_template is: Llama 3.0 Instruct's writes no default system block, so its
// chats are written that way; 3.1's and later (and no template) keep 3.1's; another kind is warned of.
using System.Text.Json;
using SwiftKV.Model.Tokenization;
using Xunit;

namespace SwiftKV.Model.Tests.Tokenization;

public sealed class CheckpointChatTemplateTests
{
    static TokenizerTempDir WithTemplate(string? template)
    {
        var dir = new TokenizerTempDir();
        if (template is not null) dir.Write("tokenizer_config.json", JsonSerializer.Serialize(new { chat_template = template }));
        return dir;
    }

    [Fact]
    public void Llama30Template_IsKnownAsSuch_AndNotWarnedOf()
    {
        using var dir = WithTemplate(Llama31ChatFormatTests.Llama30Template);
        Assert.Equal(LlamaChatTemplate.Llama30, CheckpointChatTemplate.Kind(dir.Path));
        Assert.Contains("Llama 3.0's", CheckpointChatTemplate.Describe(dir.Path));
        Assert.Null(CheckpointChatTemplate.Mismatch(dir.Path));
    }

    [Fact]
    public void Llama31Template_OrNone_KeepsLlama31()
    {
        using (var dir = WithTemplate(Llama31ChatFormat.JinjaTemplate))
        {
            Assert.Equal(LlamaChatTemplate.Llama31, CheckpointChatTemplate.Kind(dir.Path));
            Assert.Contains("Llama 3.1's", CheckpointChatTemplate.Describe(dir.Path));
        }
        using (var none = WithTemplate(null))
            Assert.Equal(LlamaChatTemplate.Llama31, CheckpointChatTemplate.Kind(none.Path));
    }

    [Fact]
    public void ChatMlTemplate_KeepsLlama31_AndIsWarnedOf()
    {
        using var dir = WithTemplate("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}");
        Assert.Equal(LlamaChatTemplate.Llama31, CheckpointChatTemplate.Kind(dir.Path));
        Assert.Contains("does not frame turns with Llama 3's", CheckpointChatTemplate.Mismatch(dir.Path));
    }

    /// <summary>
    /// Of a named list transformers uses "default" for a chat without tools ("tool_use" with tools): a 3.0 default beside a
    /// 3.1 tool_use template is Llama 3.0's (it was read as 3.1's since any template had the date block).
    /// </summary>
    [Fact]
    public void NamedTemplates_TheDefaultDecides()
    {
        using var dir = new TokenizerTempDir();
        dir.Write("tokenizer_config.json", JsonSerializer.Serialize(new
        {
            chat_template = new object[]
            {
                new { name = "tool_use", template = Llama31ChatFormat.JinjaTemplate },
                new { name = "default", template = Llama31ChatFormatTests.Llama30Template },
            },
        }));
        Assert.Equal(LlamaChatTemplate.Llama30, CheckpointChatTemplate.Kind(dir.Path));
        Assert.Contains("Llama 3.0's", CheckpointChatTemplate.Describe(dir.Path));
    }
}
