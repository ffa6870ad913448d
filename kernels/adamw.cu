// The optimizer step over flat f32 arenas (every parameter, gradient and moment of the model in one
// buffer each): the global gradient norm, then one fused AdamW launch for the whole model.
//
// sum_squares_f32 / sum_partials_f64: the sum of squares of the gradient arena in two passes. Pass 1 runs
//   a fixed grid of RETRO_SUMSQ_BLOCKS blocks, each reducing its grid-stride share in f64 into
//   partials[block]; pass 2 (one block) adds the partials. No atomics: the same input, the same bits.
// adamw_update_f32: one thread per element (grid-stride). Every thread derives the clip coefficient from
//   the sum of squares on the device (torch's clip_grad_norm_: min(1, max_norm / (norm + 1e-6)), in f64),
//   so the host never waits inside the step; a non-finite norm skips the update (the host then reports
//   it). It reads the gradient once, updates both moments and the master weight in registers, and writes
//   the bf16 copy the GEMMs read in the same pass (when that pointer is non-null). Memory-bound: 4 f32
//   reads + 3 f32 writes (+1 bf16) per element, so no tiling, just coalesced grid-stride access.
#include "common.cuh"
#include "adamw.h"

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

extern "C" __global__ void adamw_update_f32(float* __restrict__ param, const float* __restrict__ grad,
                                            float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
                                            __nv_bfloat16* __restrict__ param_bf16,
                                            const double* __restrict__ grad_sum_squares, AdamwParams p) {
    const double norm = sqrt(*grad_sum_squares) * p.grad_scale;
    if (!isfinite(norm)) return;
    const double clip = p.max_norm > 0.0 ? fmin(1.0, p.max_norm / (norm + 1e-6)) : 1.0;
    const float scale = (float)(p.grad_scale * clip);
    RETRO_GRID_STRIDE(i, p.n) {
        const float g = grad[i] * scale;
        float w = i < p.decay_end ? param[i] * p.decay_factor : param[i];
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
