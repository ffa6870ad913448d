// kernels/attention.cu (bf16 flash attention, tensor cores) and kernels/attention_exact.cu (f32) against
// softmax attention in double: forward (o, lse) and backward (dq, dk, dv), launched with the grids and
// shared memory of src/backend/cuda/attention.rs. The cases cover what the model runs: causal
// self-attention on a fused QKV buffer (strides 3w), bidirectional and cross-attention on a fused KV
// buffer (strides 2w), partial tiles, a key mask with a batch whose keys are all hidden (missing
// neighbours), and attention dropout, also on a tensor-parallel rank's slice of the heads.
#include "harness.h"
#include "attention.h"

#include <type_traits>

extern "C" {
void attention_forward_hd64(AttentionParams p);
void attention_forward_hd128(AttentionParams p);
void attention_backward_delta(AttentionParams p);
void attention_backward_dkv_hd64(AttentionParams p);
void attention_backward_dkv_hd128(AttentionParams p);
void attention_backward_dq_hd64(AttentionParams p);
void attention_backward_dq_hd128(AttentionParams p);
void attention_exact_forward(AttentionParams p);
void attention_exact_delta(AttentionParams p);
void attention_exact_backward_dq(AttentionParams p);
void attention_exact_backward_dkv(AttentionParams p);
}

namespace {

struct Case {
    const char* name;
    int batch, heads, sq, sk, hd;
    bool causal;
    bool fused_qkv;  // q, k, v are three views of one [rows, 3w] buffer; else q [rows, w] and kv [rows, 2w]
    bool key_mask;   // batch 0: every third key hidden; batch 1: every key hidden
    double dropout;
    int first_head, all_heads;  // dropout over heads first_head.. of a layer of all_heads (0: unsplit)
    bool quick;                 // also run in the ThreadSanitizer build (RETRO_EMULATION_QUICK=1)
};

// The dropout factor of probability (i, j) of pair (b, h): src/philox.rs::keep_mask's element i * sk + j
// of stream b * all_heads + first_head + h (b * heads + h unsplit).
double keep(const Case& c, uint64_t seed, int b, int h, int i, int j) {
    if (c.dropout == 0.0) return 1.0;
    const uint64_t stream = c.all_heads ? (uint64_t)b * c.all_heads + c.first_head + h : (uint64_t)b * c.heads + h;
    const uint64_t e = (uint64_t)i * c.sk + j;
    uint32_t w[4];
    philox_reference(w, seed, stream, e / 4);
    const uint32_t threshold = (uint32_t)llround(c.dropout * 4294967296.0);
    return w[e % 4] >= threshold ? 1.0 / (1.0 - c.dropout) : 0.0;
}

bool visible(const Case& c, int b, int j) { return !c.key_mask || (b == 0 ? j % 3 != 1 : false); }

template <typename T>
void run(const Case& c) {
    constexpr bool flash = std::is_same<T, bf16>::value;
    const int w = c.heads * c.hd, bh = c.batch * c.heads;
    const size_t nq = (size_t)c.batch * c.sq, nk = (size_t)c.batch * c.sk;
    const uint64_t seed = 0x5eed0000abcdull;
    Rng rng(c.sq * 131 + c.sk * 7 + c.hd);
    // Inputs and, with the same layout, their gradients.
    const int qs = c.fused_qkv ? 3 * w : w, kvs = c.fused_qkv ? 3 * w : 2 * w;
    Buf<T> qbuf(c.fused_qkv ? nq * 3 * w : nq * w), kvbuf(c.fused_qkv ? 0 : nk * 2 * w);
    Buf<T> dqbuf(qbuf.n), dkvbuf(kvbuf.n);
    rng.fill(qbuf, -1.0, 1.0);
    rng.fill(kvbuf, -1.0, 1.0);
    T* q = qbuf.p;
    T* k = c.fused_qkv ? qbuf.p + w : kvbuf.p;
    T* v = c.fused_qkv ? qbuf.p + 2 * w : kvbuf.p + w;
    T* dq = dqbuf.p;
    T* dk = c.fused_qkv ? dqbuf.p + w : dkvbuf.p;
    T* dv = c.fused_qkv ? dqbuf.p + 2 * w : dkvbuf.p + w;
    Buf<T> o(nq * w), dout(nq * w);
    Buf<float> lse((size_t)bh * c.sq), delta((size_t)bh * c.sq);
    rng.fill(dout, -1.0, 1.0);
    Buf<uint8_t> mask(c.key_mask ? nk : 0);
    for (int b = 0; b < (c.key_mask ? c.batch : 0); ++b)
        for (int j = 0; j < c.sk; ++j) mask[(size_t)b * c.sk + j] = visible(c, b, j);

    AttentionParams p{};
    p.q = (uint64_t)(uintptr_t)q, p.k = (uint64_t)(uintptr_t)k, p.v = (uint64_t)(uintptr_t)v;
    p.o = o.addr(), p.lse = lse.addr(), p.dout = dout.addr(), p.delta = delta.addr();
    p.dq = (uint64_t)(uintptr_t)dq, p.dk = (uint64_t)(uintptr_t)dk, p.dv = (uint64_t)(uintptr_t)dv;
    p.key_mask = c.key_mask ? mask.addr() : 0;
    if (c.dropout > 0) {
        p.dropout_seed = seed;
        p.dropout_threshold = (uint32_t)llround(c.dropout * 4294967296.0);
        p.dropout_scale = (float)(1.0 / (1.0 - c.dropout));
        p.dropout_first_head = c.first_head, p.dropout_all_heads = c.all_heads;
    }
    p.batch = c.batch, p.heads = c.heads, p.sq = c.sq, p.sk = c.sk, p.head_dim = c.hd;
    p.q_stride = qs, p.k_stride = kvs, p.v_stride = kvs;
    p.causal = c.causal;
    p.scale = 1.0f / sqrtf((float)c.hd);
    p.scale_log2 = p.scale * 1.4426950408889634f;

    // The launches of src/backend/cuda/attention.rs.
    const int M = RETRO_ATTN_BLOCK_M, N = RETRO_ATTN_BLOCK_N, P = RETRO_ATTN_PAD, hd = c.hd;
    const dim3 q_tiles((c.sq + M - 1) / M, bh), k_tiles((c.sk + N - 1) / N, bh);
    const auto warp_rows = [&](int rows) { return dim3((uint32_t)(((uint64_t)bh * rows * 32 + 127) / 128)); };
    const size_t fwd_smem = ((M + N) * (hd + P) + hd * (N + P)) * 2;
    const size_t dkv_smem = ((2 * N + 2 * M) * (hd + P) + 2 * hd * (M + P)) * 2 + 2 * M * 4;
    const size_t dq_smem = ((2 * M + 2 * N) * (hd + P) + hd * (N + P)) * 2;
    if (flash) {
        auto fwd = hd == 64 ? attention_forward_hd64 : attention_forward_hd128;
        auto dkv = hd == 64 ? attention_backward_dkv_hd64 : attention_backward_dkv_hd128;
        auto dqk = hd == 64 ? attention_backward_dq_hd64 : attention_backward_dq_hd128;
        emu::launch(q_tiles, RETRO_ATTN_THREADS, fwd_smem, [&] { fwd(p); });
        const uint64_t rows = (uint64_t)c.batch * c.sq * c.heads;
        emu::launch(dim3((uint32_t)((rows * 32 + 255) / 256)), 256, 0, [&] { attention_backward_delta(p); });
        emu::launch(k_tiles, RETRO_ATTN_THREADS, dkv_smem, [&] { dkv(p); });
        emu::launch(q_tiles, RETRO_ATTN_THREADS, dq_smem, [&] { dqk(p); });
    } else {
        emu::launch(warp_rows(c.sq), RETRO_ATTN_THREADS, 0, [&] { attention_exact_forward(p); });
        emu::launch(warp_rows(c.sq), RETRO_ATTN_THREADS, 0, [&] { attention_exact_delta(p); });
        emu::launch(warp_rows(c.sk), RETRO_ATTN_THREADS, 0, [&] { attention_exact_backward_dkv(p); });
        emu::launch(warp_rows(c.sq), RETRO_ATTN_THREADS, 0, [&] { attention_exact_backward_dq(p); });
    }

    // The reference, in double from the same (rounded) inputs.
    auto at = [&](const T* base, int stride, int rows, int b, int i, int h, int d) {
        return (double)to_f(base[((size_t)b * rows + i) * stride + h * hd + d]);
    };
    std::vector<double> ro(nq * w, 0.0), rlse((size_t)bh * c.sq), rdq(nq * w, 0.0), rdk(nk * w, 0.0), rdv(nk * w, 0.0);
    std::vector<double> s(c.sk), prob(c.sk), kept(c.sk), dp(c.sk);
    const double scale = p.scale;
    for (int b = 0; b < c.batch; ++b)
        for (int h = 0; h < c.heads; ++h)
            for (int i = 0; i < c.sq; ++i) {
                double m = -INFINITY;
                for (int j = 0; j < c.sk; ++j) {
                    s[j] = -INFINITY;
                    if ((c.causal && j > i) || !visible(c, b, j)) continue;
                    double dot = 0.0;
                    for (int d = 0; d < hd; ++d) dot += at(q, qs, c.sq, b, i, h, d) * at(k, kvs, c.sk, b, j, h, d);
                    s[j] = scale * dot;
                    m = fmax(m, s[j]);
                }
                double l = 0.0;
                for (int j = 0; j < c.sk; ++j) l += s[j] == -INFINITY ? 0.0 : exp(s[j] - m);
                rlse[((size_t)b * c.heads + h) * c.sq + i] = l > 0 ? (m + log(l)) / log(2.0) : -INFINITY;
                for (int j = 0; j < c.sk; ++j) {
                    prob[j] = s[j] == -INFINITY ? 0.0 : exp(s[j] - m) / l;
                    const double kf = kept[j] = keep(c, seed, b, h, i, j);
                    double dpj = 0.0;
                    for (int d = 0; d < hd; ++d) {
                        const double vj = at(v, kvs, c.sk, b, j, h, d);
                        ro[((size_t)b * c.sq + i) * w + h * hd + d] += prob[j] * kf * vj;
                        dpj += at(dout.p, w, c.sq, b, i, h, d) * vj;
                    }
                    dp[j] = dpj * kf;
                }
                // The backward is defined from the O the forward stored (FlashAttention's delta = rowsum(dO * O),
                // O in bf16 on the tensor-core path): with the exact O instead, rows where dP - delta cancels
                // (the first rows of causal attention) would differ by the rounding of O alone.
                double dlt = 0.0;
                for (int d = 0; d < hd; ++d) dlt += at(dout.p, w, c.sq, b, i, h, d) * at(o.p, w, c.sq, b, i, h, d);
                for (int j = 0; j < c.sk; ++j) {
                    if (prob[j] == 0.0) continue;
                    const double dz = prob[j] * (dp[j] - dlt), kf = kept[j];
                    for (int d = 0; d < hd; ++d) {
                        rdq[((size_t)b * c.sq + i) * w + h * hd + d] += scale * dz * at(k, kvs, c.sk, b, j, h, d);
                        rdk[((size_t)b * c.sk + j) * w + h * hd + d] += scale * dz * at(q, qs, c.sq, b, i, h, d);
                        rdv[((size_t)b * c.sk + j) * w + h * hd + d] += prob[j] * kf * at(dout.p, w, c.sq, b, i, h, d);
                    }
                }
            }

    // Errors relative to the largest value of each output row (one head's hd values): bf16 tiles, and P
    // rounded to bf16 before P V, on the tensor cores; f32 sums in the exact kernels. lse is f32 either way
    // (S = Q K^T is exact in f32 from bf16 inputs).
    const double rel = flash ? 1e-2 : 2e-5;
    auto row_bounds = [&](const std::vector<double>& want) {
        std::vector<double> bound(want.size() / hd, 0.0);
        for (size_t e = 0; e < want.size(); ++e) bound[e / hd] = fmax(bound[e / hd], rel * fabs(want[e]));
        return [=](size_t e) { return bound[e / hd] + 1e-6; };
    };
    const std::string name = std::string(flash ? "attention (bf16) " : "attention_exact (f32) ") + c.name;
    expect_close_each(name + ": o", o.n, [&](size_t e) { return (double)to_f(o[e]); }, ro, row_bounds(ro), rel);
    expect_close(name + ": lse", lse, rlse, flash ? 1e-4 : 1e-5, 0);
    auto view = [&](const T* base, int stride) {
        return [=](size_t e) { return (double)to_f(base[(e / w) * stride + e % w]); };
    };
    expect_close_each(name + ": dq", nq * w, view(dq, qs), rdq, row_bounds(rdq), rel);
    expect_close_each(name + ": dk", nk * w, view(dk, kvs), rdk, row_bounds(rdk), rel);
    expect_close_each(name + ": dv", nk * w, view(dv, kvs), rdv, row_bounds(rdv), rel);
}

}  // namespace

void attention_tests() {
    const Case flash[] = {
        {"causal self, fused QKV, hd 64, 2 x 2 heads x 100", 2, 2, 100, 100, 64, true, true, false, 0.0, 0, 0, false},
        {"causal self, fused QKV, hd 128, dropout 0.1 on heads 1..3 of 4", 1, 2, 70, 70, 128, true, true, false, 0.1, 1,
         4, false},
        {"causal self, fused QKV, hd 64, 2 batches, dropout 0.15 on head 1 of 3", 2, 1, 70, 70, 64, true, true, false,
         0.15, 1, 3, true},
        {"cross 70 x 37, fused KV, hd 64, key mask, dropout 0.2", 2, 2, 70, 37, 64, false, false, true, 0.2, 0, 0, true},
        {"bidirectional 130, fused KV, hd 64, 3 heads", 1, 3, 130, 130, 64, false, false, false, 0.0, 0, 0, false},
        {"cross 64 x 130, fused KV, hd 128, key mask", 2, 1, 64, 130, 128, false, false, true, 0.0, 0, 0, true},
    };
    for (const Case& c : flash)
        if (!quick() || c.quick) run<bf16>(c);
    const Case exact[] = {
        {"causal self, fused QKV, hd 40, dropout 0.1", 2, 2, 33, 33, 40, true, true, false, 0.1, 0, 0, true},
        {"cross 5 x 9, fused KV, hd 128, key mask, dropout 0.3 on heads 2..4 of 6", 2, 2, 5, 9, 128, false, false, true,
         0.3, 2, 6, true},
        {"bidirectional 20, fused KV, hd 64", 1, 3, 20, 20, 64, false, false, false, 0.0, 0, 0, false},
    };
    for (const Case& c : exact)
        if (!quick() || c.quick) run<float>(c);
}
