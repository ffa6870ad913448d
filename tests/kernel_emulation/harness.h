// The test harness of the kernel emulation (scripts/kernel-emulation): exact-size host buffers, seeded
// inputs rounded to the element type, and comparisons against references computed in double.
#pragma once
#include "cuda_emulation.h"
#include "cuda_bf16.h"

#include <string>
#include <vector>

typedef __nv_bfloat16 bf16;

// A buffer of exactly n elements (so AddressSanitizer sees any access past its end), starting as 0xff
// bytes (NaN as f32 and bf16, -1 as integers), so an output element a kernel fails to write shows.
template <typename T>
struct Buf {
    T* p;
    size_t n;
    explicit Buf(size_t count) : p((T*)malloc(count * sizeof(T) + (count == 0))), n(count) {
        memset(p, 0xff, count * sizeof(T));
    }
    Buf(const Buf&) = delete;
    ~Buf() { free(p); }
    T& operator[](size_t i) { return p[i]; }
    const T& operator[](size_t i) const { return p[i]; }
    uint64_t addr() const { return (uint64_t)(uintptr_t)p; }
};

inline float to_f(float x) { return x; }
inline float to_f(bf16 x) { return __bfloat162float(x); }
template <typename T> T from_f(float x);
template <> inline float from_f<float>(float x) { return x; }
template <> inline bf16 from_f<bf16>(float x) { return __float2bfloat16(x); }
// The entry point `name`_bf16 or `name`_f32 of a kernel template, for element type T.
#define RETRO_KERNEL(T, name)                                 \
    [] {                                                      \
        if constexpr (std::is_same<T, __nv_bfloat16>::value)  \
            return name##_bf16;                               \
        else                                                  \
            return name##_f32;                                \
    }()

template <typename T> const char* type_name();
template <> inline const char* type_name<float>() { return "f32"; }
template <> inline const char* type_name<bf16>() { return "bf16"; }

// Deterministic inputs: uniform in [lo, hi), stored in T (so the reference reads the rounded values).
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
    double uniform() {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        return (double)(s >> 11) * (1.0 / 9007199254740992.0);
    }
    template <typename T>
    void fill(Buf<T>& b, double lo, double hi) {
        for (size_t i = 0; i < b.n; ++i) b[i] = from_f<T>((float)(lo + (hi - lo) * uniform()));
    }
};

// RETRO_EMULATION_QUICK=1 (the ThreadSanitizer build, where each CUDA thread costs many times more): the
// families run fewer cases, each chosen to keep every code path of its kernels.
inline bool quick() {
    const char* v = getenv("RETRO_EMULATION_QUICK");
    return v && strcmp(v, "1") == 0;
}

inline int& failures() {
    static int n = 0;
    return n;
}

// got vs want: every |got - want| <= atol(i) + rtol * |want|, and an infinite want is met exactly. Prints
// one line either way.
template <typename Get, typename Atol>
inline void expect_close_each(const std::string& what, size_t n, Get got, const std::vector<double>& want, Atol atol,
                              double rtol) {
    double worst = 0.0, worst_excess = -1.0;
    size_t at = 0, bad = 0;
    for (size_t i = 0; i < n; ++i) {
        const double g = got(i), w = want[i], err = g == w ? 0.0 : fabs(g - w);
        const double bound = std::isfinite(w) ? atol(i) + rtol * fabs(w) : 0.0;
        if (!(err <= bound)) ++bad;
        if (err > worst || err != err) worst = err;
        if (!(err - bound <= worst_excess)) worst_excess = err - bound, at = i;
    }
    if (bad) {
        ++failures();
        printf("FAIL %s: %zu of %zu outside %.1e + %.1e |want|; worst at %zu: got %.7g, want %.7g\n", what.c_str(), bad,
               n, atol(at), rtol, at, got(at), want[at]);
    } else {
        printf("ok   %s (%zu values, max error %.2e)\n", what.c_str(), n, worst);
    }
}

template <typename Get>
inline void expect_close(const std::string& what, size_t n, Get got, const std::vector<double>& want, double atol,
                         double rtol) {
    expect_close_each(what, n, got, want, [=](size_t) { return atol; }, rtol);
}

template <typename T>
inline void expect_close(const std::string& what, const Buf<T>& got, const std::vector<double>& want, double atol,
                         double rtol) {
    if (got.n != want.size()) {
        ++failures();
        printf("FAIL %s: %zu values, want %zu\n", what.c_str(), got.n, want.size());
        return;
    }
    expect_close(what, got.n, [&](size_t i) { return (double)to_f(got[i]); }, want, atol, rtol);
}

inline void expect(const std::string& what, bool ok) {
    if (!ok) ++failures();
    printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
}

// Tolerances per element type: bf16 outputs are rounded to 8 bits of mantissa.
template <typename T> double tol();
template <> inline double tol<float>() { return 2e-6; }
template <> inline double tol<bf16>() { return 8e-3; }

// Philox4x32-10 as the Random123 paper defines it, written again here so that the references do not
// share code with the kernels (kernels/philox.cuh): the words of block j of `stream` under `seed`.
inline void philox_reference(uint32_t out[4], uint64_t seed, uint64_t stream, uint64_t j) {
    uint32_t c[4] = {(uint32_t)j, (uint32_t)(j >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)};
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int round = 0; round < 10; ++round) {
        if (round > 0) k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
        const uint64_t p0 = (uint64_t)0xD2511F53u * c[0], p1 = (uint64_t)0xCD9E8D57u * c[2];
        const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1;
        c[0] = n0, c[1] = (uint32_t)p1, c[2] = n2, c[3] = (uint32_t)p0;
    }
    memcpy(out, c, sizeof c);
}

inline uint32_t grid_for(uint64_t items, uint32_t block) {
    const uint64_t g = (items + block - 1) / block;
    return (uint32_t)(g < 1 ? 1 : g > 65535ull * 8 ? 65535ull * 8 : g);
}
