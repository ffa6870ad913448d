// Deterministic column sums, the reduction behind every bias and LayerNorm parameter gradient.
//
// column_sum_partials_{bf16,f32}: partials[p][c] = sum of x[r][c] over rows r in [p * ROWS, (p + 1) * ROWS),
//   in f32. Grid (ceil(d / BLOCK), ceil(n / ROWS)); one thread per column, so a warp reads 32 adjacent
//   bf16 of a row (coalesced) and walks down its rows in order.
// add_column_partials: out[c] += sum over p of partials[p][c], in a fixed order (no atomics): the same
//   input always gives the same bits. Adding into `out` accumulates gradients across micro-batches.
#include "common.cuh"
#include "reduce.h"

template <typename T>
__device__ inline void column_sum_partials(float* __restrict__ partials, const T* __restrict__ x, int rows, int d) {
    const int c = blockIdx.x * RETRO_COLSUM_BLOCK + threadIdx.x;
    if (c >= d) return;
    const int start = blockIdx.y * RETRO_COLSUM_ROWS;
    const int end = min(rows, start + RETRO_COLSUM_ROWS);
    float acc = 0.f;
    for (int r = start; r < end; ++r) acc += to_float(x[(size_t)r * d + c]);
    partials[(size_t)blockIdx.y * d + c] = acc;
}
#define COLUMN_SUM_PARAMS(T) float *__restrict__ partials, const T *__restrict__ x, int rows, int d
RETRO_BF16_AND_F32(, column_sum_partials, COLUMN_SUM_PARAMS, partials, x, rows, d)

extern "C" __global__ void add_column_partials(float* __restrict__ out, const float* __restrict__ partials,
                                                   int parts, int d) {
    const int c = blockIdx.x * RETRO_COLSUM_BLOCK + threadIdx.x;
    if (c >= d) return;
    float acc = 0.f;
    for (int p = 0; p < parts; ++p) acc += partials[(size_t)p * d + c];
    out[c] += acc;
}
