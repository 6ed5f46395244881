// FP8 checkpoint weights to bf16 on the GPU, as the loader uploads them: a run of a matrix's fp8 codes (one byte per
// weight, half the bytes of bf16 over PCIe and no host pass over each weight) becomes
//   out[i] = bf16(value(codes[i]) * scale(row, column)),   element first + i of a row-major [rows, columns] matrix,
// with the scale of the element's [block_rows, block_columns] block: one per matrix (block = the matrix), one per
// output row (block_rows = 1, block_columns = columns), or one per block, the last blocks of a row or column partial.
// value() is the format's 256-entry table made by the host (SwiftKV.Model.Checkpoint.Float8), and the product is
// one fp32 multiply rounded to nearest even, so the result equals the CPU loader's dequantization rounded to bf16.
// Launch: any grid-stride grid, block 256.
#include "swiftkv_common.cuh"

extern "C" __global__ void dequantize_fp8_bf16(const unsigned char* codes, long long n, long long first,
                                               const float* table, const float* scales, long long columns,
                                               int block_rows, int block_columns, int scale_columns, bf16_t* out)
{
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        long long g = first + i;
        long long row = g / columns, column = g - row * columns;
        float scale = scales[(row / block_rows) * scale_columns + column / block_columns];
        out[i] = f32_to_bf16(__fmul_rn(table[codes[i]], scale));
    }
}
