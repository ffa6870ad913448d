// Exact f32 attention for any head dim up to 128: the reference-precision path that lets the whole
// training step run on the GPU in f32 and be compared with the CPU to ~1e-6 (tests, the golden check).
// Same AttentionParams, masks and dropout (attention_masks.cuh), lse convention (log2 domain) and gradient
// layout as attention.cu; no
// tensor cores and no tiling: one warp per query row (forward, dQ) or per key row (dK, dV). Lane l holds
// dimensions l, l + 32, l + 64, l + 96; each score is a warp-shuffle dot product. Deterministic (no
// atomics), slow, and meant for small problems.
#include "common.cuh"
#include "attention.h"
#include "attention_masks.cuh"

#define MAX_PER_LANE 4  // head dims up to 128

struct Row {
    float v[MAX_PER_LANE];
};

__device__ inline Row load_row(const float* p, int hd) {
    Row r;
    const int lane = threadIdx.x & 31;
    for (int j = 0; j < MAX_PER_LANE; ++j) r.v[j] = lane + 32 * j < hd ? p[lane + 32 * j] : 0.f;
    return r;
}

__device__ inline float dot(const Row& a, const Row& b) {
    float s = 0.f;
    for (int j = 0; j < MAX_PER_LANE; ++j) s += a.v[j] * b.v[j];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}

__device__ inline void store_row(float* p, const Row& r, int hd, float scale) {
    const int lane = threadIdx.x & 31;
    for (int j = 0; j < MAX_PER_LANE; ++j)
        if (lane + 32 * j < hd) p[lane + 32 * j] = r.v[j] * scale;
}

// Global warp index -> (b, h, row) for `rows` rows per (b, h); false past the end.
__device__ inline bool warp_row(const AttentionParams& p, int rows, int* b, int* h, int* i) {
    const int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (w >= (int64_t)p.batch * p.heads * rows) return false;
    *i = (int)(w % rows);
    *h = (int)((w / rows) % p.heads);
    *b = (int)(w / ((int64_t)rows * p.heads));
    return true;
}

#define Q(b, i) (reinterpret_cast<const float*>(p.q) + ((size_t)(b) * p.sq + (i)) * p.q_stride + h * hd)
#define K(b, j) (reinterpret_cast<const float*>(p.k) + ((size_t)(b) * p.sk + (j)) * p.k_stride + h * hd)
#define V(b, j) (reinterpret_cast<const float*>(p.v) + ((size_t)(b) * p.sk + (j)) * p.v_stride + h * hd)
#define O(b, i) (reinterpret_cast<const float*>(p.o) + ((size_t)(b) * p.sq + (i)) * p.heads * hd + h * hd)
#define DO(b, i) (reinterpret_cast<const float*>(p.dout) + ((size_t)(b) * p.sq + (i)) * p.heads * hd + h * hd)
#define LSE(b, i) reinterpret_cast<float*>(p.lse)[((size_t)(b) * p.heads + h) * p.sq + (i)]
#define DELTA(b, i) reinterpret_cast<float*>(p.delta)[((size_t)(b) * p.heads + h) * p.sq + (i)]

extern "C" __global__ void attention_exact_forward(AttentionParams p) {
    int b, h, i;
    if (!warp_row(p, p.sq, &b, &h, &i)) return;
    const int hd = p.head_dim;
    const Row q = load_row(Q(b, i), hd);
    Row o = {};
    float m = -INFINITY, l = 0.f;
    const int end = p.causal ? i + 1 : p.sk;
    const int bh = b * p.heads + h;
    for (int j = 0; j < end; ++j) {
        if (!key_visible(p, b, j)) continue;
        const float s = dot(q, load_row(K(b, j), hd)) * p.scale_log2;
        const float m_new = fmaxf(m, s);
        const float correction = exp2f(m - m_new), e = exp2f(s - m_new);
        const float kept = e * keep_factor(p, bh, i, j);  // the row sum l takes e, P V the kept value
        const Row v = load_row(V(b, j), hd);
        for (int d = 0; d < MAX_PER_LANE; ++d) o.v[d] = o.v[d] * correction + kept * v.v[d];
        l = l * correction + e;
        m = m_new;
    }
    float* out = reinterpret_cast<float*>(p.o) + ((size_t)b * p.sq + i) * p.heads * hd + h * hd;
    store_row(out, o, hd, l > 0.f ? 1.f / l : 0.f);
    if ((threadIdx.x & 31) == 0) LSE(b, i) = m + log2f(l);
}

extern "C" __global__ void attention_exact_delta(AttentionParams p) {
    int b, h, i;
    if (!warp_row(p, p.sq, &b, &h, &i)) return;
    const int hd = p.head_dim;
    const float delta = dot(load_row(O(b, i), hd), load_row(DO(b, i), hd));
    if ((threadIdx.x & 31) == 0) DELTA(b, i) = delta;
}

extern "C" __global__ void attention_exact_backward_dq(AttentionParams p) {
    int b, h, i;
    if (!warp_row(p, p.sq, &b, &h, &i)) return;
    const int hd = p.head_dim;
    const Row q = load_row(Q(b, i), hd), dout = load_row(DO(b, i), hd);
    const float lse = LSE(b, i), delta = DELTA(b, i);
    Row dq = {};
    const int end = p.causal ? i + 1 : p.sk;
    const int bh = b * p.heads + h;
    for (int j = 0; j < end; ++j) {
        if (!key_visible(p, b, j)) continue;
        const Row k = load_row(K(b, j), hd);
        const float prob = exp2f(dot(q, k) * p.scale_log2 - lse);
        const float dz = prob * (dot(dout, load_row(V(b, j), hd)) * keep_factor(p, bh, i, j) - delta);
        for (int d = 0; d < MAX_PER_LANE; ++d) dq.v[d] += dz * k.v[d];
    }
    store_row(reinterpret_cast<float*>(p.dq) + ((size_t)b * p.sq + i) * p.q_stride + h * hd, dq, hd, p.scale);
}

extern "C" __global__ void attention_exact_backward_dkv(AttentionParams p) {
    int b, h, j;
    if (!warp_row(p, p.sk, &b, &h, &j)) return;
    const int hd = p.head_dim;
    const Row k = load_row(K(b, j), hd), v = load_row(V(b, j), hd);
    Row dk = {}, dv = {};
    const int bh = b * p.heads + h;
    // A hidden key gets no probability from any query: zero gradients.
    for (int i = p.causal ? j : 0; i < p.sq && key_visible(p, b, j); ++i) {
        const Row q = load_row(Q(b, i), hd), dout = load_row(DO(b, i), hd);
        const float prob = exp2f(dot(q, k) * p.scale_log2 - LSE(b, i));
        const float keep = keep_factor(p, bh, i, j);
        const float dz = prob * (dot(dout, v) * keep - DELTA(b, i));
        for (int d = 0; d < MAX_PER_LANE; ++d) {
            dv.v[d] += prob * keep * dout.v[d];
            dk.v[d] += dz * q.v[d];
        }
    }
    store_row(reinterpret_cast<float*>(p.dk) + ((size_t)b * p.sk + j) * p.k_stride + h * hd, dk, hd, p.scale);
    store_row(reinterpret_cast<float*>(p.dv) + ((size_t)b * p.sk + j) * p.v_stride + h * hd, dv, hd, 1.f);
}
