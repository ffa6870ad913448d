// The memory-bound kernels against double references, launched as their src/backend/cuda launchers:
// kernels/embedding.cu (lookup with positions, single-table rows with -1 ids, the CSR word backward, the
// position backward), dropout.cu and random.cu (Philox draws, checked against Random123's known answers
// and an independent Philox), gelu.cu, and residual.cu (add, add_into, add_bias, shift_rows, scale).
#include "harness.h"
#include "elementwise.h"
#include "philox.cuh"

#include <algorithm>

#define ELEMENTWISE_KERNELS(T, S)                                                                               \
    void embedding_forward_##S(T* out, const int32_t* tokens, const T* word, const T* position, uint64_t count,   \
                               int d, int period);                                                               \
    void embedding_rows_##S(T* out, const int32_t* tokens, const T* table, uint64_t count, int d);               \
    void embedding_word_backward_##S(float* dword, const T* dout, const int32_t* unique, const int32_t* starts,    \
                                     const int32_t* order, int d);                                               \
    void embedding_position_backward_##S(float* dposition, const T* dout, uint64_t count, int d, int period);     \
    void dropout_##S(T* out, const T* x, uint64_t n, uint64_t seed, uint64_t stream, uint32_t threshold, float scale); \
    void fill_normal_##S(T* out, uint64_t n, uint64_t seed, uint64_t stream, float std);                         \
    void bias_gelu_forward_##S(T* y, const T* x, const float* bias, uint64_t n, int d);                         \
    void bias_gelu_backward_##S(T* du, const T* dy, const T* x, const float* bias, uint64_t n, int d);           \
    void add_##S(T* out, const T* a, const T* b, uint64_t n);                                                  \
    void add_into_##S(T* a, const T* b, uint64_t n);                                                           \
    void add_bias_##S(T* out, const T* x, const T* bias, uint64_t n, int d);                                   \
    void shift_rows_##S(T* out, const T* x, int batch, int rows_in, int rows_out, int d, int shift);            \
    void scale_##S(T* out, const T* x, float factor, const float* by, uint64_t n);
extern "C" {
ELEMENTWISE_KERNELS(bf16, bf16)
ELEMENTWISE_KERNELS(float, f32)
}

namespace {

const uint32_t B = RETRO_ELEMENTWISE_BLOCK;

std::vector<double> rounded(const std::vector<double>& x, bool to_bf16) {
    std::vector<double> out(x);
    if (to_bf16)
        for (double& v : out) v = to_f(__float2bfloat16((float)v));
    return out;
}

template <typename T>
std::string label(const char* what) {
    return std::string(what) + " (" + type_name<T>() + ")";
}

// d > 2048 makes the word backward's threads take two column groups each; grid > 0 replaces the
// launchers' grid of the grid-stride kernels (a small one: several turns of the loop).
template <typename T>
void embedding(int d, uint32_t grid = 0) {
    constexpr bool b16 = std::is_same<T, bf16>::value;
    const int vocab = 11, period = 5, count = 13;
    const std::string shape = " d " + std::to_string(d) + (grid ? ", grid " + std::to_string(grid) : "");
    Rng rng(3);
    Buf<T> word((size_t)vocab * d), position((size_t)period * d), out((size_t)count * d), dout((size_t)count * d);
    rng.fill(word, -1, 1);
    rng.fill(position, -1, 1);
    rng.fill(dout, -1, 1);
    Buf<int32_t> tokens(count);
    for (int t = 0; t < count; ++t) tokens[t] = (t * 7 + 3) % vocab;
    const uint64_t items = (uint64_t)count * (d / 8);
    const dim3 lookup_grid(grid ? grid : grid_for(items, B));
    emu::launch(lookup_grid, B, 0,
                [&] { RETRO_KERNEL(T, embedding_forward)(out.p, tokens.p, word.p, position.p, count, d, period); });
    std::vector<double> want((size_t)count * d);
    for (int t = 0; t < count; ++t)
        for (int c = 0; c < d; ++c)
            want[(size_t)t * d + c] = (double)to_f(word[(size_t)tokens[t] * d + c]) + to_f(position[(size_t)(t % period) * d + c]);
    expect_close(label<T>("embedding forward, 13 tokens, period 5") + shape, out, rounded(want, b16), 1e-6, 1e-6);

    // One table alone, with -1 ids (another rank's words) giving zero rows.
    for (int t = 0; t < count; t += 3) tokens[t] = -1;
    emu::launch(lookup_grid, B, 0, [&] { RETRO_KERNEL(T, embedding_rows)(out.p, tokens.p, word.p, count, d); });
    for (int t = 0; t < count; ++t)
        for (int c = 0; c < d; ++c)
            want[(size_t)t * d + c] = tokens[t] < 0 ? 0.0 : to_f(word[(size_t)tokens[t] * d + c]);
    expect_close(label<T>("embedding rows with -1 ids") + shape, out, want, 0, 0);

    // Word backward: the host's CSR grouping of positions by id (ids -1 left out), as TokenBatch makes it.
    std::vector<int32_t> order_v;
    for (int t = 0; t < count; ++t)
        if (tokens[t] >= 0) order_v.push_back(t);
    std::stable_sort(order_v.begin(), order_v.end(), [&](int a, int b) { return tokens[a] < tokens[b]; });
    std::vector<int32_t> unique_v, starts_v;
    for (size_t j = 0; j < order_v.size(); ++j)
        if (j == 0 || tokens[order_v[j]] != tokens[order_v[j - 1]]) unique_v.push_back(tokens[order_v[j]]), starts_v.push_back((int32_t)j);
    starts_v.push_back((int32_t)order_v.size());
    Buf<int32_t> unique(unique_v.size()), starts(starts_v.size()), order(order_v.size());
    std::copy(unique_v.begin(), unique_v.end(), unique.p);
    std::copy(starts_v.begin(), starts_v.end(), starts.p);
    std::copy(order_v.begin(), order_v.end(), order.p);
    Buf<float> dword((size_t)vocab * d), dpos((size_t)period * d);
    std::vector<double> want_dword((size_t)vocab * d, 0.5), want_dpos((size_t)period * d, -0.5);
    for (size_t e = 0; e < dword.n; ++e) dword[e] = 0.5f;
    for (size_t e = 0; e < dpos.n; ++e) dpos[e] = -0.5f;
    const uint32_t threads = std::min<uint32_t>(B, std::max<uint32_t>(32, (d / 8 + 31) / 32 * 32));
    emu::launch(dim3((uint32_t)unique.n), threads, 0,
                [&] { RETRO_KERNEL(T, embedding_word_backward)(dword.p, dout.p, unique.p, starts.p, order.p, d); });
    emu::launch(dim3(grid ? grid : grid_for((uint64_t)period * (d / 8), B)), B, 0,
                [&] { RETRO_KERNEL(T, embedding_position_backward)(dpos.p, dout.p, count, d, period); });
    for (int t = 0; t < count; ++t)
        for (int c = 0; c < d; ++c) {
            if (tokens[t] >= 0) want_dword[(size_t)tokens[t] * d + c] += to_f(dout[(size_t)t * d + c]);
            want_dpos[(size_t)(t % period) * d + c] += to_f(dout[(size_t)t * d + c]);
        }
    expect_close(label<T>("embedding word backward (CSR, into 0.5)") + shape, dword, want_dword, 1e-6, 1e-6);
    expect_close(label<T>("embedding position backward (into -0.5)") + shape, dpos, want_dpos, 1e-6, 1e-6);
}

void philox_known_answers() {
    // Random123's kat_vectors for philox4x32_10, as (j, stream, seed) of philox_block.
    struct Kat {
        uint64_t j, stream, seed;
        uint32_t want[4];
    } kats[] = {
        {0, 0, 0, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {~0ull, ~0ull, ~0ull, {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {0x85a308d3243f6a88ull, 0x0370734413198a2eull, 0x299f31d0a4093822ull, {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    bool ok = true;
    for (const Kat& k : kats) {
        uint32_t ref[4];
        philox_reference(ref, k.seed, k.stream, k.j);
        const uint4 got = philox_block(k.seed, k.stream, k.j);
        const uint32_t g[4] = {got.x, got.y, got.z, got.w};
        ok = ok && !memcmp(ref, k.want, 16) && !memcmp(g, k.want, 16);
    }
    expect("philox4x32-10: kernels/philox.cuh and the reference give Random123's known answers", ok);
}

template <typename T>
void draws(uint64_t n, uint32_t grid = 0) {
    const uint64_t seed = 0x1234567890ull, stream = 77;
    const std::string shape = ", " + std::to_string(n) + " elements" + (grid ? ", grid " + std::to_string(grid) : "");
    const double p = 0.3;
    const uint32_t threshold = (uint32_t)llround(p * 4294967296.0);
    Rng rng(5);
    Buf<T> x(n), out(n);
    rng.fill(x, -2, 2);
    const uint32_t blocks = grid ? grid : grid_for((n + 3) / 4, B);
    emu::launch(dim3(blocks), B, 0,
                [&] { RETRO_KERNEL(T, dropout)(out.p, x.p, n, seed, stream, threshold, (float)(1.0 / (1.0 - p))); });
    std::vector<double> want(n);
    for (uint64_t i = 0; i < n; ++i) {
        uint32_t w[4];
        philox_reference(w, seed, stream, i / 4);
        want[i] = w[i % 4] >= threshold ? to_f(from_f<T>((float)(to_f(x[i]) * (float)(1.0 / (1.0 - p))))) : 0.0;
    }
    expect_close(label<T>("dropout p 0.3 (the CPU's keep_mask)") + shape, out, want, 0, 0);

    Buf<T> normal(n);
    emu::launch(dim3(blocks), B, 0, [&] { RETRO_KERNEL(T, fill_normal)(normal.p, n, seed, stream, 0.02f); });
    for (uint64_t j = 0; j < (n + 3) / 4; ++j) {
        uint32_t w[4];
        philox_reference(w, seed, stream, j);
        for (int pair = 0; pair < 2; ++pair) {
            const double u0 = ((w[2 * pair] >> 9) + 0.5) / 8388608.0, u1 = ((w[2 * pair + 1] >> 9) + 0.5) / 8388608.0;
            const double r = sqrt(-2 * log(u0)), th = 2 * M_PI * u1;
            if (4 * j + 2 * pair < n) want[4 * j + 2 * pair] = 0.02 * r * cos(th);
            if (4 * j + 2 * pair + 1 < n) want[4 * j + 2 * pair + 1] = 0.02 * r * sin(th);
        }
    }
    expect_close(label<T>("fill_normal std 0.02 (Box-Muller on Philox words)") + shape, normal, want, 1e-7, tol<T>());
}

// with_bias false: the launchers' null bias (gelu of x alone).
template <typename T>
void gelu(bool with_bias, uint32_t grid = 0) {
    const int d = 48;
    const uint64_t n = 50 * d;
    const std::string shape = std::string(with_bias ? "" : ", no bias") + (grid ? ", grid " + std::to_string(grid) : "");
    Rng rng(9);
    Buf<T> x(n), y(n), dy(n), du(n);
    Buf<float> bias(d);
    rng.fill(x, -4, 4);
    rng.fill(dy, -1, 1);
    rng.fill(bias, -0.5, 0.5);
    if (!with_bias)
        for (int c = 0; c < d; ++c) bias[c] = 0.f;  // the reference's bias
    const float* bias_ptr = with_bias ? bias.p : nullptr;
    const uint32_t blocks = grid ? grid : grid_for(n / 8, B);
    emu::launch(dim3(blocks), B, 0, [&] { RETRO_KERNEL(T, bias_gelu_forward)(y.p, x.p, bias_ptr, n, d); });
    emu::launch(dim3(blocks), B, 0, [&] { RETRO_KERNEL(T, bias_gelu_backward)(du.p, dy.p, x.p, bias_ptr, n, d); });
    std::vector<double> want_y(n), want_du(n);
    const double k = sqrt(2 / M_PI);
    for (uint64_t i = 0; i < n; ++i) {
        const double u = (double)to_f(x[i]) + bias[i % d], t = tanh(k * (u + 0.044715 * u * u * u));
        want_y[i] = 0.5 * u * (1 + t);
        want_du[i] = to_f(dy[i]) * (0.5 * (1 + t) + 0.5 * u * (1 - t * t) * k * (1 + 3 * 0.044715 * u * u));
    }
    expect_close(label<T>("bias + gelu forward") + shape, y, want_y, 1e-6, tol<T>());
    expect_close(label<T>("bias + gelu backward") + shape, du, want_du, 1e-6, tol<T>());
}

template <typename T>
void residual(uint32_t grid = 0) {
    constexpr bool b16 = std::is_same<T, bf16>::value;
    const int d = 16, batch = 2, rows_in = 5, rows_out = 4;
    const uint64_t n = 300 * d;
    const std::string shape = grid ? ", grid " + std::to_string(grid) : "";
    Rng rng(11);
    Buf<T> a(n), b(n), out(n), bias(d);
    rng.fill(a, -1, 1);
    rng.fill(b, -1, 1);
    rng.fill(bias, -1, 1);
    const uint32_t blocks = grid ? grid : grid_for(n / 8, B);
    std::vector<double> want(n);
    emu::launch(dim3(blocks), B, 0, [&] { RETRO_KERNEL(T, add)(out.p, a.p, b.p, n); });
    for (uint64_t i = 0; i < n; ++i) want[i] = (double)to_f(a[i]) + to_f(b[i]);
    expect_close(label<T>("add") + shape, out, rounded(want, b16), 1e-7, 1e-7);
    emu::launch(dim3(blocks), B, 0, [&] { RETRO_KERNEL(T, add_bias)(out.p, a.p, bias.p, n, d); });
    for (uint64_t i = 0; i < n; ++i) want[i] = (double)to_f(a[i]) + to_f(bias[i % d]);
    expect_close(label<T>("add_bias") + shape, out, rounded(want, b16), 1e-7, 1e-7);
    Buf<float> by(1);
    by[0] = -3.0f;
    emu::launch(dim3(grid ? grid : grid_for(n, B)), B, 0, [&] { RETRO_KERNEL(T, scale)(out.p, a.p, 0.5f, by.p, n); });
    for (uint64_t i = 0; i < n; ++i) want[i] = to_f(a[i]) * (0.5f * -3.0f);
    expect_close(label<T>("scale by a device scalar") + shape, out, rounded(want, b16), 1e-7, 1e-7);
    emu::launch(dim3(grid ? grid : grid_for(n, B)), B, 0, [&] { RETRO_KERNEL(T, scale)(out.p, a.p, 0.5f, nullptr, n); });
    for (uint64_t i = 0; i < n; ++i) want[i] = to_f(a[i]) * 0.5f;
    expect_close(label<T>("scale by a constant (no device scalar)") + shape, out, rounded(want, b16), 1e-7, 1e-7);
    for (uint64_t i = 0; i < n; ++i) want[i] = (double)to_f(a[i]) + to_f(b[i]);
    emu::launch(dim3(blocks), B, 0, [&] { RETRO_KERNEL(T, add_into)(a.p, b.p, n); });
    expect_close(label<T>("add_into") + shape, a, rounded(want, b16), 1e-6, 1e-6);

    // The CCA shift by m - 1 = 2 and its inverse (-2): rows outside the input are zero.
    Buf<T> x((size_t)batch * rows_in * d), shifted((size_t)batch * rows_out * d);
    rng.fill(x, -1, 1);
    for (int shift : {2, -2}) {
        emu::launch(dim3(grid ? grid : grid_for((uint64_t)batch * rows_out * (d / 8), B)), B, 0,
                    [&] { RETRO_KERNEL(T, shift_rows)(shifted.p, x.p, batch, rows_in, rows_out, d, shift); });
        std::vector<double> w(shifted.n);
        for (int bb = 0; bb < batch; ++bb)
            for (int i = 0; i < rows_out; ++i)
                for (int c = 0; c < d; ++c) {
                    const int src = i + shift;
                    w[((size_t)bb * rows_out + i) * d + c] =
                        src >= 0 && src < rows_in ? to_f(x[((size_t)bb * rows_in + src) * d + c]) : 0.0;
                }
        expect_close(label<T>(shift > 0 ? "shift_rows by 2, 5 rows to 4" : "shift_rows by -2") + shape, shifted, w, 0, 0);
    }
}

}  // namespace

// Grids of 1 or 2 blocks: every grid-stride kernel's result must not depend on the grid.
void elementwise_tests() {
    philox_known_answers();
    embedding<bf16>(24);
    embedding<float>(24);
    embedding<bf16>(2064, 2);
    draws<bf16>(1030);
    draws<float>(1030);
    draws<float>(5003, 1);
    gelu<bf16>(true);
    gelu<float>(true);
    gelu<bf16>(false, 1);
    residual<bf16>();
    residual<float>();
    residual<bf16>(1);
}
