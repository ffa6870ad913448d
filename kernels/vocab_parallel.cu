// Megatron's vocab-parallel cross-entropy over this rank's slice of the logits: z [rows, classes] holds
// this rank's classes of each row's vocabulary (split over the tensor-parallel ranks), `targets[r]` the
// label's index in the slice, or -1 where another rank holds it. Between the kernels the host's NCCL
// all-reduces make the row statistics global, so the whole row never exists on one rank:
//   vocab_ce_row_max_*:   max[r] = max_j z[r, j]                                  (then: max over the ranks)
//   vocab_ce_row_sums_*:  sums[r] = sum_j exp(z[r, j] - max[r]); sums[rows + r] = z[r, target[r]], or 0
//                         where the target is elsewhere                           (then: sum over the ranks)
//   vocab_ce_loss_grad_*: lse = max + log(sums[r]); loss[r] = lse - sums[rows + r] (the same on every
//                         rank); dz[r, j] = (exp(z[r, j] - lse) - [j == target[r]]) * grad_scale, into `dz`.
// As kernels/cross_entropy.cu, the gradient is made in the forward and the op's backward only scales it.
// Tiling: one block of RETRO_CE_BLOCK threads per row, 16-byte vector loads (classes % 8 == 0); three
// reads of the slice and one write, all of a row in L2 after the first.
#include "common.cuh"
#include "cross_entropy.h"

template <typename T>
__device__ inline void vocab_ce_row_max(const T* __restrict__ logits, int classes, float* __restrict__ max) {
    __shared__ float scratch[RETRO_CE_BLOCK / 32];
    const T* z = logits + (size_t)blockIdx.x * classes;
    float m = -INFINITY;
    for (int g = threadIdx.x; g < classes / 8; g += RETRO_CE_BLOCK) {
        float v[8];
        load8(z + 8 * g, v);
        for (int e = 0; e < 8; ++e) m = fmaxf(m, v[e]);
    }
    m = block_allreduce_max(m, scratch);
    if (threadIdx.x == 0) max[blockIdx.x] = m;
}
#define ROW_MAX_PARAMS(T) const T *__restrict__ logits, int classes, float *__restrict__ max
RETRO_BF16_AND_F32(__launch_bounds__(RETRO_CE_BLOCK), vocab_ce_row_max, ROW_MAX_PARAMS, logits, classes, max)

template <typename T>
__device__ inline void vocab_ce_row_sums(const T* __restrict__ logits, int classes, const float* __restrict__ max,
                                         const int32_t* __restrict__ targets, float* __restrict__ sums) {
    __shared__ float scratch[RETRO_CE_BLOCK / 32];
    const size_t row = blockIdx.x;
    const T* z = logits + row * classes;
    const float m = max[row];
    float s = 0.f;
    for (int g = threadIdx.x; g < classes / 8; g += RETRO_CE_BLOCK) {
        float v[8];
        load8(z + 8 * g, v);
        for (int e = 0; e < 8; ++e) s += __expf(v[e] - m);
    }
    s = block_allreduce_sum(s, scratch);
    if (threadIdx.x == 0) {
        const int target = targets[row];
        sums[row] = s;
        sums[gridDim.x + row] = target < 0 ? 0.f : to_float(z[target]);
    }
}
#define ROW_SUMS_PARAMS(T) \
    const T *__restrict__ logits, int classes, const float *__restrict__ max, const int32_t *__restrict__ targets, \
        float *__restrict__ sums
RETRO_BF16_AND_F32(__launch_bounds__(RETRO_CE_BLOCK), vocab_ce_row_sums, ROW_SUMS_PARAMS, logits, classes, max, targets,
                   sums)

template <typename T>
__device__ inline void vocab_ce_loss_grad(const T* __restrict__ logits, int classes, const float* __restrict__ max,
                                          const float* __restrict__ sums, const int32_t* __restrict__ targets,
                                          float grad_scale, float* __restrict__ losses, T* __restrict__ dz) {
    const size_t row = blockIdx.x;
    const T* z = logits + row * classes;
    T* d = dz + row * classes;
    const int target = targets[row];
    const float lse = max[row] + __logf(sums[row]);
    if (threadIdx.x == 0) losses[row] = lse - sums[gridDim.x + row];
    for (int g = threadIdx.x; g < classes / 8; g += RETRO_CE_BLOCK) {
        float v[8];
        load8(z + 8 * g, v);
        for (int e = 0; e < 8; ++e) v[e] = (__expf(v[e] - lse) - (8 * g + e == target ? 1.f : 0.f)) * grad_scale;
        store8(d + 8 * g, v);
    }
}
#define LOSS_GRAD_PARAMS(T) \
    const T *__restrict__ logits, int classes, const float *__restrict__ max, const float *__restrict__ sums, \
        const int32_t *__restrict__ targets, float grad_scale, float *__restrict__ losses, T *__restrict__ dz
RETRO_BF16_AND_F32(__launch_bounds__(RETRO_CE_BLOCK), vocab_ce_loss_grad, LOSS_GRAD_PARAMS, logits, classes, max, sums,
                   targets, grad_scale, losses, dz)
