// Fused softmax cross-entropy over bf16 (or f32) logits [rows, classes], gradient written in place:
//   loss[r]      = logsumexp(z_r) - z_r[target_r]                    (0 for target -1: ignored row)
//   dlogits[r]j  = (softmax(z_r)_j - [j == target_r]) * grad_scale   (0 for an ignored row)
// grad_scale is d(total loss)/d(loss[r]), e.g. 1 / (rows counted in the mean).
// Probabilities are never stored: pass 1 keeps a per-thread online (max, sum of exp) over its 8-element
// groups, combined by two block reductions; pass 2 re-reads the row (100 KB for a 50K vocabulary: it is
// still in L2) and overwrites it with the gradient. HBM traffic is one read and one write per logit.
// Tiling: one block of RETRO_CE_BLOCK threads per row, 16-byte vector loads (classes % 8 == 0).
#include "common.cuh"
#include "cross_entropy.h"

template <typename T>
__device__ inline void softmax_cross_entropy(T* __restrict__ logits, float* __restrict__ losses,
                                             const int32_t* __restrict__ targets, int classes, float grad_scale) {
    __shared__ float scratch[RETRO_CE_BLOCK / 32];
    const size_t row = blockIdx.x;
    T* z = logits + row * classes;
    const int target = targets[row];
    const int groups = classes / 8;
    float m = -INFINITY, s = 0.f;
    for (int g = threadIdx.x; g < groups; g += RETRO_CE_BLOCK) {
        float v[8];
        load8(z + 8 * g, v);
        float local = v[0];
        for (int e = 1; e < 8; ++e) local = fmaxf(local, v[e]);
        if (local > m) {
            s *= __expf(m - local);
            m = local;
        }
        for (int e = 0; e < 8; ++e) s += __expf(v[e] - m);
    }
    const float max = block_allreduce_max(m, scratch);
    const float sum = block_allreduce_sum(m == -INFINITY ? 0.f : s * __expf(m - max), scratch);
    const float inv = 1.f / sum;
    if (threadIdx.x == 0) losses[row] = target < 0 ? 0.f : __logf(sum) + max - to_float(z[target]);
    // Every thread has read z[target] (thread 0 above) before anyone overwrites it.
    __syncthreads();
    const float scale = target < 0 ? 0.f : grad_scale;
    for (int g = threadIdx.x; g < groups; g += RETRO_CE_BLOCK) {
        float v[8];
        load8(z + 8 * g, v);
        for (int e = 0; e < 8; ++e) v[e] = (__expf(v[e] - max) * inv - (8 * g + e == target ? 1.f : 0.f)) * scale;
        store8(z + 8 * g, v);
    }
}
#define CE_PARAMS(T) T *__restrict__ logits, float *__restrict__ losses, const int32_t *__restrict__ targets, int classes, float grad_scale
RETRO_BF16_AND_F32(__launch_bounds__(RETRO_CE_BLOCK), softmax_cross_entropy, CE_PARAMS, logits, losses, targets, classes,
                   grad_scale)
