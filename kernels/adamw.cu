// Fused AdamW update and the reductions the optimizer needs, on flat f32 buffers.
//
// adamw_update_f32: one thread per element (grid-stride). It reads the gradient once, applies the clip
//   coefficient, updates both moments and the f32 master weight in registers, and writes the bf16 copy
//   of the weight used by the GEMMs in the same pass (when the pointer is non-null). Memory-bound: 4 f32
//   reads + 3 f32 writes (+1 bf16) per element, so no tiling, just coalesced grid-stride access.
// sum_squares_f32 / sum_partials_f64: the global gradient norm in two passes. Pass 1 runs a fixed grid
//   of RETRO_SUMSQ_BLOCKS blocks, each reducing its grid-stride share in f64 into partials[block];
//   pass 2 (one block) adds the partials. No atomics: the same input always gives the same bits.
#include "common.cuh"
#include "adamw.h"

extern "C" __global__ void adamw_update_f32(float* __restrict__ param, const float* __restrict__ grad,
                                            float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
                                            __nv_bfloat16* __restrict__ param_bf16, AdamwParams p) {
    RETRO_GRID_STRIDE(i, p.n) {
        const float g = grad[i] * p.grad_scale;
        float w = param[i] * p.decay_factor;
        float m = exp_avg[i];
        m += p.one_minus_beta1 * (g - m);
        const float v = exp_avg_sq[i] * p.beta2 + p.one_minus_beta2 * g * g;
        const float denom = sqrtf(v) / p.bias_correction2_sqrt + p.eps;
        w -= p.step_size * (m / denom);
        param[i] = w;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        if (param_bf16 != nullptr) param_bf16[i] = __float2bfloat16(w);
    }
}

extern "C" __global__ void sum_squares_f32(const float* __restrict__ x, uint64_t n, double* __restrict__ partials) {
    double acc = 0.0;
    RETRO_GRID_STRIDE(i, n) {
        const double v = (double)x[i];
        acc += v * v;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

extern "C" __global__ void sum_partials_f64(const double* __restrict__ partials, uint32_t count, double* __restrict__ out) {
    double acc = 0.0;
    for (uint32_t i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) *out = acc;
}
