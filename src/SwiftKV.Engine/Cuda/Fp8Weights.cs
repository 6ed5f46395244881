// What the CUDA backend does with an FP8 checkpoint's e4m3 weights. Dequantized, every matrix is bf16 on the GPU, as
// for any checkpoint. Kept, the codes stay as they are with one scale per row: half the bytes, so a model nearly twice
// the size fits a card and a decode step streams half the bytes (the e4m3 GEMV); a prefill-sized step dequantizes
// each matrix into one scratch right before its GEMM, the same bf16 values the loader would have written. Kept for
// W8A8, a prefill-sized step instead quantizes each GEMM's input rows to e4m3 and runs the GEMM on fp8 tensor cores.
namespace SwiftKV.Engine.Cuda;

/// <summary>How the CUDA backend holds an FP8 checkpoint's e4m3 weight matrices.</summary>
public enum Fp8Weights
{
    /// <summary>Kept as e4m3 when the dequantized weights would not fit the GPU beside a 2 GiB reserve, else dequantized.</summary>
    Auto,
    /// <summary>Always dequantized to bf16 on load.</summary>
    Dequantize,
    /// <summary>Kept as e4m3 wherever the scales allow (one per matrix or output row; block-wise scales are dequantized).</summary>
    Keep,
    /// <summary>
    /// Kept as <see cref="Keep"/>, and steps of more than 8 rows (prefill, batched decode) run W8A8: each GEMM's input
    /// rows quantized to e4m3 with a scale per token, the products summed on fp8 tensor cores (Hopper: cuBLASLt has per-row fp8 scales there only). The numerics
    /// the published FP8 checkpoints were calibrated for (dynamic per-token activations), at about 1.7x bf16's GEMM
    /// rate; see <see cref="CudaBackend.UseW8A8"/>. On the CPU backend (fp32 weights): the same quantized activations,
    /// at every step (<see cref="Cpu.CpuBackend.UseW8A8"/>).
    /// </summary>
    KeepW8A8,
}

/// <summary>The <see cref="Fp8Weights.Auto"/> rule, apart so it is tested without a GPU.</summary>
public static class Fp8WeightChoice
{
    /// <summary>Memory the rule leaves beside the weights: the step's activations and a first KV pool.</summary>
    public const long ReserveBytes = 2L << 30;

    /// <summary>
    /// Whether to keep e4m3 weights: always for Keep and KeepW8A8, never for Dequantize or when nothing is e4m3; for Auto only when
    /// the bf16 weights (<paramref name="bf16Bytes"/>) would leave less than <see cref="ReserveBytes"/> of
    /// <paramref name="freeBytes"/>, so a model that fits either way keeps prefill's speed (no dequantize passes).
    /// </summary>
    public static bool Keep(Fp8Weights mode, long bf16Bytes, long savedBytes, long freeBytes) => mode switch
    {
        _ when savedBytes <= 0 => false,
        Fp8Weights.Keep or Fp8Weights.KeepW8A8 => true,
        Fp8Weights.Dequantize => false,
        Fp8Weights.Auto => bf16Bytes + ReserveBytes > freeBytes,
        _ => throw new ArgumentOutOfRangeException(nameof(mode), mode, "Fp8Weights is Auto, Dequantize, Keep or KeepW8A8."),
    };
}
