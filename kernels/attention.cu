// Flash attention forward and backward with bf16 tensor cores (mma.sync.m16n8k16, f32 accumulate) for
// causal self-attention, bidirectional self-attention and cross-attention with sq != sk: the decoder's
// attention, the encoder's bidirectional attention and the encoder / CCA cross-attention, with an optional
// key mask (missing neighbours) and attention dropout (attention_masks.cuh). Head dims 64 and 128
// (template HD).
//
// Forward (attention_forward_hd*): grid (ceil(sq / 64), batch * heads), 4 warps. Each warp owns 16 query
//   rows and keeps their Q fragments in registers; the block walks key tiles of 64 (K row-major, V
//   transposed in shared memory), computes S = Q K^T with mma, applies the causal / length mask and an
//   online softmax in the exp2 domain (running row max m and sum l; the four lanes that share a row combine
//   with two shuffles), then accumulates O += P V with P re-packed from the S accumulators as the A operand
//   (the m16n8k16 C-fragment layout of two adjacent n-tiles is exactly the A-fragment layout). Never
//   materialises S or P. Saves lse = m + log2(l) per row (log2 domain) for the backward. Dropout scales
//   the probabilities after their row sum is taken, before P V (FlashAttention-2's placement).
// Backward (FlashAttention-2 maths, dz = P * (dP' - delta), dP' = dP * keep, delta = rowsum(dO * O);
//   dV uses the kept probabilities P * keep), split in two kernels
//   so that no float atomics are needed and the result is deterministic:
//   attention_backward_dkv_hd*: one block per 64 keys, walking query tiles: recompute S^T = K Q^T and
//     P^T from lse, dV += P^T dO, dP^T = V dO^T, dK += dz^T Q.
//   attention_backward_dq_hd*: one block per 64 queries, walking key tiles: recompute P, dP = dO V^T,
//     dQ += dz K.
//   The split recomputes S and dP once more than FA2's atomic dQ (about 1.4x the backward FLOPs).
// Every B operand is stored "[n][k]" in shared memory (K for Q K^T, V^T for P V, ...), so each fragment
// register is two adjacent bf16 read with one 32-bit load; rows are padded by 16 bytes (conflict-free).
#include "common.cuh"
#include "attention.h"
#include "attention_masks.cuh"
#include "tensor_core.cuh"

#define BM RETRO_ATTN_BLOCK_M
#define BN RETRO_ATTN_BLOCK_N
#define PAD RETRO_ATTN_PAD
typedef __nv_bfloat16 bf16;

// A fragment of the 16x16 tile at (row0, col0) of a row-major [m][k] shared matrix with leading dim ld.
__device__ inline void load_a(uint32_t a[4], const bf16* s, int ld, int row0, int col0) {
    const int lane = threadIdx.x & 31, r = row0 + (lane >> 2), c = col0 + 2 * (lane & 3);
    a[0] = *reinterpret_cast<const uint32_t*>(s + r * ld + c);
    a[1] = *reinterpret_cast<const uint32_t*>(s + (r + 8) * ld + c);
    a[2] = *reinterpret_cast<const uint32_t*>(s + r * ld + c + 8);
    a[3] = *reinterpret_cast<const uint32_t*>(s + (r + 8) * ld + c + 8);
}

// B fragment (16 k x 8 n) at (n0, k0) of a shared matrix stored as [n][k] with leading dim ld.
__device__ inline void load_b(uint32_t b[2], const bf16* s, int ld, int n0, int k0) {
    const int lane = threadIdx.x & 31, n = n0 + (lane >> 2), k = k0 + 2 * (lane & 3);
    b[0] = *reinterpret_cast<const uint32_t*>(s + n * ld + k);
    b[1] = *reinterpret_cast<const uint32_t*>(s + n * ld + k + 8);
}

__device__ inline uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// The A fragment (16 x 16, k = the 16 columns) made of two adjacent 16x8 accumulator tiles.
__device__ inline void a_from_c(uint32_t a[4], const float left[4], const float right[4]) {
    a[0] = pack_bf16(left[0], left[1]);
    a[1] = pack_bf16(left[2], left[3]);
    a[2] = pack_bf16(right[0], right[1]);
    a[3] = pack_bf16(right[2], right[3]);
}

// rows x HD tile from global (row stride `stride`) into shared [rows][HD + PAD]; rows >= valid are zero.
template <int HD>
__device__ inline void load_rows(bf16* dst, const bf16* src, int stride, int rows, int valid) {
    for (int i = threadIdx.x; i < rows * HD / 8; i += blockDim.x) {
        const int r = i / (HD / 8), c = (i % (HD / 8)) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < valid) v = *reinterpret_cast<const uint4*>(src + (size_t)r * stride + c);
        *reinterpret_cast<uint4*>(dst + r * (HD + PAD) + c) = v;
    }
}

// The same tile stored transposed: shared [HD][rows + PAD]. Consecutive threads take consecutive rows
// (keys), so each of the 8 scalar stores of a warp writes 32 adjacent bf16 of one transposed row: no bank
// conflicts (with the column group fastest they would all hit the same bank, 16-way at HD = 128).
template <int HD>
__device__ inline void load_rows_transposed(bf16* dst, const bf16* src, int stride, int rows, int valid) {
    for (int i = threadIdx.x; i < rows * HD / 8; i += blockDim.x) {
        const int r = i % rows, c = (i / rows) * 8;
        Bf16x8 v;
        v.raw = make_uint4(0, 0, 0, 0);
        if (r < valid) v.raw = *reinterpret_cast<const uint4*>(src + (size_t)r * stride + c);
        const bf16* e = reinterpret_cast<const bf16*>(&v.raw);
        for (int j = 0; j < 8; ++j) dst[(c + j) * (rows + PAD) + r] = e[j];
    }
}

// c1 = A1 B1^T and c2 = A2 B2^T over the head dim, for the warp's 16 rows row0.. of the [m][HD] shared
// matrices a1, a2 against all N rows of the [N][HD] shared matrices b1, b2 (both products of a backward
// tile, sharing the k loop).
template <int HD, int N>
__device__ inline void two_products(float (&c1)[N / 8][4], float (&c2)[N / 8][4], const bf16* a1, const bf16* a2,
                                    const bf16* b1, const bf16* b2, int row0) {
#pragma unroll
    for (int nt = 0; nt < N / 8; ++nt)
        for (int e = 0; e < 4; ++e) c1[nt][e] = c2[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
        uint32_t x1[4], x2[4];
        load_a(x1, a1, HD + PAD, row0, kk * 16);
        load_a(x2, a2, HD + PAD, row0, kk * 16);
#pragma unroll
        for (int nt = 0; nt < N / 8; ++nt) {
            uint32_t y1[2], y2[2];
            load_b(y1, b1, HD + PAD, nt * 8, kk * 16);
            load_b(y2, b2, HD + PAD, nt * 8, kk * 16);
            mma16816(c1[nt], x1, y1);
            mma16816(c2[nt], x2, y2);
        }
    }
}

// The block's (batch, head) pair and that head's row 0 in each input (rows follow at the operand's
// stride; the head is the column block h * HD). dout is null in the forward.
struct HeadOperands {
    int bh, b, h;
    const bf16 *q, *k, *v, *dout;
};

template <int HD>
__device__ inline HeadOperands head_operands(const AttentionParams& p) {
    const int bh = blockIdx.y, b = bh / p.heads, h = bh % p.heads;
    return {bh,
            b,
            h,
            reinterpret_cast<const bf16*>(p.q) + (size_t)b * p.sq * p.q_stride + h * HD,
            reinterpret_cast<const bf16*>(p.k) + (size_t)b * p.sk * p.k_stride + h * HD,
            reinterpret_cast<const bf16*>(p.v) + (size_t)b * p.sk * p.v_stride + h * HD,
            p.dout ? reinterpret_cast<const bf16*>(p.dout) + (size_t)b * p.sq * p.heads * HD + h * HD : nullptr};
}

// Accumulator element e of n-tile nt: its row (0..15 within the warp's tile) and column (0..7 + 8 nt).
__device__ inline int frag_row(int e) { return ((threadIdx.x & 31) >> 2) + (e >= 2 ? 8 : 0); }
__device__ inline int frag_col(int nt, int e) { return nt * 8 + 2 * (threadIdx.x & 3) + (e & 1); }

template <int HD>
__device__ inline void attention_forward(const AttentionParams& p) {
    RETRO_DYNAMIC_SHARED(smem);
    bf16* qs = reinterpret_cast<bf16*>(smem);  // [BM][HD + PAD]
    bf16* ks = qs + BM * (HD + PAD);           // [BN][HD + PAD]
    bf16* vt = ks + BN * (HD + PAD);           // [HD][BN + PAD]
    const int warp = threadIdx.x >> 5;
    const auto [bh, b, h, Q, K, V, unused_dout] = head_operands<HD>(p);
    const int q0 = blockIdx.x * BM;
    load_rows<HD>(qs, Q + (size_t)q0 * p.q_stride, p.q_stride, BM, min(BM, p.sq - q0));
    __syncthreads();
    uint32_t qa[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) load_a(qa[kk], qs, HD + PAD, warp * 16, kk * 16);
    float o[HD / 8][4];
#pragma unroll
    for (int nt = 0; nt < HD / 8; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    const int row0 = q0 + warp * 16;
    const int key_end = p.causal ? min(p.sk, q0 + BM) : p.sk;
    for (int k0 = 0; k0 < key_end; k0 += BN) {
        __syncthreads();
        load_rows<HD>(ks, K + (size_t)k0 * p.k_stride, p.k_stride, BN, min(BN, p.sk - k0));
        load_rows_transposed<HD>(vt, V + (size_t)k0 * p.v_stride, p.v_stride, BN, min(BN, p.sk - k0));
        __syncthreads();
        float s[BN / 8][4];
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt) {
                uint32_t bb[2];
                load_b(bb, ks, HD + PAD, nt * 8, kk * 16);
                mma16816(s[nt], qa[kk], bb);
            }
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = k0 + frag_col(nt, e), row = row0 + frag_row(e);
                float v = s[nt][e] * p.scale_log2;
                if (key >= p.sk || (p.causal && key > row) || !key_visible(p, b, key)) v = -INFINITY;
                s[nt][e] = v;
                mx[e >> 1] = fmaxf(mx[e >> 1], v);
            }
        float base[2], rowsum[2] = {0.f, 0.f};
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            base[r] = mx[r] == -INFINITY ? 0.f : mx[r];
            const float correction = exp2f(m[r] - base[r]);
            l[r] *= correction;
#pragma unroll
            for (int nt = 0; nt < HD / 8; ++nt) {
                o[nt][2 * r] *= correction;
                o[nt][2 * r + 1] *= correction;
            }
            m[r] = mx[r];
        }
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[nt][e] = exp2f(s[nt][e] - base[e >> 1]);
                rowsum[e >> 1] += s[nt][e];
            }
        l[0] += rowsum[0];
        l[1] += rowsum[1];
        if (p.dropout_scale != 0.f) {
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = k0 + frag_col(nt, e), row = row0 + frag_row(e);
                    if (key < p.sk && row < p.sq) s[nt][e] *= keep_factor(p, bh, row, key);
                }
        }
#pragma unroll
        for (int kt = 0; kt < BN / 16; ++kt) {
            uint32_t pa[4];
            a_from_c(pa, s[2 * kt], s[2 * kt + 1]);
#pragma unroll
            for (int nt = 0; nt < HD / 8; ++nt) {
                uint32_t bb[2];
                load_b(bb, vt, BN + PAD, nt * 8, kt * 16);
                mma16816(o[nt], pa, bb);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    bf16* O = reinterpret_cast<bf16*>(p.o) + (size_t)b * p.sq * p.heads * HD + h * HD;
    float* lse = reinterpret_cast<float*>(p.lse) + (size_t)bh * p.sq;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + frag_row(2 * r);
        if (row >= p.sq) continue;
        const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
#pragma unroll
        for (int nt = 0; nt < HD / 8; ++nt)
            *reinterpret_cast<uint32_t*>(O + (size_t)row * p.heads * HD + frag_col(nt, 0)) =
                pack_bf16(o[nt][2 * r] * inv, o[nt][2 * r + 1] * inv);
        if ((threadIdx.x & 3) == 0) lse[row] = m[r] + log2f(l[r]);
    }
}

extern "C" __global__ void __launch_bounds__(RETRO_ATTN_THREADS) attention_forward_hd64(AttentionParams p) {
    attention_forward<64>(p);
}
extern "C" __global__ void __launch_bounds__(RETRO_ATTN_THREADS) attention_forward_hd128(AttentionParams p) {
    attention_forward<128>(p);
}

// delta[bh][i] = sum_d dO[b, i, h, d] * O[b, i, h, d]; one warp per (b, i, h) row.
extern "C" __global__ void attention_backward_delta(AttentionParams p) {
    const int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= (int64_t)p.batch * p.sq * p.heads) return;
    const int h = (int)(row % p.heads);
    const int64_t bi = row / p.heads;  // b * sq + i
    const bf16* O = reinterpret_cast<const bf16*>(p.o) + row * p.head_dim;
    const bf16* dO = reinterpret_cast<const bf16*>(p.dout) + row * p.head_dim;
    float acc = 0.f;
    for (int d = lane; d < p.head_dim; d += 32) acc += __bfloat162float(O[d]) * __bfloat162float(dO[d]);
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) {
        const int64_t b = bi / p.sq, i = bi % p.sq;
        reinterpret_cast<float*>(p.delta)[(b * p.heads + h) * p.sq + i] = acc;
    }
}

template <int HD>
__device__ inline void attention_backward_dkv(const AttentionParams& p) {
    RETRO_DYNAMIC_SHARED(smem);
    bf16* ks = reinterpret_cast<bf16*>(smem);  // [BN][HD + PAD]
    bf16* vs = ks + BN * (HD + PAD);           // [BN][HD + PAD]
    bf16* qs = vs + BN * (HD + PAD);           // [BM][HD + PAD]
    bf16* dos = qs + BM * (HD + PAD);          // [BM][HD + PAD]
    bf16* qt = dos + BM * (HD + PAD);          // [HD][BM + PAD]
    bf16* dot = qt + HD * (BM + PAD);          // [HD][BM + PAD]
    float* lse_s = reinterpret_cast<float*>(dot + HD * (BM + PAD));  // [BM]
    float* delta_s = lse_s + BM;                                       // [BM]
    const int warp = threadIdx.x >> 5;
    const auto [bh, b, h, Q, K, V, dO] = head_operands<HD>(p);
    const int k0 = blockIdx.x * BN;
    const float* lse = reinterpret_cast<const float*>(p.lse) + (size_t)bh * p.sq;
    const float* delta = reinterpret_cast<const float*>(p.delta) + (size_t)bh * p.sq;
    load_rows<HD>(ks, K + (size_t)k0 * p.k_stride, p.k_stride, BN, min(BN, p.sk - k0));
    load_rows<HD>(vs, V + (size_t)k0 * p.v_stride, p.v_stride, BN, min(BN, p.sk - k0));
    float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
    for (int nt = 0; nt < HD / 8; ++nt)
        for (int e = 0; e < 4; ++e) dk[nt][e] = dv[nt][e] = 0.f;
    const int key_row0 = k0 + warp * 16;
    const int q_start = p.causal ? (k0 / BM) * BM : 0;
    for (int q0 = q_start; q0 < p.sq; q0 += BM) {
        const int valid = min(BM, p.sq - q0);
        __syncthreads();
        load_rows<HD>(qs, Q + (size_t)q0 * p.q_stride, p.q_stride, BM, valid);
        load_rows_transposed<HD>(qt, Q + (size_t)q0 * p.q_stride, p.q_stride, BM, valid);
        load_rows<HD>(dos, dO + (size_t)q0 * p.heads * HD, p.heads * HD, BM, valid);
        load_rows_transposed<HD>(dot, dO + (size_t)q0 * p.heads * HD, p.heads * HD, BM, valid);
        for (int i = threadIdx.x; i < BM; i += blockDim.x) {
            lse_s[i] = i < valid ? lse[q0 + i] : 0.f;
            delta_s[i] = i < valid ? delta[q0 + i] : 0.f;
        }
        __syncthreads();
        float st[BM / 8][4], dpt[BM / 8][4];
        two_products<HD, BM>(st, dpt, ks, vs, qs, dos, warp * 16);  // S^T = K Q^T, dP^T = V dO^T
#pragma unroll
        for (int nt = 0; nt < BM / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = key_row0 + frag_row(e), qi = frag_col(nt, e), q = q0 + qi;
                const bool masked = q >= p.sq || key >= p.sk || (p.causal && q < key) || !key_visible(p, b, key);
                const float prob = masked ? 0.f : exp2f(st[nt][e] * p.scale_log2 - lse_s[qi]);
                const float keep = masked ? 0.f : keep_factor(p, bh, q, key);
                st[nt][e] = prob * keep;                                 // P' (dV's operand)
                dpt[nt][e] = prob * (dpt[nt][e] * keep - delta_s[qi]);  // dz^T
            }
#pragma unroll
        for (int kt = 0; kt < BM / 16; ++kt) {
            uint32_t pa[4], da[4];
            a_from_c(pa, st[2 * kt], st[2 * kt + 1]);
            a_from_c(da, dpt[2 * kt], dpt[2 * kt + 1]);
#pragma unroll
            for (int nt = 0; nt < HD / 8; ++nt) {
                uint32_t bdo[2], bq[2];
                load_b(bdo, dot, BM + PAD, nt * 8, kt * 16);
                load_b(bq, qt, BM + PAD, nt * 8, kt * 16);
                mma16816(dv[nt], pa, bdo);  // dV += P'^T dO
                mma16816(dk[nt], da, bq);   // dK += dz^T Q
            }
        }
    }
    bf16* dK = reinterpret_cast<bf16*>(p.dk) + (size_t)b * p.sk * p.k_stride + h * HD;
    bf16* dV = reinterpret_cast<bf16*>(p.dv) + (size_t)b * p.sk * p.v_stride + h * HD;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int key = key_row0 + frag_row(2 * r);
        if (key >= p.sk) continue;
#pragma unroll
        for (int nt = 0; nt < HD / 8; ++nt) {
            *reinterpret_cast<uint32_t*>(dK + (size_t)key * p.k_stride + frag_col(nt, 0)) =
                pack_bf16(dk[nt][2 * r] * p.scale, dk[nt][2 * r + 1] * p.scale);
            *reinterpret_cast<uint32_t*>(dV + (size_t)key * p.v_stride + frag_col(nt, 0)) =
                pack_bf16(dv[nt][2 * r], dv[nt][2 * r + 1]);
        }
    }
}

template <int HD>
__device__ inline void attention_backward_dq(const AttentionParams& p) {
    RETRO_DYNAMIC_SHARED(smem);
    bf16* qs = reinterpret_cast<bf16*>(smem);  // [BM][HD + PAD]
    bf16* dos = qs + BM * (HD + PAD);          // [BM][HD + PAD]
    bf16* ks = dos + BM * (HD + PAD);          // [BN][HD + PAD]
    bf16* vs = ks + BN * (HD + PAD);           // [BN][HD + PAD]
    bf16* kt_s = vs + BN * (HD + PAD);         // [HD][BN + PAD]
    const int warp = threadIdx.x >> 5;
    const auto [bh, b, h, Q, K, V, dO] = head_operands<HD>(p);
    const int q0 = blockIdx.x * BM;
    const int valid = min(BM, p.sq - q0);
    load_rows<HD>(qs, Q + (size_t)q0 * p.q_stride, p.q_stride, BM, valid);
    load_rows<HD>(dos, dO + (size_t)q0 * p.heads * HD, p.heads * HD, BM, valid);
    const int row0 = q0 + warp * 16;
    float lse_r[2], delta_r[2];
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + frag_row(2 * r);
        lse_r[r] = row < p.sq ? reinterpret_cast<const float*>(p.lse)[(size_t)bh * p.sq + row] : 0.f;
        delta_r[r] = row < p.sq ? reinterpret_cast<const float*>(p.delta)[(size_t)bh * p.sq + row] : 0.f;
    }
    float dq[HD / 8][4];
#pragma unroll
    for (int nt = 0; nt < HD / 8; ++nt)
        for (int e = 0; e < 4; ++e) dq[nt][e] = 0.f;
    const int key_end = p.causal ? min(p.sk, q0 + BM) : p.sk;
    for (int k0 = 0; k0 < key_end; k0 += BN) {
        const int kvalid = min(BN, p.sk - k0);
        __syncthreads();
        load_rows<HD>(ks, K + (size_t)k0 * p.k_stride, p.k_stride, BN, kvalid);
        load_rows<HD>(vs, V + (size_t)k0 * p.v_stride, p.v_stride, BN, kvalid);
        load_rows_transposed<HD>(kt_s, K + (size_t)k0 * p.k_stride, p.k_stride, BN, kvalid);
        __syncthreads();
        float s[BN / 8][4], dp[BN / 8][4];
        two_products<HD, BN>(s, dp, qs, dos, ks, vs, warp * 16);  // S = Q K^T, dP = dO V^T
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = k0 + frag_col(nt, e), row = row0 + frag_row(e);
                const bool masked = row >= p.sq || key >= p.sk || (p.causal && key > row) || !key_visible(p, b, key);
                const float prob = masked ? 0.f : exp2f(s[nt][e] * p.scale_log2 - lse_r[e >> 1]);
                const float keep = masked ? 0.f : keep_factor(p, bh, row, key);
                dp[nt][e] = prob * (dp[nt][e] * keep - delta_r[e >> 1]);  // dz
            }
#pragma unroll
        for (int kt = 0; kt < BN / 16; ++kt) {
            uint32_t za[4];
            a_from_c(za, dp[2 * kt], dp[2 * kt + 1]);
#pragma unroll
            for (int nt = 0; nt < HD / 8; ++nt) {
                uint32_t bk[2];
                load_b(bk, kt_s, BN + PAD, nt * 8, kt * 16);
                mma16816(dq[nt], za, bk);  // dQ += dz K
            }
        }
    }
    bf16* dQ = reinterpret_cast<bf16*>(p.dq) + (size_t)b * p.sq * p.q_stride + h * HD;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + frag_row(2 * r);
        if (row >= p.sq) continue;
#pragma unroll
        for (int nt = 0; nt < HD / 8; ++nt)
            *reinterpret_cast<uint32_t*>(dQ + (size_t)row * p.q_stride + frag_col(nt, 0)) =
                pack_bf16(dq[nt][2 * r] * p.scale, dq[nt][2 * r + 1] * p.scale);
    }
}

extern "C" __global__ void __launch_bounds__(RETRO_ATTN_THREADS) attention_backward_dkv_hd64(AttentionParams p) {
    attention_backward_dkv<64>(p);
}
extern "C" __global__ void __launch_bounds__(RETRO_ATTN_THREADS) attention_backward_dkv_hd128(AttentionParams p) {
    attention_backward_dkv<128>(p);
}
extern "C" __global__ void __launch_bounds__(RETRO_ATTN_THREADS) attention_backward_dq_hd64(AttentionParams p) {
    attention_backward_dq<64>(p);
}
extern "C" __global__ void __launch_bounds__(RETRO_ATTN_THREADS) attention_backward_dq_hd128(AttentionParams p) {
    attention_backward_dq<128>(p);
}
