// Bias + tanh-approximated GELU (Megatron's bias_gelu_fusion), bf16 (or f32) activations, f32 bias:
//   forward:  y = gelu(x + b), gelu(u) = 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))
//   backward: du = dy * gelu'(x + b), recomputing u from x and b instead of storing it.
// The bias gradient is the column sum of du (kernels/reduce.cu).
// Tiling: memory-bound, so a grid-stride loop over 8-element groups (16-byte loads and stores); d % 8 == 0
// keeps every group inside one row, so its bias is bias[col .. col + 8].
#include "common.cuh"
#include "elementwise.h"

__device__ inline float gelu_tanh(float u, float* derivative) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    const float inner = k * (u + 0.044715f * u * u * u);
    const float t = tanhf(inner);
    *derivative = 0.5f * (1.f + t) + 0.5f * u * (1.f - t * t) * k * (1.f + 3.f * 0.044715f * u * u);
    return 0.5f * u * (1.f + t);
}

template <typename T>
__device__ inline void bias_gelu_forward(T* __restrict__ y, const T* __restrict__ x, const float* __restrict__ bias,
                                         uint64_t n, int d) {
    RETRO_GRID_STRIDE(g, n / 8) {
        const int col = (int)((g * 8) % d);
        float v[8];
        load8(x + g * 8, v);
        for (int e = 0; e < 8; ++e) {
            float unused;
            v[e] = gelu_tanh(v[e] + (bias ? bias[col + e] : 0.f), &unused);
        }
        store8(y + g * 8, v);
    }
}
#define GELU_FORWARD_PARAMS(T) T *__restrict__ y, const T *__restrict__ x, const float *__restrict__ bias, uint64_t n, int d
RETRO_BF16_AND_F32(, bias_gelu_forward, GELU_FORWARD_PARAMS, y, x, bias, n, d)

template <typename T>
__device__ inline void bias_gelu_backward(T* __restrict__ du, const T* __restrict__ dy, const T* __restrict__ x,
                                          const float* __restrict__ bias, uint64_t n, int d) {
    RETRO_GRID_STRIDE(g, n / 8) {
        const int col = (int)((g * 8) % d);
        float v[8], dv[8];
        load8(x + g * 8, v);
        load8(dy + g * 8, dv);
        for (int e = 0; e < 8; ++e) {
            float derivative;
            gelu_tanh(v[e] + (bias ? bias[col + e] : 0.f), &derivative);
            dv[e] *= derivative;
        }
        store8(du + g * 8, dv);
    }
}
#define GELU_BACKWARD_PARAMS(T) \
    T *__restrict__ du, const T *__restrict__ dy, const T *__restrict__ x, const float *__restrict__ bias, uint64_t n, int d
RETRO_BF16_AND_F32(, bias_gelu_backward, GELU_BACKWARD_PARAMS, du, dy, x, bias, n, d)
