// kernels/cross_entropy.cu and kernels/vocab_parallel.cu against a double reference. The vocab-parallel
// kernels run on two "ranks" (two slices of every row's classes), with the host standing in for the NCCL
// max and sum between them, as ops/parallel.rs does on GPUs; both must give the unsplit row's loss and
// each rank its slice of the gradient. Rows with the ignored target -1; vocabularies shorter than one
// block's column groups and longer than two.
#include "harness.h"
#include "cross_entropy.h"

#define CE_KERNELS(T, S)                                                                                         \
    void softmax_cross_entropy_##S(T* logits, float* losses, const int32_t* targets, int classes, float grad_scale); \
    void vocab_ce_row_max_##S(const T* logits, int classes, float* max);                                        \
    void vocab_ce_row_sums_##S(const T* logits, int classes, const float* max, const int32_t* targets, float* sums); \
    void vocab_ce_loss_grad_##S(const T* logits, int classes, const float* max, const float* sums,               \
                                const int32_t* targets, float grad_scale, float* losses, T* dz);
extern "C" {
CE_KERNELS(bf16, bf16)
CE_KERNELS(float, f32)
}

namespace {

// One rank's slice [first, first + width) of every row's classes, with its targets (-1 where another
// rank holds the label) and the gradient the kernels write.
template <typename T>
struct Slice {
    int first, width;
    Buf<T> logits, grad;
    Buf<int32_t> targets;
    Slice(const Buf<T>& z, const Buf<int32_t>& t, int rows, int classes, int first_, int width_)
        : first(first_), width(width_), logits((size_t)rows * width_), grad((size_t)rows * width_), targets(rows) {
        for (int r = 0; r < rows; ++r) {
            memcpy(logits.p + (size_t)r * width, z.p + (size_t)r * classes + first, width * sizeof(T));
            targets[r] = t[r] >= first && t[r] < first + width ? t[r] - first : -1;
        }
    }
};

template <typename T>
void cross_entropy(int rows, int classes) {
    const float grad_scale = 0.25f;
    Rng rng(rows * 7 + classes);
    Buf<T> logits((size_t)rows * classes);
    rng.fill(logits, -4.0, 6.0);
    Buf<int32_t> targets(rows);
    for (int r = 0; r < rows; ++r) targets[r] = r == 1 ? -1 : (int32_t)((r * 7919 + 13) % classes);
    // The reference from the rounded logits: each row's log-sum-exp, target logit and softmax.
    auto z = [&](int r, int j) { return (double)to_f(logits[(size_t)r * classes + j]); };
    std::vector<double> lse(rows), target_logit(rows), prob((size_t)rows * classes);
    for (int r = 0; r < rows; ++r) {
        double m = -INFINITY, s = 0;
        for (int j = 0; j < classes; ++j) m = fmax(m, z(r, j));
        for (int j = 0; j < classes; ++j) s += exp(z(r, j) - m);
        lse[r] = m + log(s);
        target_logit[r] = targets[r] < 0 ? 0.0 : z(r, targets[r]);
        for (int j = 0; j < classes; ++j) prob[(size_t)r * classes + j] = exp(z(r, j) - lse[r]);
    }
    auto grad = [&](int r, int j) { return (prob[(size_t)r * classes + j] - (j == targets[r])) * grad_scale; };
    const std::string name = std::string("(") + type_name<T>() + ") " + std::to_string(rows) + " x " +
                             std::to_string(classes);

    // The vocab-parallel kernels on two slices, before the fused kernel overwrites the logits.
    const int split = (classes / 16) * 8;
    const Slice<T> a(logits, targets, rows, classes, 0, split), b(logits, targets, rows, classes, split, classes - split);
    const Slice<T>* ranks[2] = {&a, &b};
    Buf<float> max(rows), sums(2 * (size_t)rows), losses(rows);
    for (int r = 0; r < rows; ++r) max[r] = -INFINITY, sums[r] = sums[rows + r] = 0.f;
    // Row maxima per rank, then their max (NCCL max).
    for (const Slice<T>* k : ranks) {
        Buf<float> local(rows);
        emu::launch(dim3(rows), RETRO_CE_BLOCK, 0,
                    [&] { RETRO_KERNEL(T, vocab_ce_row_max)(k->logits.p, k->width, local.p); });
        for (int r = 0; r < rows; ++r) max[r] = fmaxf(max[r], local[r]);
    }
    // Sums of exponentials and target logits per rank, then their sum (NCCL sum).
    for (const Slice<T>* k : ranks) {
        Buf<float> local(2 * (size_t)rows);
        emu::launch(dim3(rows), RETRO_CE_BLOCK, 0, [&] {
            RETRO_KERNEL(T, vocab_ce_row_sums)(k->logits.p, k->width, max.p, k->targets.p, local.p);
        });
        for (size_t e = 0; e < 2 * (size_t)rows; ++e) sums[e] += local[e];
    }
    for (int rank = 0; rank < 2; ++rank) {
        const Slice<T>& k = *ranks[rank];
        emu::launch(dim3(rows), RETRO_CE_BLOCK, 0, [&] {
            RETRO_KERNEL(T, vocab_ce_loss_grad)(k.logits.p, k.width, max.p, sums.p, k.targets.p, grad_scale, losses.p,
                                                k.grad.p);
        });
        // A row whose target no rank holds (-1) is not ignored by the vocab-parallel loss: Megatron's
        // vocab-parallel loss has no ignore index; the model masks such rows with the loss mask.
        std::vector<double> want_l(rows), want_g((size_t)rows * k.width);
        for (int r = 0; r < rows; ++r) {
            want_l[r] = lse[r] - target_logit[r];
            for (int j = 0; j < k.width; ++j) want_g[(size_t)r * k.width + j] = grad(r, k.first + j);
        }
        const std::string label = "vocab-parallel cross-entropy " + name + ", rank " + std::to_string(rank) + " of 2";
        expect_close(label + ": loss", losses, want_l, 1e-5, 1e-5);
        expect_close(label + ": gradient slice", k.grad, want_g, tol<T>() * 1e-2, tol<T>());
    }

    // The fused kernel: an ignored row (-1) has loss 0 and no gradient.
    std::vector<double> want_loss(rows), want_grad((size_t)rows * classes);
    for (int r = 0; r < rows; ++r) {
        want_loss[r] = targets[r] < 0 ? 0.0 : lse[r] - target_logit[r];
        for (int j = 0; j < classes; ++j) want_grad[(size_t)r * classes + j] = targets[r] < 0 ? 0.0 : grad(r, j);
    }
    Buf<float> fused_losses(rows);
    emu::launch(dim3(rows), RETRO_CE_BLOCK, 0, [&] {
        RETRO_KERNEL(T, softmax_cross_entropy)(logits.p, fused_losses.p, targets.p, classes, grad_scale);
    });
    expect_close("fused cross-entropy " + name + " (row 1 ignored): loss", fused_losses, want_loss, 1e-5, 1e-5);
    expect_close("fused cross-entropy " + name + ": gradient in place", logits, want_grad, tol<T>() * 1e-2, tol<T>());
}

}  // namespace

void loss_tests() {
    cross_entropy<bf16>(4, 1000);
    cross_entropy<float>(3, 8200);
    cross_entropy<bf16>(2, 8200);
}
