// Token + learned position embedding, bf16 (or f32) tables and activations, f32 gradients.
//   forward: out[t] = word[tokens[t]] + position[t % period]   (period = sequence length for the decoder,
//            r for neighbour chunks, whose positions restart at 0 per chunk: Megatron's RETRO)
//   rows:    out[t] = table[tokens[t]], or zeros where tokens[t] is -1: one table alone (the positions
//            of a vocab-parallel model), and a vocab-parallel rank's part of the words (-1: the id is
//            another rank's); its backward is the word backward over the ids that are not -1.
//   word backward: dword[v] += sum of dout[t] over the tokens t with tokens[t] == v.
//   position backward: dposition[p] += sum of dout[t] over t with t % period == p.
//
// Deterministic word backward without float atomics: the host (the data loader, which has the tokens
// anyway) groups positions by token id into CSR form: `unique` ids, `starts` offsets into `order` (token
// positions sorted by id, ascending positions within an id). One block per unique id adds its rows in that
// fixed order and owns row `unique[u]` of dword, so no two blocks write the same row.
// Tiling: threads over 8-element column groups (16-byte loads); memory-bound throughout.
#include "common.cuh"
#include "elementwise.h"

template <typename T>
__device__ inline void embedding_forward(T* __restrict__ out, const int32_t* __restrict__ tokens,
                                         const T* __restrict__ word, const T* __restrict__ position, uint64_t count,
                                         int d, int period) {
    const uint64_t groups = (uint64_t)d / 8;
    RETRO_GRID_STRIDE(i, count * groups) {
        const uint64_t t = i / groups;
        const int c = (int)(i % groups) * 8;
        float a[8], b[8];
        load8(word + (size_t)tokens[t] * d + c, a);
        load8(position + (size_t)(t % period) * d + c, b);
        for (int e = 0; e < 8; ++e) a[e] += b[e];
        store8(out + t * d + c, a);
    }
}
#define EMBEDDING_FORWARD_PARAMS(T)                                                                           \
    T *__restrict__ out, const int32_t *__restrict__ tokens, const T *__restrict__ word,                      \
        const T *__restrict__ position, uint64_t count, int d, int period
RETRO_BF16_AND_F32(, embedding_forward, EMBEDDING_FORWARD_PARAMS, out, tokens, word, position, count, d, period)

template <typename T>
__device__ inline void embedding_rows(T* __restrict__ out, const int32_t* __restrict__ tokens,
                                      const T* __restrict__ table, uint64_t count, int d) {
    const uint64_t groups = (uint64_t)d / 8;
    RETRO_GRID_STRIDE(i, count * groups) {
        const uint64_t t = i / groups;
        const int c = (int)(i % groups) * 8;
        float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (tokens[t] >= 0) load8(table + (size_t)tokens[t] * d + c, v);
        store8(out + t * d + c, v);
    }
}
#define EMBEDDING_ROWS_PARAMS(T) \
    T *__restrict__ out, const int32_t *__restrict__ tokens, const T *__restrict__ table, uint64_t count, int d
RETRO_BF16_AND_F32(, embedding_rows, EMBEDDING_ROWS_PARAMS, out, tokens, table, count, d)

template <typename T>
__device__ inline void embedding_word_backward(float* __restrict__ dword, const T* __restrict__ dout,
                                               const int32_t* __restrict__ unique, const int32_t* __restrict__ starts,
                                               const int32_t* __restrict__ order, int d) {
    const int u = blockIdx.x;
    const int begin = starts[u], end = starts[u + 1];
    float* row = dword + (size_t)unique[u] * d;
    for (int c = threadIdx.x * 8; c < d; c += blockDim.x * 8) {
        float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        for (int j = begin; j < end; ++j) {
            float v[8];
            load8(dout + (size_t)order[j] * d + c, v);
            for (int e = 0; e < 8; ++e) acc[e] += v[e];
        }
        for (int e = 0; e < 8; ++e) row[c + e] += acc[e];
    }
}
#define WORD_BACKWARD_PARAMS(T)                                                                               \
    float *__restrict__ dword, const T *__restrict__ dout, const int32_t *__restrict__ unique,                 \
        const int32_t *__restrict__ starts, const int32_t *__restrict__ order, int d
RETRO_BF16_AND_F32(, embedding_word_backward, WORD_BACKWARD_PARAMS, dword, dout, unique, starts, order, d)

template <typename T>
__device__ inline void embedding_position_backward(float* __restrict__ dposition, const T* __restrict__ dout,
                                                   uint64_t count, int d, int period) {
    const uint64_t groups = (uint64_t)d / 8;
    const uint64_t rows = min((uint64_t)period, count);
    RETRO_GRID_STRIDE(i, rows * groups) {
        const uint64_t p = i / groups;
        const int c = (int)(i % groups) * 8;
        float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        for (uint64_t t = p; t < count; t += period) {
            float v[8];
            load8(dout + t * d + c, v);
            for (int e = 0; e < 8; ++e) acc[e] += v[e];
        }
        for (int e = 0; e < 8; ++e) dposition[p * d + c + e] += acc[e];
    }
}
#define POSITION_BACKWARD_PARAMS(T) float *__restrict__ dposition, const T *__restrict__ dout, uint64_t count, int d, int period
RETRO_BF16_AND_F32(, embedding_position_backward, POSITION_BACKWARD_PARAMS, dposition, dout, count, d, period)
