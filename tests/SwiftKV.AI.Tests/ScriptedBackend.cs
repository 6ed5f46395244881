// A stand-in backend whose "model" writes scripted answers: each request's prefill starts the next script, and
// every forward pass returns logits that make the next scripted token the argmax (then <|eot_id|>). The real
// generator, sampler, detokenizer, prompt renderer and tool-call parser all run; only the weights are replaced,
// so tests can make the model emit a tool call and read back the prompt it was given.
using SwiftKV.Engine;
using SwiftKV.Model;
using SwiftKV.Model.Tokenization;

namespace SwiftKV.AI.Tests;

public sealed class ScriptedBackend(LlamaConfig config, LlamaTokenizer tokenizer, params string[] answers) : IModelBackend
{
    readonly Queue<string> _answers = new(answers);
    readonly int _eot = tokenizer.GetSpecialTokenId("<|eot_id|>")!.Value;
    IReadOnlyList<int> _script = [];
    int _next;

    /// <summary>
    /// A chat client (owning its model) over a new scripted backend with the tiny model's config and tokenizer: at most
    /// 64 output tokens unless a request says otherwise, today 2026-11-26.
    /// </summary>
    public static (SwiftKvChatClient Client, ScriptedBackend Backend) Client(TinyChatModel tiny, int contextLength, params string[] answers)
    {
        var backend = new ScriptedBackend(tiny.Model.Config, tiny.Model.Tokenizer, answers);
        var model = new LocalModel { Path = tiny.Directory, Config = tiny.Model.Config, Tokenizer = tiny.Model.Tokenizer, Backend = backend, BackendReason = "scripted" };
        var client = new SwiftKvChatClient(model, new SwiftKvOptions { ModelPath = tiny.Directory, DefaultMaxOutputTokens = 64, ContextLength = contextLength },
            ownsModel: true, today: () => new DateOnly(2026, 11, 26));
        return (client, backend);
    }

    /// <inheritdoc cref="Client(TinyChatModel, int, string[])"/>
    public static (SwiftKvChatClient Client, ScriptedBackend Backend) Client(TinyChatModel tiny, params string[] answers) => Client(tiny, 8192, answers);

    /// <summary>The prompt token ids of every request, in order.</summary>
    public List<int[]> Prompts { get; } = [];

    public string Name => "scripted";
    public LlamaConfig Config => config;
    public bool SwiftKvEnabled => false;
    public ISequenceCache CreateCache(int capacity) => new Cache(capacity);

    public float[] Forward(ISequenceCache cache, ReadOnlySpan<int> tokens, LogitsSelection selection)
    {
        var c = (Cache)cache;
        if (c.Length == 0)
        {
            Prompts.Add(tokens.ToArray());
            _script = _answers.Count > 0 ? tokenizer.Encode(_answers.Dequeue(), parseSpecialTokens: true) : [];
            _next = 0;
        }
        c.Length += tokens.Length;
        var logits = new float[config.VocabSize];
        logits[_next < _script.Count ? _script[_next++] : _eot] = 10f;
        return logits;
    }

    public void Dispose() { }

    sealed class Cache(int capacity) : ISequenceCache
    {
        public int Length { get; set; }
        public int Capacity => capacity;
        public long KvBytes => 1024;
        public void Dispose() { }
    }
}
