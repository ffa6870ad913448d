// kernels/adamw.cu against a double reference, launched as src/backend/cuda/adamw.rs: the sum of squares
// in two passes (a fixed grid of partials, then one block), then the fused AdamW update with the clip
// coefficient derived on the device (torch's clip_grad_norm_ + AdamW), decay on a prefix of the arena,
// and the bf16 copy. A non-finite gradient norm leaves every buffer untouched.
#include "harness.h"
#include "adamw.h"

#include <algorithm>

extern "C" {
void sum_squares_f32(const float* x, uint64_t n, double* partials);
void sum_partials_f64(const double* partials, uint32_t count, double* out);
void adamw_update_f32(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, bf16* param_bf16,
                      const double* grad_sum_squares, AdamwParams p);
}

namespace {

void sum_of_squares(const Buf<float>& x, Buf<double>& out) {
    Buf<double> partials(RETRO_SUMSQ_BLOCKS);
    emu::launch(dim3(RETRO_SUMSQ_BLOCKS), RETRO_ADAMW_BLOCK, 0, [&] { sum_squares_f32(x.p, x.n, partials.p); });
    emu::launch(dim3(1), RETRO_ADAMW_BLOCK, 0, [&] { sum_partials_f64(partials.p, RETRO_SUMSQ_BLOCKS, out.p); });
}

// grid: the launcher's (one thread per element, at most 65535 blocks) or a smaller one, so that the
// grid-stride loop takes several turns (arenas over 16.7M elements do on a GPU).
void adamw(size_t n, size_t decay_end, double max_norm, bool poison, bool with_copy, uint32_t grid = 0) {
    Rng rng(n + decay_end);
    Buf<float> param(n), grad(n), m(n), v(n);
    Buf<bf16> copy(n);
    rng.fill(param, -1.0, 1.0);
    rng.fill(grad, -3.0, 3.0);
    rng.fill(m, -0.1, 0.1);
    rng.fill(v, 0.0, 0.05);
    if (poison) grad[n / 2] = INFINITY;
    const std::vector<float> p0(param.p, param.p + n), m0(m.p, m.p + n), v0(v.p, v.p + n);
    Buf<double> sumsq(1);
    sum_of_squares(grad, sumsq);
    double want_sumsq = 0;
    for (size_t i = 0; i < n; ++i) want_sumsq += (double)grad[i] * grad[i];
    const std::string name = "adamw " + std::to_string(n) + " elements" + (poison ? " with an inf gradient" : "") +
                             (with_copy ? "" : ", no bf16 copy") +
                             (grid ? ", grid of " + std::to_string(grid) + " blocks" : "");
    if (!poison) expect_close(name + ": sum of squares", 1, [&](size_t) { return sumsq[0]; }, {want_sumsq}, 0, 1e-12);

    const double lr = 1e-3, wd = 0.1, b1 = 0.9, b2 = 0.95, eps = 1e-8, grad_scale = 0.5;
    const int step = 3;
    AdamwParams p{};
    p.decay_factor = (float)(1.0 - lr * wd);
    p.one_minus_beta1 = (float)(1.0 - b1);
    p.beta2 = (float)b2;
    p.one_minus_beta2 = (float)(1.0 - b2);
    p.eps = (float)eps;
    p.step_size = (float)(lr / (1.0 - pow(b1, step)));
    p.bias_correction2_sqrt = (float)sqrt(1.0 - pow(b2, step));
    p.grad_scale = grad_scale;
    p.max_norm = max_norm;
    p.n = n;
    p.decay_end = decay_end;
    const uint32_t blocks = grid ? grid : (uint32_t)std::min<size_t>(65535, (n + RETRO_ADAMW_BLOCK - 1) / RETRO_ADAMW_BLOCK);
    bf16* copy_ptr = with_copy ? copy.p : nullptr;
    emu::launch(dim3(blocks), RETRO_ADAMW_BLOCK, 0,
                [&] { adamw_update_f32(param.p, grad.p, m.p, v.p, copy_ptr, sumsq.p, p); });
    auto untouched = [&](const Buf<bf16>& b) {
        for (size_t i = 0; i < b.n; ++i)
            if (b[i].bits != 0xffff) return false;
        return true;
    };
    if (poison) {
        expect(name + ": parameters, moments and the bf16 copy untouched",
               !memcmp(p0.data(), param.p, n * 4) && !memcmp(m0.data(), m.p, n * 4) &&
                   !memcmp(v0.data(), v.p, n * 4) && untouched(copy));
        return;
    }
    const double norm = sqrt(want_sumsq) * grad_scale;
    const double clip = max_norm > 0 ? fmin(1.0, max_norm / (norm + 1e-6)) : 1.0;
    std::vector<double> wp(n), wm(n), wv(n);
    for (size_t i = 0; i < n; ++i) {
        const double g = grad[i] * grad_scale * clip;
        wm[i] = b1 * m0[i] + (1 - b1) * g;
        wv[i] = b2 * v0[i] + (1 - b2) * g * g;
        const double w = i < decay_end ? p0[i] * (1 - lr * wd) : p0[i];
        wp[i] = w - lr / (1 - pow(b1, step)) * wm[i] / (sqrt(wv[i]) / sqrt(1 - pow(b2, step)) + eps);
    }
    const std::string clipped = max_norm > 0 ? " (clipped by " + std::to_string(clip) + ")" : " (no clipping)";
    expect_close(name + clipped + ": parameters", param, wp, 1e-7, 1e-6);
    expect_close(name + ": exp_avg", m, wm, 1e-8, 1e-5);
    expect_close(name + ": exp_avg_sq", v, wv, 1e-9, 1e-5);
    if (!with_copy) {
        expect(name + ": the bf16 copy's buffer untouched (null pointer)", untouched(copy));
        return;
    }
    std::vector<double> wcopy(n);
    for (size_t i = 0; i < n; ++i) wcopy[i] = to_f(__float2bfloat16(param[i]));
    expect_close(name + ": bf16 copy of the new parameters", copy, wcopy, 0, 0);
}

}  // namespace

void optimizer_tests() {
    adamw(70001, 30000, 1.0, false, true);
    if (quick()) return;
    adamw(5000, 3000, 1.0, false, true, 3);
    adamw(1000, 1000, 0.0, false, false);
    adamw(513, 100, 1.0, true, true);
}
