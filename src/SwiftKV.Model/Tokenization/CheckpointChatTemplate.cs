// A checkpoint's chat_template (tokenizer_config.json) is Jinja code that SwiftKV.AI does not run: chat prompts are
// written in Llama 3.1's format (Llama31ChatFormat), or in 3.0's where the checkpoint's template is Llama 3.0
// Instruct's (no default system block: Kind). That is right for Llama 3.x and SwiftKV checkpoints, whose
// templates all frame turns with <|start_header_id|> ... <|eot_id|>; a Llama-architecture fine-tune with another
// template (ChatML's <|im_start|>, say) would be prompted in a format it was not trained on, so that case is told.
using System.Text.Json;

namespace SwiftKV.Model.Tokenization;

/// <summary>How a checkpoint's chat_template relates to the Llama 3.1 format the chat client writes.</summary>
public static class CheckpointChatTemplate
{
    /// <summary>A sentence for <c>info</c>: whether the checkpoint has a chat template and whether it frames turns as Llama 3 does.</summary>
    public static string Describe(string checkpointDir) => Read(checkpointDir) switch
    {
        { Templates.Count: 0, Problem: null } => "chat template: none in the checkpoint; chats are written in Llama 3.1's format",
        { Problem: { } problem } => $"chat template: {problem}; chats are written in Llama 3.1's format",
        var t when t.Templates.Any(IsLlama3) && KindOf(t.Templates, t.Default) == LlamaChatTemplate.Llama30 =>
            "chat template: Llama 3.0's (Llama 3's turns, no default system block), the format chats are written in",
        var t when t.Templates.Any(IsLlama3) => "chat template: Llama 3.1's (Llama 3's turns, a system block with the knowledge and today's date), the format chats are written in",
        _ => Mismatch(checkpointDir)!,
    };

    /// <summary>A warning when the checkpoint's chat template does not frame turns as Llama 3 does; null otherwise.</summary>
    public static string? Mismatch(string checkpointDir) => Read(checkpointDir) switch
    {
        { Problem: { } problem } => $"chat template: {problem}; chats are written in Llama 3.1's format",
        { Templates.Count: > 0 } t when !t.Templates.Any(IsLlama3) =>
            "chat template: the checkpoint's chat template does not frame turns with Llama 3's <|start_header_id|> ... <|eot_id|>; " +
            "chats are written in Llama 3.1's format all the same, which this model may not have been trained on",
        _ => null,
    };

    /// <summary>
    /// The Llama 3 template the checkpoint's prompts follow: <see cref="LlamaChatTemplate.Llama30"/> when its Llama 3
    /// templates write no default system block (no "Cutting Knowledge Date", Llama 3.0 Instruct's), else 3.1's, also
    /// for a checkpoint without a template or with another kind (told by <see cref="Mismatch"/>).
    /// </summary>
    public static LlamaChatTemplate Kind(string checkpointDir)
    {
        var (templates, defaultTemplate, _) = Read(checkpointDir);
        return KindOf(templates, defaultTemplate);
    }

    /// <summary>
    /// The kind of the template transformers uses for a chat without tools: of a named list, "default" (tools take
    /// "tool_use", and with tools the 3.1 block is written anyway); else the Llama 3 ones.
    /// </summary>
    static LlamaChatTemplate KindOf(List<string> templates, string? defaultTemplate)
    {
        var llama3 = (defaultTemplate is not null ? [defaultTemplate] : templates).Where(IsLlama3).ToList();
        return llama3.Count > 0 && !llama3.Any(t => t.Contains("Cutting Knowledge Date", StringComparison.Ordinal))
            ? LlamaChatTemplate.Llama30 : LlamaChatTemplate.Llama31;
    }

    /// <summary>Whether a template frames turns as Llama 3's does.</summary>
    public static bool IsLlama3(string template) =>
        template.Contains("<|start_header_id|>", StringComparison.Ordinal) && template.Contains("<|eot_id|>", StringComparison.Ordinal);

    /// <summary>
    /// The checkpoint's templates: chat_template.jinja (newer transformers), chat_template.json, or tokenizer_config.json's
    /// chat_template, a string or a list of named ones (of which transformers uses "default" unless told another name;
    /// any of them framing Llama 3's turns counts). Never throws for a template it cannot read: nothing here runs it,
    /// so that is told, not refused.
    /// </summary>
    static (List<string> Templates, string? Default, string? Problem) Read(string checkpointDir)
    {
        string jinja = Path.Combine(checkpointDir, "chat_template.jinja");
        try
        {
            if (CheckpointJson.FileExists(jinja)) return ([File.ReadAllText(jinja)], null, null);
            foreach (string name in (string[])["chat_template.json", "tokenizer_config.json"])
            {
                string path = Path.Combine(checkpointDir, name);
                if (CheckpointJson.TryRead(path) is not { } file || CheckpointJson.Get(file, "chat_template") is not { } template) continue;
                if (template.ValueKind == JsonValueKind.String) return ([template.GetString()!], null, null);
                var named = template.ValueKind == JsonValueKind.Array
                    ? template.EnumerateArray().Where(t => t.ValueKind == JsonValueKind.Object)
                        .Select(t => (Name: CheckpointJson.Get(t, "name"), Template: CheckpointJson.Get(t, "template")))
                        .Where(t => t.Template is { ValueKind: JsonValueKind.String })
                        .Select(t => (Name: t.Name is { ValueKind: JsonValueKind.String } n ? n.GetString() : null, Template: t.Template!.Value.GetString()!))
                        .ToList()
                    : [];
                if (named.Count > 0) return ([.. named.Select(t => t.Template)], named.FirstOrDefault(t => t.Name == "default").Template, null);
                return ([], null, $"{name}'s chat_template is not a string or a list of {{\"name\", \"template\"}} objects ({template.ValueKind})");
            }
        }
        catch (Exception e) when (e is InvalidModelException or IOException or UnauthorizedAccessException)
        {
            return ([], null, $"unreadable ({e.Message})");
        }
        return ([], null, null);
    }
}
