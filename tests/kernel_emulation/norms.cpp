// kernels/layernorm.cu and kernels/reduce.cu against double references, launched as
// src/backend/cuda/layernorm.rs and reduce.rs do: one block per row forward; the backward over fewer
// blocks than rows (the grid-stride row loop) with its gamma / beta partials summed by the column-sum
// kernels. Widths below one block's column groups and above it (a thread owning several groups).
#include "harness.h"
#include "layernorm.h"
#include "reduce.h"

#define LN_KERNELS(T, S)                                                                                        \
    void layernorm_forward_##S(T* y, float* mean, float* rstd, const T* x, const float* gamma, const float* beta, \
                               int rows, int d, float eps);                                                     \
    void residual_layernorm_forward_##S(T* h, T* y, float* mean, float* rstd, const T* x, const T* residual,     \
                                        const float* gamma, const float* beta, int rows, int d, float eps);      \
    void layernorm_backward_##S(T* dx, float* dgamma_partials, float* dbeta_partials, const T* dy, const T* x,   \
                                const float* mean, const float* rstd, const float* gamma, int rows, int d);      \
    void column_sum_partials_##S(float* partials, const T* x, int rows, int d);
extern "C" {
LN_KERNELS(bf16, bf16)
LN_KERNELS(float, f32)
void add_column_partials(float* out, const float* partials, int parts, int d);
}

namespace {

// Column sums of x [rows, d] through both kernels, as reduce.rs: partials of RETRO_COLSUM_ROWS rows, then
// added into `out`.
template <typename T>
void column_sums(Buf<float>& out, const T* x, int rows, int d) {
    const int parts = (rows + RETRO_COLSUM_ROWS - 1) / RETRO_COLSUM_ROWS;
    Buf<float> partials((size_t)parts * d);
    const dim3 grid((d + RETRO_COLSUM_BLOCK - 1) / RETRO_COLSUM_BLOCK, parts);
    emu::launch(grid, RETRO_COLSUM_BLOCK, 0, [&] { RETRO_KERNEL(T, column_sum_partials)(partials.p, x, rows, d); });
    emu::launch(dim3(grid.x), RETRO_COLSUM_BLOCK, 0, [&] { add_column_partials(out.p, partials.p, parts, d); });
}

template <typename T>
void layernorm(int rows, int d, int backward_blocks) {
    const float eps = 1e-5f;
    const size_t n = (size_t)rows * d;
    Rng rng(rows * 1000 + d);
    Buf<T> x(n), r(n), h(n), y(n), dy(n), dx(n);
    Buf<float> gamma(d), beta(d), mean(rows), rstd(rows);
    rng.fill(x, -2.0, 3.0);
    rng.fill(r, -1.0, 1.0);
    rng.fill(dy, -1.0, 1.0);
    rng.fill(gamma, 0.5, 1.5);
    rng.fill(beta, -0.5, 0.5);
    const std::string name = std::string("layernorm (") + type_name<T>() + ") " + std::to_string(rows) + " x " +
                             std::to_string(d);

    // The forward reference from a given input row.
    auto reference = [&](auto value, std::vector<double>& want_y, std::vector<double>& want_mean,
                         std::vector<double>& want_rstd) {
        want_y.assign(n, 0), want_mean.assign(rows, 0), want_rstd.assign(rows, 0);
        for (int i = 0; i < rows; ++i) {
            double mu = 0, var = 0;
            for (int j = 0; j < d; ++j) mu += value(i, j);
            mu /= d;
            for (int j = 0; j < d; ++j) var += (value(i, j) - mu) * (value(i, j) - mu);
            const double rs = 1.0 / sqrt(var / d + eps);
            want_mean[i] = mu, want_rstd[i] = rs;
            for (int j = 0; j < d; ++j) want_y[(size_t)i * d + j] = (value(i, j) - mu) * rs * gamma[j] + beta[j];
        }
    };
    std::vector<double> want_y, want_mean, want_rstd;
    emu::launch(dim3(rows), RETRO_LN_BLOCK, 0,
                [&] { RETRO_KERNEL(T, layernorm_forward)(y.p, mean.p, rstd.p, x.p, gamma.p, beta.p, rows, d, eps); });
    reference([&](int i, int j) { return (double)to_f(x[(size_t)i * d + j]); }, want_y, want_mean, want_rstd);
    expect_close(name + " forward: y", y, want_y, tol<T>() * 4, tol<T>());
    expect_close(name + " forward: mean", mean, want_mean, 1e-6, 1e-6);
    expect_close(name + " forward: rstd", rstd, want_rstd, 1e-6, 1e-5);

    // Residual + LayerNorm: h = x + r rounded to T, then LN(h).
    emu::launch(dim3(rows), RETRO_LN_BLOCK, 0,
                [&] { RETRO_KERNEL(T, residual_layernorm_forward)(h.p, y.p, mean.p, rstd.p, x.p, r.p, gamma.p, beta.p, rows, d, eps); });
    std::vector<double> want_h(n);
    for (size_t e = 0; e < n; ++e) want_h[e] = to_f(from_f<T>(to_f(x[e]) + to_f(r[e])));
    expect_close(name + " residual: h", h, want_h, 0, 0);
    reference([&](int i, int j) { return want_h[(size_t)i * d + j]; }, want_y, want_mean, want_rstd);
    expect_close(name + " residual: y", y, want_y, tol<T>() * 4, tol<T>());
    expect_close(name + " residual: mean", mean, want_mean, 1e-6, 1e-6);
    expect_close(name + " residual: rstd", rstd, want_rstd, 1e-6, 1e-5);

    // Backward from the statistics of the residual forward (input h).
    Buf<float> dgp((size_t)backward_blocks * d), dbp((size_t)backward_blocks * d), dgamma(d), dbeta(d);
    for (int j = 0; j < d; ++j) dgamma[j] = 0.25f, dbeta[j] = -0.5f;  // accumulated into
    emu::launch(dim3(backward_blocks), RETRO_LN_BLOCK, 0, [&] {
        RETRO_KERNEL(T, layernorm_backward)(dx.p, dgp.p, dbp.p, dy.p, h.p, mean.p, rstd.p, gamma.p, rows, d);
    });
    // layernorm.rs adds the blocks' partials straight into dgamma / dbeta.
    const dim3 cols((d + RETRO_COLSUM_BLOCK - 1) / RETRO_COLSUM_BLOCK);
    emu::launch(cols, RETRO_COLSUM_BLOCK, 0, [&] { add_column_partials(dgamma.p, dgp.p, backward_blocks, d); });
    emu::launch(cols, RETRO_COLSUM_BLOCK, 0, [&] { add_column_partials(dbeta.p, dbp.p, backward_blocks, d); });
    std::vector<double> want_dx(n), want_dg(d, 0.25), want_db(d, -0.5);
    for (int i = 0; i < rows; ++i) {
        const double mu = mean[i], rs = rstd[i];
        double sum_g = 0, sum_gx = 0;
        for (int j = 0; j < d; ++j) {
            const size_t e = (size_t)i * d + j;
            const double xh = (want_h[e] - mu) * rs, g = to_f(dy[e]) * gamma[j];
            sum_g += g, sum_gx += g * xh;
            want_dg[j] += to_f(dy[e]) * xh;
            want_db[j] += to_f(dy[e]);
        }
        for (int j = 0; j < d; ++j) {
            const size_t e = (size_t)i * d + j;
            const double xh = (want_h[e] - mu) * rs, g = to_f(dy[e]) * gamma[j];
            want_dx[e] = rs * (g - sum_g / d - xh * sum_gx / d);
        }
    }
    expect_close(name + " backward over " + std::to_string(backward_blocks) + " blocks: dx", dx, want_dx,
                 tol<T>() * 4, tol<T>());
    expect_close(name + " backward: dgamma (partials added in)", dgamma, want_dg, 1e-4, 1e-5);
    expect_close(name + " backward: dbeta (partials added in)", dbeta, want_db, 1e-4, 1e-5);
}

// Column sums over more rows than one partial (several parts) and more columns than one block.
template <typename T>
void column_sum(int rows, int d) {
    Rng rng(rows + d);
    Buf<T> x((size_t)rows * d);
    rng.fill(x, -1.0, 1.0);
    Buf<float> out(d);
    std::vector<double> want(d, 1.0);
    for (int j = 0; j < d; ++j) out[j] = 1.0f;
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < d; ++j) want[j] += to_f(x[(size_t)i * d + j]);
    column_sums(out, x.p, rows, d);
    expect_close(std::string("column sums (") + type_name<T>() + ") " + std::to_string(rows) + " x " +
                     std::to_string(d) + ", added into 1",
                 out, want, 1e-4, 1e-5);
}

}  // namespace

void norm_tests() {
    layernorm<bf16>(7, 72, 3);
    layernorm<float>(5, 1096, 2);
    layernorm<bf16>(3, 4096, 3);
    column_sum<bf16>(600, 264);
    column_sum<float>(257, 8);
}
