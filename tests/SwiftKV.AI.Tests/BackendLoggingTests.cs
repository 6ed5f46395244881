// AddSwiftKvChatClient with an ILoggerFactory registered: the model's load says which backend it runs on and why, as a
// warning when Auto fell back to the CPU.
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using SwiftKV.Cuda;
using SwiftKV.Engine;
using Xunit;

namespace SwiftKV.AI.Tests;

public sealed class BackendLoggingTests(TinyChatModel tiny)
{
    [Theory]
    [InlineData(BackendKind.Cpu)]
    [InlineData(BackendKind.Auto)]
    public void Load_LogsTheBackendAndWhy(BackendKind backend)
    {
        var logs = new CapturingLoggerFactory();
        var services = new ServiceCollection();
        services.AddSingleton<ILoggerFactory>(logs);
        services.AddSwiftKvChatClient(o => { o.ModelPath = tiny.Directory; o.Backend = backend; });
        using var provider = services.BuildServiceProvider();
        Assert.Empty(logs.Entries);   // the model loads on first use
        var model = provider.GetRequiredService<IChatClient>().GetService<LocalModel>()!;

        var (category, level, text) = Assert.Single(logs.Entries);
        Assert.Equal(typeof(SwiftKvChatClient).FullName, category);
        Assert.Contains(tiny.Directory, text);
        Assert.Contains(model.BackendReason, text);
        // The warning follows the backend Auto ended on (here, without a GPU, the CPU), not whether a GPU was found.
        if (model.BackendReason.StartsWith("Auto: CPU (", StringComparison.Ordinal))
        {
            Assert.Equal(LogLevel.Warning, level);
            Assert.Contains("runs on the CPU backend", text);
            Assert.Contains("slow for 8B", text);
        }
        else
        {
            Assert.Equal(LogLevel.Information, level);
            Assert.DoesNotContain("slow for 8B", text);
        }
        if (backend == BackendKind.Cpu) Assert.Equal(LogLevel.Information, level);
        else if (!CudaRuntime.TryInitialize(out _)) Assert.Equal(LogLevel.Warning, level);
    }

    /// <summary>
    /// A config that does not match how the checkpoint was saved (AcrossKV 2 on one saved with 1) loads, and the load
    /// warns of the tensors it leaves unread, naming them; a matching one gets no such warning (the tests above).
    /// </summary>
    [Fact]
    public void Load_WarnsOfTensorsTheConfigDoesNotRead()
    {
        string dir = Path.Combine(Path.GetTempPath(), "swiftkv-unread-" + Guid.NewGuid().ToString("N"));
        try
        {
            var config = SwiftKV.Model.Checkpoint.ModelPresets.Get("tiny") with { SwiftKv = true, ModelType = "llama_swiftkv", NumKeyValueLayers = 2, KeyValueGroupSize = 1 };
            SwiftKV.Model.Checkpoint.ModelMaker.Write(dir, config.Validate(), new SwiftKV.Model.Checkpoint.ModelMakerOptions { Seed = 5 }, cancellationToken: TestContext.Current.CancellationToken);
            SwiftKV.Model.Tokenization.LlamaTokenizer.CreateDemo().Save(dir);
            string path = Path.Combine(dir, "config.json");
            var root = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))!.AsObject();
            root["key_value_group_size"] = 2;
            File.WriteAllText(path, root.ToJsonString());

            var warning = Assert.Single(LoadLogs(dir), e => e.Level == LogLevel.Warning);
            Assert.Contains("2 tensor(s) in the checkpoint have no place in its config.json and are not read " +
                "(model.layers.3.self_attn.k_proj_swiftkv.weight, model.layers.3.self_attn.v_proj_swiftkv.weight)", warning.Text);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>A container with the client of the checkpoint at <paramref name="dir"/> (CPU) registered, logging to <paramref name="logs"/>.</summary>
    static ServiceProvider Registered(string dir, CapturingLoggerFactory logs)
    {
        var services = new ServiceCollection();
        services.AddSingleton<ILoggerFactory>(logs);
        services.AddSwiftKvChatClient(o => { o.ModelPath = dir; o.Backend = BackendKind.Cpu; });
        return services.BuildServiceProvider();
    }

    /// <summary>What loading the checkpoint at <paramref name="dir"/> through the registration logs.</summary>
    static List<(string Category, LogLevel Level, string Text)> LoadLogs(string dir)
    {
        var logs = new CapturingLoggerFactory();
        using (var provider = Registered(dir, logs))
            provider.GetRequiredService<IChatClient>();
        return logs.Entries;
    }

    /// <summary>A tiny checkpoint whose tokenizer_config.json carries <paramref name="template"/> as its chat_template.</summary>
    static string CheckpointWithTemplate(string template)
    {
        string dir = Path.Combine(Path.GetTempPath(), "swiftkv-template-" + Guid.NewGuid().ToString("N"));
        var config = SwiftKV.Model.Checkpoint.ModelPresets.Get("tiny");
        SwiftKV.Model.Checkpoint.ModelMaker.Write(dir, config.Validate(), new SwiftKV.Model.Checkpoint.ModelMakerOptions { Seed = 5 }, cancellationToken: TestContext.Current.CancellationToken);
        SwiftKV.Model.Tokenization.LlamaTokenizer.CreateDemo().Save(dir);
        string path = Path.Combine(dir, "tokenizer_config.json");
        var root = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        root["chat_template"] = template;
        File.WriteAllText(path, root.ToJsonString());
        return dir;
    }

    /// <summary>
    /// A checkpoint whose chat template is not Llama 3's (ChatML) is prompted in Llama 3.1's format all the same: the
    /// registration's load warns of it, as info and generate --chat do (it said nothing; found by a review helper).
    /// </summary>
    [Fact]
    public void Load_WarnsOfAChatTemplateNotLlama3s()
    {
        string dir = CheckpointWithTemplate("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}");
        try
        {
            var warning = Assert.Single(LoadLogs(dir), e => e.Level == LogLevel.Warning);
            Assert.Contains("does not frame turns with Llama 3's", warning.Text);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// Llama 3.0 Instruct's template writes no default system block: the client prompts such a checkpoint as its template
    /// does (it added 3.1's knowledge and date block, 36 tokens for "Hi" where transformers writes 11; found by a review
    /// helper), and does not warn.
    /// </summary>
    [Fact]
    public async Task Llama30Template_IsHowTheClientPrompts()
    {
        // Meta-Llama-3-8B-Instruct's chat_template.
        const string Llama30Template =
            "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + " +
            "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}" +
            "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
        string dir = CheckpointWithTemplate(Llama30Template);
        try
        {
            var logs = new CapturingLoggerFactory();
            using var provider = Registered(dir, logs);
            var client = provider.GetRequiredService<IChatClient>();
            Assert.DoesNotContain(logs.Entries, e => e.Level == LogLevel.Warning);
            var model = client.GetService<LocalModel>()!;
            Assert.Equal(SwiftKV.Model.Tokenization.LlamaChatTemplate.Llama30, model.ChatTemplate);
            var r = await client.GetResponseAsync("Hi", new ChatOptions { MaxOutputTokens = 1 }, TestContext.Current.CancellationToken);
            var expected = model.Tokenizer.Encode(
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", parseSpecialTokens: true);
            Assert.Equal(expected.Count, r.Usage!.InputTokenCount);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void KeyedLoad_LogsToo()
    {
        var logs = new CapturingLoggerFactory();
        var services = new ServiceCollection();
        services.AddSingleton<ILoggerFactory>(logs);
        services.AddKeyedSwiftKvChatClient("skv", o => { o.ModelPath = tiny.Directory; o.Backend = BackendKind.Cpu; });
        using var provider = services.BuildServiceProvider();
        provider.GetRequiredKeyedService<IChatClient>("skv");
        var text = Assert.Single(logs.Entries).Text;
        Assert.Contains("CPU requested", text);
        Assert.Contains("(key skv)", text);
    }

    /// <summary>
    /// A logger that throws while the load logs (a broken provider, a full disk): the container never receives the
    /// model, so the registration disposes it (its serving thread and memory would outlive the container) and the
    /// logger's exception reaches the caller.
    /// </summary>
    [Fact]
    public void Load_LoggerThrows_DisposesTheModelAndRethrows()
    {
        LocalModel? loaded = null;
        var options = new SwiftKvOptions { ModelPath = tiny.Directory, Backend = BackendKind.Cpu };
        var thrown = Assert.Throws<IOException>(() => SwiftKvServiceCollectionExtensions.LoadLogged(
            () => loaded = options.LoadModel(), new ThrowingLogger(), options.Backend, null));
        Assert.Equal("log sink full", thrown.Message);
        Assert.NotNull(loaded);
        Assert.True(loaded.IsDisposed);
        Assert.NotNull(loaded.Serving);
        Assert.Throws<ObjectDisposedException>(() => loaded.Serving.Submit([1, 2], SwiftKV.Engine.Sampling.SamplingParams.Greedy, 1, ct: TestContext.Current.CancellationToken));
    }

    sealed class ThrowingLogger : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            throw new IOException("log sink full");
    }

    sealed class CapturingLoggerFactory : ILoggerFactory
    {
        public List<(string Category, LogLevel Level, string Text)> Entries { get; } = [];
        public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);
        public void AddProvider(ILoggerProvider provider) { }
        public void Dispose() { }

        sealed class Logger(CapturingLoggerFactory owner, string category) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
            public bool IsEnabled(LogLevel logLevel) => true;
            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                lock (owner.Entries) owner.Entries.Add((category, logLevel, formatter(state, exception)));
            }
        }
    }
}
