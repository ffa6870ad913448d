// LayerNorm over the last dimension of bf16 (or f32) rows, f32 statistics and f32 gamma / beta:
//   y = (x - mean) * rstd * gamma + beta, rstd = 1 / sqrt(var + eps) (biased variance).
//
// Tiling: one block of RETRO_LN_BLOCK threads per row (forward) or per strided set of rows (backward).
// Thread t owns the 8-element column groups t, t + BLOCK, ...: it loads them once as 16-byte vectors and
// keeps them in registers (up to RETRO_LN_MAX_GROUPS groups, rows <= 4096 wide), so x is read from HBM
// exactly once. Mean and variance are two block reductions in a fixed order (deterministic), the variance
// from the centred values held in registers (no E[x^2] - E[x]^2 cancellation).
//
// layernorm_forward_{bf16,f32}: y, mean, rstd from x.
// residual_layernorm_forward_*: h = x + r rounded to the element type (the residual stream), then y = LN(h);
//   writes h and y in one pass (saves a separate add kernel and one read of h).
// layernorm_backward_*: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma. The
//   gamma / beta gradients are accumulated per block in registers over the block's rows (each thread owns
//   its columns: no atomics), written as partials[block][d] and summed by column_sum_partials_f32 in a
//   fixed order: deterministic.
#include "common.cuh"
#include "layernorm.h"

struct RowRegs {
    float v[RETRO_LN_MAX_GROUPS][8];
};

template <typename T>
__device__ inline void layernorm_row(const T* __restrict__ x, T* __restrict__ y,
                                     float* __restrict__ mean_out, float* __restrict__ rstd_out,
                                     const float* __restrict__ gamma, const float* __restrict__ beta, int d,
                                     float eps, RowRegs& r, float* scratch) {
    const int groups = d / 8;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < RETRO_LN_MAX_GROUPS; ++j) {
        const int g = threadIdx.x + j * RETRO_LN_BLOCK;
        if (g < groups) {
            if (x != nullptr) load8(x + 8 * g, r.v[j]);
            for (int e = 0; e < 8; ++e) sum += r.v[j][e];
        }
    }
    const float mean = block_allreduce_sum(sum, scratch) / d;
    float sq = 0.f;
#pragma unroll
    for (int j = 0; j < RETRO_LN_MAX_GROUPS; ++j) {
        const int g = threadIdx.x + j * RETRO_LN_BLOCK;
        if (g < groups)
            for (int e = 0; e < 8; ++e) {
                const float c = r.v[j][e] - mean;
                sq += c * c;
            }
    }
    const float rstd = rsqrtf(block_allreduce_sum(sq, scratch) / d + eps);
#pragma unroll
    for (int j = 0; j < RETRO_LN_MAX_GROUPS; ++j) {
        const int g = threadIdx.x + j * RETRO_LN_BLOCK;
        if (g < groups) {
            float out[8];
            for (int e = 0; e < 8; ++e) out[e] = (r.v[j][e] - mean) * rstd * gamma[8 * g + e] + beta[8 * g + e];
            store8(y + 8 * g, out);
        }
    }
    if (threadIdx.x == 0) {
        *mean_out = mean;
        *rstd_out = rstd;
    }
}

template <typename T>
__device__ inline void layernorm_forward(T* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd,
                                         const T* __restrict__ x, const float* __restrict__ gamma,
                                         const float* __restrict__ beta, int rows, int d, float eps) {
    __shared__ float scratch[RETRO_LN_BLOCK / 32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    RowRegs r;
    layernorm_row<T>(x + (size_t)row * d, y + (size_t)row * d, mean + row, rstd + row, gamma, beta, d, eps, r, scratch);
}
#define LN_FORWARD_PARAMS(T)                                                                                   \
    T *__restrict__ y, float *__restrict__ mean, float *__restrict__ rstd, const T *__restrict__ x,            \
        const float *__restrict__ gamma, const float *__restrict__ beta, int rows, int d, float eps
RETRO_BF16_AND_F32(__launch_bounds__(RETRO_LN_BLOCK), layernorm_forward, LN_FORWARD_PARAMS, y, mean, rstd, x, gamma,
                   beta, rows, d, eps)

template <typename T>
__device__ inline void residual_layernorm_forward(T* __restrict__ h, T* __restrict__ y, float* __restrict__ mean,
                                                  float* __restrict__ rstd, const T* __restrict__ x,
                                                  const T* __restrict__ residual, const float* __restrict__ gamma,
                                                  const float* __restrict__ beta, int rows, int d, float eps) {
    __shared__ float scratch[RETRO_LN_BLOCK / 32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const size_t base = (size_t)row * d;
    RowRegs r;
#pragma unroll
    for (int j = 0; j < RETRO_LN_MAX_GROUPS; ++j) {
        const int g = threadIdx.x + j * RETRO_LN_BLOCK;
        if (g < d / 8) {
            float a[8], b[8];
            load8(x + base + 8 * g, a);
            load8(residual + base + 8 * g, b);
            for (int e = 0; e < 8; ++e) a[e] += b[e];
            store8(h + base + 8 * g, a);
            // Normalise the stored (rounded) residual, which is what the backward will see.
            load8(h + base + 8 * g, r.v[j]);
        }
    }
    layernorm_row<T>(nullptr, y + base, mean + row, rstd + row, gamma, beta, d, eps, r, scratch);
}
#define RESIDUAL_LN_PARAMS(T)                                                                                  \
    T *__restrict__ h, T *__restrict__ y, float *__restrict__ mean, float *__restrict__ rstd,                 \
        const T *__restrict__ x, const T *__restrict__ residual, const float *__restrict__ gamma,              \
        const float *__restrict__ beta, int rows, int d, float eps
RETRO_BF16_AND_F32(__launch_bounds__(RETRO_LN_BLOCK), residual_layernorm_forward, RESIDUAL_LN_PARAMS, h, y, mean,
                   rstd, x, residual, gamma, beta, rows, d, eps)

template <typename T>
__device__ inline void layernorm_backward(T* __restrict__ dx, float* __restrict__ dgamma_partials,
                                          float* __restrict__ dbeta_partials, const T* __restrict__ dy,
                                          const T* __restrict__ x, const float* __restrict__ mean,
                                          const float* __restrict__ rstd, const float* __restrict__ gamma, int rows,
                                          int d) {
    __shared__ float scratch[RETRO_LN_BLOCK / 32];
    const int groups = d / 8;
    float dgamma[RETRO_LN_MAX_GROUPS][8], dbeta[RETRO_LN_MAX_GROUPS][8];
#pragma unroll
    for (int j = 0; j < RETRO_LN_MAX_GROUPS; ++j)
        for (int e = 0; e < 8; ++e) dgamma[j][e] = dbeta[j][e] = 0.f;
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const size_t base = (size_t)row * d;
        const float mu = mean[row], rs = rstd[row];
        float xhat[RETRO_LN_MAX_GROUPS][8], g[RETRO_LN_MAX_GROUPS][8];
        float sum_g = 0.f, sum_gx = 0.f;
#pragma unroll
        for (int j = 0; j < RETRO_LN_MAX_GROUPS; ++j) {
            const int c = threadIdx.x + j * RETRO_LN_BLOCK;
            if (c < groups) {
                float xv[8], dyv[8];
                load8(x + base + 8 * c, xv);
                load8(dy + base + 8 * c, dyv);
                for (int e = 0; e < 8; ++e) {
                    xhat[j][e] = (xv[e] - mu) * rs;
                    g[j][e] = dyv[e] * gamma[8 * c + e];
                    sum_g += g[j][e];
                    sum_gx += g[j][e] * xhat[j][e];
                    dgamma[j][e] += dyv[e] * xhat[j][e];
                    dbeta[j][e] += dyv[e];
                }
            }
        }
        const float mean_g = block_allreduce_sum(sum_g, scratch) / d;
        const float mean_gx = block_allreduce_sum(sum_gx, scratch) / d;
#pragma unroll
        for (int j = 0; j < RETRO_LN_MAX_GROUPS; ++j) {
            const int c = threadIdx.x + j * RETRO_LN_BLOCK;
            if (c < groups) {
                float out[8];
                for (int e = 0; e < 8; ++e) out[e] = rs * (g[j][e] - mean_g - xhat[j][e] * mean_gx);
                store8(dx + base + 8 * c, out);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < RETRO_LN_MAX_GROUPS; ++j) {
        const int c = threadIdx.x + j * RETRO_LN_BLOCK;
        if (c < groups)
            for (int e = 0; e < 8; ++e) {
                dgamma_partials[(size_t)blockIdx.x * d + 8 * c + e] = dgamma[j][e];
                dbeta_partials[(size_t)blockIdx.x * d + 8 * c + e] = dbeta[j][e];
            }
    }
}
#define LN_BACKWARD_PARAMS(T)                                                                                  \
    T *__restrict__ dx, float *__restrict__ dgamma_partials, float *__restrict__ dbeta_partials,              \
        const T *__restrict__ dy, const T *__restrict__ x, const float *__restrict__ mean,                    \
        const float *__restrict__ rstd, const float *__restrict__ gamma, int rows, int d
RETRO_BF16_AND_F32(__launch_bounds__(RETRO_LN_BLOCK), layernorm_backward, LN_BACKWARD_PARAMS, dx, dgamma_partials,
                   dbeta_partials, dy, x, mean, rstd, gamma, rows, d)
