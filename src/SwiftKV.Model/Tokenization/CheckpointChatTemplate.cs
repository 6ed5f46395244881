// A checkpoint's chat_template (tokenizer_config.json) is Jinja code that SwiftKV.AI does not run: chat prompts are
// always written in Llama 3.1's format (Llama31ChatFormat). That is right for Llama 3.x and SwiftKV checkpoints, whose
// templates all frame turns with <|start_header_id|> ... <|eot_id|>; a Llama-architecture fine-tune with another
// template (ChatML's <|im_start|>, say) would be prompted in a format it was not trained on, so that case is told.
using System.Text.Json;

namespace SwiftKV.Model.Tokenization;

/// <summary>How a checkpoint's chat_template relates to the Llama 3.1 format the chat client writes.</summary>
public static class CheckpointChatTemplate
{
    /// <summary>
    /// A sentence for <c>info</c>: whether tokenizer_config.json has a chat_template and whether it frames turns as
    /// Llama 3 does.
    /// </summary>
    public static string Describe(string checkpointDir) => Read(checkpointDir) switch
    {
        null => "chat template: none in tokenizer_config.json; chats are written in Llama 3.1's format",
        var t when IsLlama3(t) => "chat template: Llama 3's turns (<|start_header_id|> ... <|eot_id|>), the format chats are written in",
        _ => Mismatch(checkpointDir)!,
    };

    /// <summary>A warning when the checkpoint's chat_template does not frame turns as Llama 3 does; null otherwise.</summary>
    public static string? Mismatch(string checkpointDir) => Read(checkpointDir) is { } t && !IsLlama3(t)
        ? "chat template: the checkpoint's chat_template does not frame turns with Llama 3's <|start_header_id|> ... <|eot_id|>; " +
          "chats are written in Llama 3.1's format all the same, which this model may not have been trained on"
        : null;

    /// <summary>Whether a template frames turns as Llama 3's does.</summary>
    public static bool IsLlama3(string template) =>
        template.Contains("<|start_header_id|>", StringComparison.Ordinal) && template.Contains("<|eot_id|>", StringComparison.Ordinal);

    /// <summary>
    /// The chat_template text: a string, or of a list of named templates the one named "default" (else the first), as
    /// transformers picks it; null when there is none.
    /// </summary>
    static string? Read(string checkpointDir)
    {
        string path = Path.Combine(checkpointDir, "tokenizer_config.json");
        if (CheckpointJson.TryRead(path) is not { } config || CheckpointJson.Get(config, "chat_template") is not { } template) return null;
        if (template.ValueKind == JsonValueKind.String) return template.GetString();
        if (template.ValueKind == JsonValueKind.Array)
        {
            var named = template.EnumerateArray()
                .Where(t => t.ValueKind == JsonValueKind.Object && CheckpointJson.Get(t, "template") is { ValueKind: JsonValueKind.String })
                .ToList();
            var pick = named.FirstOrDefault(t => CheckpointJson.Get(t, "name") is { ValueKind: JsonValueKind.String } n && n.GetString() == "default");
            if (pick.ValueKind == JsonValueKind.Undefined && named.Count > 0) pick = named[0];
            if (pick.ValueKind != JsonValueKind.Undefined) return CheckpointJson.Get(pick, "template")!.Value.GetString();
        }
        throw new InvalidModelException($"{path}: chat_template must be a string or a list of {{\"name\", \"template\"}} objects, got {template.ValueKind}.");
    }
}
