// The Llama 3.1 Instruct chat format (the official HF chat_template without tools):
//   <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n
//   Today Date: 26 Jul 2024\n\n{system}<|eot_id|>  then per message
//   <|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|>  and optionally the generation prompt.
// NOTE: the prompt is built as a list of parts (special marker or text) so Encode can splice the template's
// special ids between text encoded with special-token parsing OFF: a user who types "<|eot_id|>" gets plain
// text. Text between two markers is one BPE segment, as in HF, so Encode equals tokenizing Render's output.
// With custom tools the official template adds "Environment: ipython\n" before the date lines of the system block
// (ipythonEnvironment); the tool definitions themselves go into the first user turn (Llama31ToolFormat).
// Llama 3.0 Instruct's template (LlamaChatTemplate.Llama30) differs only in the system block: written only for a
// system message, as given (trimmed), with no knowledge or date lines. It has no tools; with tools the 3.1 block is
// written, since the definitions' framing needs it.
using System.Globalization;

namespace SwiftKV.Model.Tokenization;

/// <summary>Which Llama 3 chat template a checkpoint's prompts follow (<see cref="CheckpointChatTemplate.Kind"/>).</summary>
public enum LlamaChatTemplate
{
    /// <summary>Llama 3.1 and later (3.2, 3.3, SwiftKV): a system block with the knowledge and today's date, always.</summary>
    Llama31,
    /// <summary>Llama 3.0: a system block only for a system message, as given.</summary>
    Llama30,
}

/// <summary>Renders and tokenizes conversations in the Llama 3.1 Instruct format.</summary>
public static class Llama31ChatFormat
{
    public const string BeginOfText = "<|begin_of_text|>";
    public const string StartHeader = "<|start_header_id|>";
    public const string EndHeader = "<|end_header_id|>";
    public const string EndOfTurn = "<|eot_id|>";

    /// <summary>The date the official template uses when no date_string is passed.</summary>
    public static readonly DateOnly TemplateDefaultDate = new(2024, 7, 26);

    static readonly string[] s_roles = ["system", "user", "assistant", "ipython"];

    /// <summary>The Jinja chat_template written to tokenizer_config.json; renders what <see cref="Render"/> renders.</summary>
    public const string JinjaTemplate = """
        {{- bos_token }}
        {%- if not date_string is defined %}
            {%- set date_string = "26 Jul 2024" %}
        {%- endif %}
        {%- if messages[0]['role'] == 'system' %}
            {%- set system_message = messages[0]['content']|trim %}
            {%- set messages = messages[1:] %}
        {%- else %}
            {%- set system_message = "" %}
        {%- endif %}
        {{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
        {{- "Cutting Knowledge Date: December 2023\n" }}
        {{- "Today Date: " + date_string + "\n\n" }}
        {{- system_message }}
        {{- "<|eot_id|>" }}
        {%- for message in messages %}
            {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
        {%- endfor %}
        {%- if add_generation_prompt %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
        {%- endif %}
        """;

    /// <summary>
    /// The prompt text. <paramref name="today"/> fills "Today Date" (format "dd MMM yyyy", as strftime
    /// "%d %b %Y"); null gives the template's default, 26 Jul 2024.
    /// </summary>
    public static string Render(IReadOnlyList<ChatTurn> turns, bool addGenerationPrompt, DateOnly? today = null, bool ipythonEnvironment = false,
        LlamaChatTemplate template = LlamaChatTemplate.Llama31) =>
        string.Concat(BuildParts(turns, addGenerationPrompt, today, ipythonEnvironment, template).Select(p => p.Text));

    /// <summary>
    /// Token ids of <see cref="Render"/>'s prompt, with special tokens only where the template puts them.
    /// Starts with &lt;|begin_of_text|&gt;.
    /// </summary>
    public static IReadOnlyList<int> Encode(LlamaTokenizer tok, IReadOnlyList<ChatTurn> turns, bool addGenerationPrompt, DateOnly? today = null, bool ipythonEnvironment = false,
        LlamaChatTemplate template = LlamaChatTemplate.Llama31)
    {
        var ids = new List<int>();
        TryEncodeInto(tok, turns, addGenerationPrompt, ids, int.MaxValue, today, ipythonEnvironment, template: template);
        return ids;
    }

    /// <summary>
    /// <see cref="Encode"/> into <paramref name="ids"/>, stopping (false) as soon as the prompt is known to need more
    /// than <paramref name="maxCount"/> ids: a conversation far longer than the context is refused without encoding
    /// all of it. After false, <paramref name="ids"/> holds only a prefix.
    /// </summary>
    public static bool TryEncodeInto(LlamaTokenizer tok, IReadOnlyList<ChatTurn> turns, bool addGenerationPrompt, List<int> ids, int maxCount,
        DateOnly? today = null, bool ipythonEnvironment = false, CancellationToken cancellationToken = default,
        LlamaChatTemplate template = LlamaChatTemplate.Llama31)
    {
        ArgumentNullException.ThrowIfNull(tok);
        ArgumentNullException.ThrowIfNull(ids);
        foreach (var (isSpecial, text) in BuildParts(turns, addGenerationPrompt, today, ipythonEnvironment, template))
        {
            if (isSpecial)
            {
                ids.Add(tok.GetSpecialTokenId(text)
                    ?? throw new ArgumentException($"The tokenizer has no special token {text}, which the Llama 3.1 chat format needs.", nameof(tok)));
                if (ids.Count > maxCount) return false;
            }
            else if (!tok.TryEncodeInto(text, ids, maxCount, parseSpecialTokens: false, cancellationToken))
                return false;
        }
        return true;
    }

    static List<(bool IsSpecial, string Text)> BuildParts(IReadOnlyList<ChatTurn> turns, bool addGenerationPrompt, DateOnly? today, bool ipythonEnvironment,
        LlamaChatTemplate template)
    {
        if (!Enum.IsDefined(template)) throw new ArgumentOutOfRangeException(nameof(template), template, "Llama31 or Llama30.");
        ArgumentNullException.ThrowIfNull(turns);
        for (int i = 0; i < turns.Count; i++)
        {
            var turn = turns[i] ?? throw new ArgumentException($"turns[{i}] is null.", nameof(turns));
            if (turn.Role is null || !s_roles.Contains(turn.Role))
                throw new ArgumentException(
                    $"turns[{i}] has role '{turn.Role}'; the Llama 3.1 format supports {string.Join(", ", s_roles)}.", nameof(turns));
            if (turn.Content is null) throw new ArgumentException($"turns[{i}] has null content.", nameof(turns));
        }

        string date = (today ?? TemplateDefaultDate).ToString("dd MMM yyyy", CultureInfo.InvariantCulture);
        bool systemFirst = turns.Count > 0 && turns[0].Role == "system";
        string system = systemFirst ? PythonStrip(turns[0].Content) : "";

        var parts = new List<(bool, string)> { (true, BeginOfText) };
        void Message(string role, string body)
        {
            parts.Add((true, StartHeader));
            parts.Add((false, role));
            parts.Add((true, EndHeader));
            parts.Add((false, "\n\n" + body));
            parts.Add((true, EndOfTurn));
        }
        if (template == LlamaChatTemplate.Llama30 && !ipythonEnvironment)
        {
            if (systemFirst) Message("system", system);
        }
        else Message("system", (ipythonEnvironment ? "Environment: ipython\n" : "") + $"Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n{system}");
        for (int i = systemFirst ? 1 : 0; i < turns.Count; i++) Message(turns[i].Role, PythonStrip(turns[i].Content));
        if (addGenerationPrompt)
        {
            parts.Add((true, StartHeader));
            parts.Add((false, "assistant"));
            parts.Add((true, EndHeader));
            parts.Add((false, "\n\n"));
        }
        return parts;
    }

    /// <summary>Jinja's trim filter is Python's str.strip(): .NET white space plus the U+001C..U+001F separators.</summary>
    static string PythonStrip(string s)
    {
        static bool IsSpace(char c) => char.IsWhiteSpace(c) || (c >= '\x1c' && c <= '\x1f');
        int start = 0, end = s.Length;
        while (start < end && IsSpace(s[start])) start++;
        while (end > start && IsSpace(s[end - 1])) end--;
        return s[start..end];
    }
}
