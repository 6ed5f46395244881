// Rotary embedding (rotate-half layout) applied in place to query rows, with the projection's bias fused:
//   q (rows, ld) fp32, heads of head_dim starting at column 0; row r sits at position pos0 + r.
//   angle_i = inv_freq[i] * position (one fp32 multiply, as PyTorch does); inv_freq (head_dim/2) comes from the
//   host (RotaryEmbedding.ComputeInvFreq: llama3 scaling), so CPU and GPU share one formula.
//   x[i] <- x[i] cos - x[i+d/2] sin, x[i+d/2] <- x[i+d/2] cos + x[i] sin, after x += bias (bias may be null).
//   pos_base (may be null): when set, the first row's position is read from device memory instead of pos0, so a
//   captured CUDA graph replays at whatever position the engine writes there before each launch.
// Launch: grid (rows, RowGrid blocks per row), block 128; programmatic on sm_90+ (waits for the previous kernel before any access).
#include "swiftkv_common.cuh"

extern "C" __global__ void rope_f32(float* q, int ld, const float* bias, const float* inv_freq, int rows, int heads, int head_dim, int pos0,
    const int* pos_base)
{
    int r = blockIdx.x;
    pdl_wait();
    pdl_launch_dependents();
    float pos = (float)((pos_base != nullptr ? *pos_base : pos0) + r);
    float* row = q + (long long)r * ld;
    rope_row(row, bias, inv_freq, heads, head_dim, pos);
}
