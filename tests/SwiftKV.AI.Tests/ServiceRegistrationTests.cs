// AddSwiftKvChatClient: registration, configuration binding, validation at start-up, pipeline chaining, ownership.
using Xunit;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace SwiftKV.AI.Tests;

public sealed class ServiceRegistrationTests(TinyChatModel tiny)
{
    [Fact]
    public async Task AddSwiftKvChatClient_ChainsMiddleware_AndContainerOwnsTheClient()
    {
        var services = new ServiceCollection();
        services.AddSwiftKvChatClient(o => { o.ModelPath = tiny.Directory; o.Backend = Engine.BackendKind.Cpu; })
            .UseFunctionInvocation();
        var provider = services.BuildServiceProvider();
        var client = provider.GetRequiredService<IChatClient>();
        Assert.IsType<FunctionInvokingChatClient>(client);
        var inner = client.GetService<SwiftKvChatClient>();
        Assert.NotNull(inner);

        var r = await client.GetResponseAsync("hello", new ChatOptions { MaxOutputTokens = 2 }, TestContext.Current.CancellationToken);
        Assert.Equal(2, r.Usage!.OutputTokenCount);

        await provider.DisposeAsync();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => inner!.GetResponseAsync("again", cancellationToken: TestContext.Current.CancellationToken));
    }

    [Fact]
    public void AddSwiftKvChatClient_BindsConfiguration()
    {
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["SwiftKV:ModelPath"] = tiny.Directory,
            ["SwiftKV:ModelId"] = "my-model",
            ["SwiftKV:SwiftKv"] = "false",
            ["SwiftKV:Backend"] = "Cpu",
            ["SwiftKV:ContextLength"] = "1024",
            ["SwiftKV:KvCacheBytes"] = "33554432",
            ["SwiftKV:EnablePrefixCaching"] = "false",
            ["SwiftKV:KvCacheDtype"] = "Fp8E4M3",
            ["SwiftKV:MaxBatchTokens"] = "96",
            ["SwiftKV:KvBlockSize"] = "8",
            ["SwiftKV:MaxConcurrentRequests"] = "5",
            ["SwiftKV:Fp8Weights"] = "keep",   // the CPU ignores it; bound all the same
        }).Build();
        var services = new ServiceCollection();
        services.AddSwiftKvChatClient(config.GetSection("SwiftKV"));
        using var provider = services.BuildServiceProvider();
        var client = provider.GetRequiredService<IChatClient>();
        Assert.Equal("my-model", client.GetService<ChatClientMetadata>()!.DefaultModelId);
        Assert.False(client.GetService<SwiftKvChatClient>()!.Model.Backend.SwiftKvEnabled);
        var serving = client.GetService<SwiftKvChatClient>()!.Model.Serving!.Options;
        Assert.Equal((32L << 20, false, SwiftKV.Engine.Serving.KvCacheDtype.Fp8E4M3), (serving.KvCacheBytes, serving.EnablePrefixCaching, serving.KvCacheDtype));
        var engine = client.GetService<SwiftKvChatClient>()!.Model.Serving!;
        Assert.Equal((8, 96, 5), (engine.BlockSize, engine.MaxBatchTokens, engine.MaxRunningSequences));
        Assert.Equal(SwiftKV.Engine.Cuda.Fp8Weights.Keep, SwiftKvOptions.FromConfiguration(config.GetSection("SwiftKV")).Fp8Weights);
    }

    /// <summary>Left unset, the step shape is the backend's (the CPU's: 16-position blocks, 512 tokens per step).</summary>
    [Fact]
    public void AddSwiftKvChatClient_StepShapeUnset_TheBackendChooses()
    {
        var services = new ServiceCollection();
        services.AddSwiftKvChatClient(o => { o.ModelPath = tiny.Directory; o.Backend = Engine.BackendKind.Cpu; });
        using var provider = services.BuildServiceProvider();
        var engine = provider.GetRequiredService<IChatClient>().GetService<SwiftKvChatClient>()!.Model.Serving!;
        Assert.Equal((16, 512, 64), (engine.BlockSize, engine.MaxBatchTokens, engine.MaxRunningSequences));
        Assert.Equal((null, null, null, null), (engine.Options.BlockSize, engine.Options.MaxBatchTokens, engine.Options.KvCacheBytes, engine.Options.MaxRunningSequences));
        // No request may hold more than ContextLength (8192 by default) positions: neither does the pool size for more.
        Assert.Equal(8192, engine.Options.MaxSequenceLength);
        Assert.True(engine.MaxSequenceLength <= 8192);
    }

    [Fact]
    public void AddSwiftKvChatClient_InvalidMaxConcurrentRequests_FailsAtRegistration()
    {
        var e = Assert.ThrowsAny<ArgumentException>(() => new ServiceCollection().AddSwiftKvChatClient(o => { o.ModelPath = tiny.Directory; o.MaxConcurrentRequests = 0; }));
        Assert.Contains("MaxConcurrentRequests", e.Message);
    }

    [Theory]
    [InlineData(0L)]
    [InlineData(-1L)]
    public void AddSwiftKvChatClient_InvalidKvCacheBytes_FailsAtRegistration(long bytes)
    {
        var e = Assert.ThrowsAny<ArgumentException>(() => new ServiceCollection().AddSwiftKvChatClient(o => { o.ModelPath = tiny.Directory; o.KvCacheBytes = bytes; }));
        Assert.Contains("KvCacheBytes", e.Message);
    }

    [Theory]
    [InlineData(0, null, "MaxBatchTokens")]
    [InlineData(-5, null, "MaxBatchTokens")]
    [InlineData(null, 0, "KvBlockSize")]
    [InlineData(null, 8192, "KvBlockSize")]
    public void AddSwiftKvChatClient_InvalidStepShape_FailsAtRegistration(int? maxBatchTokens, int? blockSize, string named)
    {
        var e = Assert.ThrowsAny<ArgumentException>(() => new ServiceCollection().AddSwiftKvChatClient(o =>
        {
            o.ModelPath = tiny.Directory;
            o.MaxBatchTokens = maxBatchTokens;
            o.KvBlockSize = blockSize;
        }));
        Assert.Contains(named, e.Message);
    }

    [Theory]
    [InlineData("", 8192, 512, "ModelPath")]
    [InlineData("/no/such/dir", 8192, 512, "ModelPath '/no/such/dir': no such directory (expected a Hugging Face checkpoint")]
    [InlineData("CONFIG_FILE", 8192, 512, "is a file; give the checkpoint directory that holds it")]
    [InlineData(null, 0, 512, "ContextLength")]
    [InlineData(null, 8192, -1, "DefaultMaxOutputTokens")]
    public void AddSwiftKvChatClient_InvalidOptions_FailAtRegistration(string? path, int context, int maxTokens, string named)
    {
        var services = new ServiceCollection();
        var e = Assert.ThrowsAny<ArgumentException>(() => services.AddSwiftKvChatClient(o =>
        {
            o.ModelPath = path == "CONFIG_FILE" ? Path.Combine(tiny.Directory, "config.json") : path ?? tiny.Directory;
            o.ContextLength = context;
            o.DefaultMaxOutputTokens = maxTokens;
        }));
        Assert.Contains(named, e.Message);
    }

    /// <summary>A misspelled key or an unconvertible value in the section, and an empty ModelId, stop registration.</summary>
    [Theory]
    [InlineData("ContextLenght", "4096", "SwiftKV:ContextLenght is not an option (did you mean ContextLength?); the options are ModelPath, ModelId, Backend")]
    [InlineData("Backend", "Gpu", "SwiftKV:Backend 'Gpu' is not one of Auto, Cpu, Cuda.")]
    [InlineData("SwiftKv", "maybe", "SwiftKV:SwiftKv 'maybe' is not true or false.")]
    [InlineData("ContextLength", "4k", "SwiftKV:ContextLength '4k' is not a whole number of the size this option takes.")]
    [InlineData("KvCacheBytes", " ", "SwiftKV:KvCacheBytes ' ' is not a whole number")]
    [InlineData("Backend", "7", "SwiftKvOptions.Backend must be Auto, Cpu or Cuda")]
    [InlineData("KvCacheBytes", "1.5", "SwiftKV:KvCacheBytes '1.5' is not a whole number")]
    [InlineData("KvCacheDtype", "fp8", "SwiftKV:KvCacheDtype 'fp8' is not one of Bf16, Fp8E4M3.")]
    [InlineData("Fp8Weights", "fp8", "SwiftKV:Fp8Weights 'fp8' is not one of Auto, Dequantize, Keep, KeepW8A8.")]
    [InlineData("Fp8Weights", "9", "SwiftKvOptions.Fp8Weights must be Auto, Dequantize, Keep or KeepW8A8")]
    [InlineData("Colour", "red", "SwiftKV:Colour is not an option; the options")]
    [InlineData("ModelId", " ", "ModelId")]
    public void AddSwiftKvChatClient_BadConfigurationSection_FailsAtRegistration(string key, string value, string named)
    {
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["SwiftKV:ModelPath"] = tiny.Directory,
            ["SwiftKV:" + key] = value,
        }).Build();
        var e = Assert.ThrowsAny<ArgumentException>(() => new ServiceCollection().AddSwiftKvChatClient(config.GetSection("SwiftKV")));
        Assert.Contains(named, e.Message);
    }

    /// <summary>
    /// A JSON null binds a value-type option to its default without a word (SwiftKv: null turned SwiftKV off): refused by
    /// name; null stays allowed where null means the default (KvCacheBytes).
    /// </summary>
    [Fact]
    public void AddSwiftKvChatClient_JsonNull_IsRefusedForValueOptions()
    {
        // A key whose value is null, as the JSON provider gives "SwiftKv": null.
        IConfiguration Section(string key, string? value) => new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["SwiftKV:ModelPath"] = tiny.Directory,
            ["SwiftKV:" + key] = value,
        }).Build().GetSection("SwiftKV");
        var e = Assert.ThrowsAny<ArgumentException>(() => new ServiceCollection().AddSwiftKvChatClient(Section("SwiftKv", null)));
        Assert.Contains("SwiftKV:SwiftKv needs a value (got null)", e.Message);
        new ServiceCollection().AddSwiftKvChatClient(Section("KvCacheBytes", null));
        new ServiceCollection().AddSwiftKvChatClient(Section("Backend", "1"));   // the binder reads an enum's number, as it always did
    }

    /// <summary>Values the binder converts pass the key check: names in any case, an empty nullable option (its default).</summary>
    [Fact]
    public void AddSwiftKvChatClient_ConfigurationSection_AcceptsWhatTheBinderConverts()
    {
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["SwiftKV:modelpath"] = tiny.Directory,
            ["SwiftKV:Backend"] = "cpu",
            ["SwiftKV:SwiftKv"] = "False",
            ["SwiftKV:KvCacheBytes"] = "",
            ["SwiftKV:MaxBatchTokens"] = "256",
            ["SwiftKV:ContextLength"] = "0x100",   // the binder's converter reads hex, as it always did
        }).Build();
        var services = new ServiceCollection();
        services.AddSwiftKvChatClient(config.GetSection("SwiftKV"));
        using var provider = services.BuildServiceProvider();
        var model = provider.GetRequiredService<Engine.LocalModel>();
        Assert.False(model.Backend.SwiftKvEnabled);
        Assert.Equal("cpu", model.Backend.Name, ignoreCase: true);
    }

    [Fact]
    public async Task AddKeyedSwiftKvChatClient_TwoModelsSideBySide_ContainerDisposesThem()
    {
        var services = new ServiceCollection();
        services.AddKeyedSwiftKvChatClient("skv", o => { o.ModelPath = tiny.Directory; o.Backend = Engine.BackendKind.Cpu; o.ModelId = "with-swiftkv"; })
            .UseFunctionInvocation();
        services.AddKeyedSwiftKvChatClient("teacher", o => { o.ModelPath = tiny.Directory; o.Backend = Engine.BackendKind.Cpu; o.SwiftKv = false; o.ModelId = "teacher"; });
        var provider = services.BuildServiceProvider();
        var skv = provider.GetRequiredKeyedService<IChatClient>("skv");
        var teacher = provider.GetRequiredKeyedService<IChatClient>("teacher");
        Assert.Null(provider.GetService<IChatClient>());
        Assert.IsType<FunctionInvokingChatClient>(skv);
        Assert.Equal("with-swiftkv", skv.GetService<ChatClientMetadata>()!.DefaultModelId);
        Assert.False(teacher.GetService<Engine.LocalModel>()!.Backend.SwiftKvEnabled);
        var model = provider.GetRequiredKeyedService<Engine.LocalModel>("skv");
        Assert.Same(model, skv.GetService<Engine.LocalModel>());

        var r = await skv.GetResponseAsync("hello", new ChatOptions { MaxOutputTokens = 2 }, TestContext.Current.CancellationToken);
        Assert.Equal(r.Usage!.InputTokenCount - 1, r.Usage.AdditionalCounts![SwiftKvChatClient.PromptTokensSkippedBySwiftKv]);

        await provider.DisposeAsync();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => skv.GetService<SwiftKvChatClient>()!.GetResponseAsync("again", cancellationToken: TestContext.Current.CancellationToken));
    }

    [Fact]
    public void AddKeyedSwiftKvChatClient_InvalidOptions_FailAtRegistration()
    {
        var e = Assert.ThrowsAny<ArgumentException>(() => new ServiceCollection().AddKeyedSwiftKvChatClient("k", o => o.ModelPath = ""));
        Assert.Contains("ModelPath", e.Message);
    }
}
