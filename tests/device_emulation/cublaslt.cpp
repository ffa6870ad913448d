// A stand-in for libcublasLt.so on the emulated device (see driver.cpp): the column-major GEMM
// D = epilogue(alpha op(A) op(B) + beta C) that src/backend/cuda/blas.rs asks for, with bf16 or f32
// operands, f32 scale, the bias and bias+GELU(tanh) epilogues, and D in bf16 or f32. Products are summed
// in double (cuBLASLt sums in f32, in an order it does not document), then rounded once to D's type.
// Descriptors and layouts are checked as cuBLASLt checks them: a shape, type or pointer retro's code gets
// wrong returns CUBLAS_STATUS_INVALID_VALUE or NOT_SUPPORTED instead of computing something.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cuda_bf16.h"
#include "device.h"

typedef int cublasStatus_t;
enum : int {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum : int { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
enum : int { CUBLAS_COMPUTE_32F = 68 };
enum : int { EPILOGUE_DEFAULT = 1, EPILOGUE_BIAS = 4, EPILOGUE_GELU_BIAS = 36 };

struct Handle {};
struct Layout {
    int type;
    uint64_t rows, cols;
    int64_t ld;
};
struct MatmulDesc {
    int compute, scale;
    int trans_a = 0, trans_b = 0;
    int epilogue = EPILOGUE_DEFAULT;
    uint64_t bias = 0;
};
struct Preference {
    uint64_t max_workspace = 0;
};
struct HeuristicResult {
    uint64_t algo[8];
    size_t workspace_size;
    cublasStatus_t state;
    float waves;
    int reserved[4];
};

#define API extern "C" __attribute__((visibility("default")))

API cublasStatus_t cublasLtCreate(Handle** handle) {
    *handle = new Handle;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasLtDestroy(Handle* handle) {
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasLtMatrixLayoutCreate(Layout** layout, int type, uint64_t rows, uint64_t cols, int64_t ld) {
    if (type != CUDA_R_32F && type != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (ld < (int64_t)(rows ? rows : 1)) return CUBLAS_STATUS_INVALID_VALUE;
    *layout = new Layout{type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasLtMatrixLayoutDestroy(Layout* layout) {
    delete layout;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasLtMatmulDescCreate(MatmulDesc** desc, int compute, int scale) {
    if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    *desc = new MatmulDesc{compute, scale};
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasLtMatmulDescDestroy(MatmulDesc* desc) {
    delete desc;
    return CUBLAS_STATUS_SUCCESS;
}

template <typename T>
static cublasStatus_t read_attribute(T* out, const void* value, size_t bytes) {
    if (bytes != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(out, value, sizeof(T));
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasLtMatmulDescSetAttribute(MatmulDesc* desc, int attribute, const void* value, size_t bytes) {
    switch (attribute) {
        case 3: return read_attribute(&desc->trans_a, value, bytes);
        case 4: return read_attribute(&desc->trans_b, value, bytes);
        case 7: {
            int e;
            if (cublasStatus_t s = read_attribute(&e, value, bytes)) return s;
            if (e != EPILOGUE_DEFAULT && e != EPILOGUE_BIAS && e != EPILOGUE_GELU_BIAS) return CUBLAS_STATUS_NOT_SUPPORTED;
            desc->epilogue = e;
            return CUBLAS_STATUS_SUCCESS;
        }
        case 8: return read_attribute(&desc->bias, value, bytes);
        default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

API cublasStatus_t cublasLtMatmulPreferenceCreate(Preference** pref) {
    *pref = new Preference;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasLtMatmulPreferenceDestroy(Preference* pref) {
    delete pref;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasLtMatmulPreferenceSetAttribute(Preference* pref, int attribute, const void* value, size_t bytes) {
    if (attribute != 1) return CUBLAS_STATUS_NOT_SUPPORTED;  // max workspace bytes
    return read_attribute(&pref->max_workspace, value, bytes);
}

// The operand shapes of D[m, n] = op(A)[m, k] op(B)[k, n]; NOT_SUPPORTED when they do not agree.
static bool shapes_agree(const MatmulDesc* d, const Layout* a, const Layout* b, const Layout* c, const Layout* out,
                         uint64_t* m, uint64_t* n, uint64_t* k) {
    const uint64_t a_m = d->trans_a ? a->cols : a->rows, a_k = d->trans_a ? a->rows : a->cols;
    const uint64_t b_k = d->trans_b ? b->cols : b->rows, b_n = d->trans_b ? b->rows : b->cols;
    *m = a_m, *n = b_n, *k = a_k;
    return a_k == b_k && a->type == b->type && c->rows == a_m && c->cols == b_n && out->rows == a_m &&
           out->cols == b_n && c->type == out->type;
}

API cublasStatus_t cublasLtMatmulAlgoGetHeuristic(Handle*, MatmulDesc* desc, Layout* a, Layout* b, Layout* c,
                                                  Layout* d, Preference*, int requested, HeuristicResult* results,
                                                  int* returned) {
    uint64_t m, n, k;
    if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
    if (!shapes_agree(desc, a, b, c, d, &m, &n, &k)) return CUBLAS_STATUS_NOT_SUPPORTED;
    memset(results, 0, sizeof *results);
    results->algo[0] = 0x7265747265ull;  // "retro": the only algorithm
    results->waves = 1.0f;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

static float load(int type, const void* base, uint64_t index) {
    if (type == CUDA_R_32F) return ((const float*)base)[index];
    return __bfloat162float(((const __nv_bfloat16*)base)[index]);
}

// Rounded to f32 first, then (bf16) to nearest even, as cuBLASLt's f32 accumulator is stored.
static void store(int type, void* base, uint64_t index, double value) {
    if (type == CUDA_R_32F) {
        ((float*)base)[index] = (float)value;
        return;
    }
    ((__nv_bfloat16*)base)[index] = __float2bfloat16((float)value);
}

static double gelu_tanh(double x) { return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

struct Gemm {
    MatmulDesc desc;
    Layout a, b, c, d;
    uint64_t m, n, k;
    float alpha, beta;
    const void *pa, *pb, *pc;
    void* pd;

    // op(A) as rows of k and op(B) as columns of k, in f32 (exact for bf16 and f32 operands).
    std::vector<float> a_rows, b_cols;

    // Columns [first, last) of D, four rows at a time: four independent sums (each in order over k)
    // share the loads of the column, so the loop is not one long chain of dependent additions.
    void columns(uint64_t first, uint64_t last) const {
        for (uint64_t j = first; j < last; ++j) {
            const float* col = &b_cols[j * k];
            uint64_t i = 0;
            for (; i + 4 <= m; i += 4) {
                const float *r0 = &a_rows[i * k], *r1 = r0 + k, *r2 = r1 + k, *r3 = r2 + k;
                double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
                for (uint64_t p = 0; p < k; ++p) {
                    const double x = col[p];
                    s0 += (double)r0[p] * x;
                    s1 += (double)r1[p] * x;
                    s2 += (double)r2[p] * x;
                    s3 += (double)r3[p] * x;
                }
                finish(i, j, s0);
                finish(i + 1, j, s1);
                finish(i + 2, j, s2);
                finish(i + 3, j, s3);
            }
            for (; i < m; ++i) {
                const float* row = &a_rows[i * k];
                double sum = 0.0;
                for (uint64_t p = 0; p < k; ++p) sum += (double)row[p] * col[p];
                finish(i, j, sum);
            }
        }
    }

    // D[i, j] from the product's sum: alpha, beta C, the epilogue's bias and GELU.
    void finish(uint64_t i, uint64_t j, double sum) const {
        double v = alpha * sum;
        if (beta != 0.0f) v += beta * (double)load(c.type, pc, i + j * c.ld);
        if (desc.epilogue != EPILOGUE_DEFAULT) v += (double)load(d.type, (const void*)desc.bias, i);
        if (desc.epilogue == EPILOGUE_GELU_BIAS) v = gelu_tanh(v);
        store(d.type, pd, i + j * d.ld, v);
    }

    void run() {
        a_rows.resize(m * k);
        b_cols.resize(n * k);
        for (uint64_t i = 0; i < m; ++i)
            for (uint64_t p = 0; p < k; ++p) a_rows[i * k + p] = load(a.type, pa, desc.trans_a ? p + i * a.ld : i + p * a.ld);
        for (uint64_t j = 0; j < n; ++j)
            for (uint64_t p = 0; p < k; ++p) b_cols[j * k + p] = load(b.type, pb, desc.trans_b ? j + p * b.ld : p + j * b.ld);
        const uint64_t workers = std::max<uint64_t>(1, std::min<uint64_t>(std::thread::hardware_concurrency(), n));
        std::vector<std::thread> pool;
        for (uint64_t w = 0; w < workers; ++w)
            pool.emplace_back([this, w, workers] { columns(n * w / workers, n * (w + 1) / workers); });
        for (auto& t : pool) t.join();
    }
};

// Bytes an operand of `l` spans: its last column's last element, plus one.
static size_t extent(const Layout& l) {
    const size_t element = l.type == CUDA_R_32F ? 4 : 2;
    return l.rows && l.cols ? ((l.cols - 1) * (uint64_t)l.ld + l.rows) * element : 0;
}

API cublasStatus_t cublasLtMatmul(Handle* handle, MatmulDesc* desc, const void* alpha, const void* a, Layout* la,
                                  const void* b, Layout* lb, const float* beta, const void* c, Layout* lc, void* d,
                                  Layout* ld, const void* algo, void* workspace, size_t workspace_bytes,
                                  emu_device::Stream* stream) {
    (void)workspace;
    (void)workspace_bytes;
    if (!handle || !desc || !algo) return CUBLAS_STATUS_NOT_INITIALIZED;
    Gemm g{*desc, *la, *lb, *lc, *ld, 0, 0, 0, *(const float*)alpha, *beta, a, b, c, d};
    if (!shapes_agree(desc, la, lb, lc, ld, &g.m, &g.n, &g.k)) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (desc->epilogue != EPILOGUE_DEFAULT && !desc->bias) return CUBLAS_STATUS_INVALID_VALUE;
    struct Operand {
        const char* name;
        uint64_t ptr;
        size_t bytes;
    } operands[] = {{"A", (uint64_t)a, extent(*la)},
                    {"B", (uint64_t)b, extent(*lb)},
                    {"C", (uint64_t)c, g.beta != 0.0f ? extent(*lc) : 0},
                    {"D", (uint64_t)d, extent(*ld)},
                    {"bias", desc->bias, desc->epilogue != EPILOGUE_DEFAULT ? g.m * (ld->type == CUDA_R_32F ? 4 : 2) : 0}};
    for (const Operand& o : operands)
        if (o.bytes && !emu_device::device_range(o.ptr, o.bytes))
            emu_device::fault(std::string("cublasLtMatmul: operand ") + o.name + " (" + std::to_string(o.bytes) +
                              " bytes) outside every live device allocation");
    emu_device::enqueue(stream, [g]() mutable { g.run(); });
    return CUBLAS_STATUS_SUCCESS;
}
