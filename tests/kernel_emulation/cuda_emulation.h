// A CPU stand-in for the CUDA features retro's kernels use, so that kernels/*.cu compile as C++ (g++)
// and run on a machine without a GPU (scripts/kernel-emulation). It is a test of the kernels' logic, not
// of the GPU: a CUDA thread is an OS thread, the blocks of a grid run one after another, and warps are
// not lock-step. What it checks, and a GPU run cannot be replaced by it:
//   - indexing, tiling, masking and the tensor-core fragment layouts, against references in double;
//   - barriers: a __syncthreads or warp collective that not every thread reaches is reported (no hang);
//   - under ThreadSanitizer, shared-memory races between the threads of a block;
//   - under AddressSanitizer / UBSan, reads and writes outside a buffer (every buffer and the dynamic
//     shared memory are allocated at their exact size) and misaligned vector loads.
// Included before each kernel file (g++ -include); tests/kernel_emulation/cuda_bf16.h stands in for
// CUDA's header of that name.
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include <sys/mman.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#define RETRO_KERNEL_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// Static shared arrays are shared by the block's threads as on the GPU, but they start at zero and keep
// the previous block's values (only the dynamic shared memory is refilled with NaN bytes per block), so a
// read of a static shared element the block never wrote is not seen.
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

#include "vector_types.h"
#include "cuda_bf16.h"

template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) { return a < b ? a : b; }
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline void sincospif(float x, float* s, float* c) {
    *s = sinf((float)M_PI * x);
    *c = cosf((float)M_PI * x);
}
inline uint32_t __umulhi(uint32_t a, uint32_t b) { return (uint32_t)(((uint64_t)a * b) >> 32); }

namespace emu {

[[noreturn]] inline void fail(const char* what) {
    fprintf(stderr, "kernel emulation: %s\n", what);
    fflush(stderr);
    abort();
}

inline double barrier_timeout_s = 20.0;

// How a block's CUDA threads run. By default as fibers: the threads of a block take turns on the launching
// OS thread, switching only where a thread waits at a barrier (a round in which no thread can move on is
// a barrier some thread never reaches: reported). Deterministic, and cheap enough to run whole models
// (scripts/device-emulation). With RETRO_EMULATION_THREADS defined (the ThreadSanitizer build), each CUDA
// thread is an OS thread, so ThreadSanitizer sees the block's threads race.
#ifndef RETRO_EMULATION_THREADS
#define RETRO_EMULATION_FIBERS 1
// emu_switch_stack(save, next): save the callee-saved registers on the current stack and its pointer in
// *save, then continue on stack `next` (x86-64 System V; one COMDAT copy however many files include this).
extern "C" void emu_switch_stack(void** save, void* next);
asm(R"(
    .pushsection .text.emu_switch_stack,"axG",@progbits,emu_switch_stack,comdat
    .weak emu_switch_stack
    .type emu_switch_stack, @function
emu_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_stack, .-emu_switch_stack
    .popsection
)");
// A fiber's stack: 512 KiB below its top.
constexpr size_t fiber_stack_bytes = 512 << 10;
struct Fiber {
    void* sp = nullptr;
    bool done = false;
    void* top = nullptr;
    void* asan_fake_stack = nullptr;  // AddressSanitizer's, while switched away
};
inline void* scheduler_sp = nullptr;
inline Fiber* running = nullptr;
// Set by the scheduler after a round in which no thread arrived anywhere, returned or was released.
inline bool stalled = false;
inline uint64_t progress = 0;

// AddressSanitizer checks accesses against the running stack's bounds and keeps a fake stack per stack
// (use after return), so it is told of every switch: before it the stack switched to, after it the
// switch's end (and so the bounds of the stack switched from). Nothing without ASan.
#if defined(__SANITIZE_ADDRESS__)
inline const void* scheduler_stack_bottom = nullptr;
inline size_t scheduler_stack_bytes = 0;
inline void asan_to_fiber(void** save, const Fiber& f) {
    __sanitizer_start_switch_fiber(save, (unsigned char*)f.top - fiber_stack_bytes, fiber_stack_bytes);
}
inline void asan_to_scheduler(void** save) {
    __sanitizer_start_switch_fiber(save, scheduler_stack_bottom, scheduler_stack_bytes);
}
inline void asan_in_fiber(void* fake) {
    __sanitizer_finish_switch_fiber(fake, &scheduler_stack_bottom, &scheduler_stack_bytes);
}
inline void asan_in_scheduler(void* fake) { __sanitizer_finish_switch_fiber(fake, nullptr, nullptr); }
// A finished fiber's first frame never returned, so its redzones stay poisoned at the stack's top, where
// the next fiber on the stack begins: cleared before the stack is reused.
inline void asan_fresh_stack(void* top) {
    const size_t bytes = 16 << 10;
    __asan_unpoison_memory_region((unsigned char*)top - bytes, bytes);
}
#else
inline void asan_fresh_stack(void*) {}
inline void asan_to_fiber(void**, const Fiber&) {}
inline void asan_to_scheduler(void**) {}
inline void asan_in_fiber(void*) {}
inline void asan_in_scheduler(void*) {}
#endif

inline void yield_fiber() {
    Fiber* me = running;
    asan_to_scheduler(&me->asan_fake_stack);
    emu_switch_stack(&me->sp, scheduler_sp);
    asan_in_fiber(me->asan_fake_stack);
}
#endif

// A barrier for `expected` threads; a thread that returns leaves it (CUDA: exited threads do not hold up
// __syncthreads). A wait longer than barrier_timeout_s (20 s) is a barrier some thread never reaches:
// reported, not a hang.
struct Barrier {
    std::mutex m;
    std::condition_variable cv;
    int expected = 0, arrived = 0, left = 0;
    int left_at_release = 0;  // threads that had returned when the last wait ended
    uint64_t generation = 0;

    // Returns how many threads had returned when this wait ended.
    int arrive_and_wait(const char* what) {
#ifdef RETRO_EMULATION_FIBERS
        const uint64_t gen = generation;
        ++progress;
        if (++arrived == expected) {
            release();
            return left_at_release;
        }
        while (generation == gen) {
            if (stalled) fail(what);
            yield_fiber();
        }
        return left_at_release;
#else
        std::unique_lock<std::mutex> lock(m);
        const uint64_t gen = generation;
        if (++arrived == expected) {
            release();
            return left_at_release;
        }
        if (!cv.wait_for(lock, std::chrono::duration<double>(barrier_timeout_s), [&] { return generation != gen; }))
            fail(what);
        return left_at_release;
#endif
    }

    void leave() {
#ifdef RETRO_EMULATION_FIBERS
        ++progress;
#endif
        std::lock_guard<std::mutex> lock(m);
        --expected;
        ++left;
        if (arrived > 0 && arrived == expected) release();
    }

  private:
    void release() {
        arrived = 0;
        left_at_release = left;
        ++generation;
        cv.notify_all();
    }
};

// Per warp: its barrier and an exchange slot per lane (shuffles, and the MMA's operand fragments). A
// collective writes its lane's slot, waits once for the warp, then reads the others'. Consecutive
// collectives use the two slot sets in turn: a lane can be at most one collective ahead of the slowest
// (the next wait holds it), so it never overwrites a slot that is still being read.
struct Warp {
    Barrier barrier;
    alignas(16) uint32_t slots[2][32][8];
    int turn[32] = {};
    uint32_t* mine(int lane) { return slots[turn[lane]][lane]; }
    const uint32_t* theirs(int lane, int other) const { return slots[turn[lane]][other]; }
    void next(int lane) { turn[lane] ^= 1; }
};

struct Block {
    Barrier barrier;
    std::vector<Warp> warps;
};

struct Thread {
    uint3 thread{}, block{};
    Block* owner = nullptr;
};

inline thread_local Thread self;
inline dim3 grid_dim, block_dim;
inline unsigned char* dynamic_shared = nullptr;

inline Warp& warp() { return self.owner->warps[self.thread.x / 32]; }

// Every lane of the warp must take part in a warp collective with the full mask.
inline void warp_sync(const char* what) {
    if (warp().barrier.arrive_and_wait(what) != 0) fail("a warp collective ran after lanes of its warp had returned");
}

#ifdef RETRO_EMULATION_FIBERS
// A fiber's stack: 512 KiB with an inaccessible guard page below it (an overflow faults), kept for
// later launches.
inline void* fiber_stack(size_t t) {
    static std::vector<unsigned char*> stacks;
    const size_t bytes = fiber_stack_bytes, guard = 4096;
    while (stacks.size() <= t) {
        void* p = mmap(nullptr, bytes + guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) fail("mmap of a fiber stack");
        mprotect(p, guard, PROT_NONE);
        stacks.push_back((unsigned char*)p + guard + bytes);
    }
    return stacks[t];
}

inline const std::function<void()>* fiber_kernel = nullptr;

// A fiber's first frame: run the kernel as thread self, leave the block's barriers, return to the
// scheduler for good.
inline void fiber_main() {
    asan_in_fiber(nullptr);
    (*fiber_kernel)();
    self.owner->warps[self.thread.x / 32].barrier.leave();
    self.owner->barrier.leave();
    running->done = true;
    void* unused;
    asan_to_scheduler(nullptr);  // this stack's frames are over
    emu_switch_stack(&unused, scheduler_sp);
    fail("a finished fiber was resumed (an emulation bug)");
}

// The blocks one after another; in each, the threads take turns until all have returned.
inline void run_fibers(Block& b, uint64_t blocks, const std::function<void()>& kernel, const std::function<void()>& reset) {
    const uint32_t threads = block_dim.x;
    std::vector<Fiber> fibers(threads);
    fiber_kernel = &kernel;
    for (uint64_t i = 0; i < blocks; ++i) {
        const uint3 block_index{(uint32_t)(i % grid_dim.x), (uint32_t)(i / grid_dim.x % grid_dim.y),
                                (uint32_t)(i / grid_dim.x / grid_dim.y)};
        for (uint32_t t = 0; t < threads; ++t) {
            // The frame emu_switch_stack pops: six registers, then fiber_main as the return address, with
            // the stack aligned as after a call.
            void* top = fiber_stack(t);
            asan_fresh_stack(top);
            void** sp = (void**)top;
            *--sp = nullptr;
            *--sp = (void*)&fiber_main;
            for (int r = 0; r < 6; ++r) *--sp = nullptr;
            fibers[t] = Fiber{sp, false, top, nullptr};
        }
        uint32_t live = threads;
        stalled = false;
        while (live) {
            const uint64_t before = progress;
            for (uint32_t t = 0; t < threads; ++t) {
                if (fibers[t].done) continue;
                self.thread = {t, 0, 0};
                self.block = block_index;
                self.owner = &b;
                running = &fibers[t];
                void* scheduler_fake_stack = nullptr;
                asan_to_fiber(&scheduler_fake_stack, fibers[t]);
                emu_switch_stack(&scheduler_sp, fibers[t].sp);
                asan_in_scheduler(scheduler_fake_stack);
                if (fibers[t].done) --live;
            }
            if (live && progress == before) stalled = true;  // the next turn of a waiting thread reports it
        }
        reset();
    }
    fiber_kernel = nullptr;
}
#endif

// Run `kernel` over `grid` blocks of `block` threads with `shared_bytes` of dynamic shared memory. One OS
// thread per CUDA thread of a block, reused for every block in turn: between two blocks all of them meet,
// and thread 0 resets the barriers and refills the shared memory with 0xff bytes (NaN as f32 and bf16,
// so a read of an element the block did not write shows).
inline void launch(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& kernel) {
    if (block.y != 1 || block.z != 1 || block.x % 32 != 0 || block.x == 0 || block.x > 1024)
        fail("blocks must be 1-D, a multiple of 32 threads and at most 1024 (retro's launchers only make those)");
    if (grid.y > 65535 || grid.z > 65535) fail("grid y / z above 65535");
    if (shared_bytes > 227 * 1024) fail("more dynamic shared memory than an H100 block can have (227 KiB)");
    grid_dim = grid;
    block_dim = block;
    const int threads = (int)block.x;
    Block b;
    b.warps = std::vector<Warp>(block.x / 32);
    Barrier between;
    between.expected = threads;
    auto reset = [&] {
        b.barrier.expected = threads, b.barrier.left = 0;
        for (Warp& w : b.warps) w.barrier.expected = 32, w.barrier.left = 0;
        if (shared_bytes) memset(dynamic_shared, 0xff, shared_bytes);
    };
    dynamic_shared = shared_bytes ? (unsigned char*)malloc(shared_bytes) : nullptr;
    reset();
    const uint64_t blocks = (uint64_t)grid.x * grid.y * grid.z;
#ifdef RETRO_EMULATION_FIBERS
    run_fibers(b, blocks, kernel, reset);
#else
    std::vector<std::thread> pool;
    pool.reserve(block.x);
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            self.thread = {(uint32_t)t, 0, 0};
            self.owner = &b;
            for (uint64_t i = 0; i < blocks; ++i) {
                self.block = {(uint32_t)(i % grid.x), (uint32_t)(i / grid.x % grid.y), (uint32_t)(i / grid.x / grid.y)};
                kernel();
                b.warps[t / 32].barrier.leave();
                b.barrier.leave();
                between.arrive_and_wait("threads of a finished block not meeting (an emulation bug)");
                if (t == 0) reset();
                between.arrive_and_wait("threads of a finished block not meeting (an emulation bug)");
            }
        });
    for (auto& th : pool) th.join();
#endif
    free(dynamic_shared);
    dynamic_shared = nullptr;
}

template <typename T>
inline T shuffle(unsigned mask, T v, int src_of_lane(int, int), int arg) {
    static_assert(sizeof(T) <= sizeof(uint32_t) * 8, "shuffle of a value wider than the exchange slot");
    if (mask != 0xffffffffu) fail("only full-warp shuffles are emulated");
    Warp& w = warp();
    const int lane = (int)(self.thread.x & 31);
    memcpy(w.mine(lane), &v, sizeof v);
    warp_sync("a warp shuffle that not every lane of the warp reaches");
    T out;
    memcpy(&out, w.theirs(lane, src_of_lane(lane, arg)), sizeof out);
    w.next(lane);
    return out;
}

inline int lane_xor(int lane, int mask) {
    if (mask < 0 || mask > 31) fail("a shuffle's lane mask outside 0..31");
    return lane ^ mask;
}
inline int lane_down(int lane, int delta) { return lane + delta < 32 ? lane + delta : lane; }

// Element k & 1 of a register holding two bf16 (the lower-numbered one in the low half).
inline float bf16_at(uint32_t reg, int k) {
    return __bfloat162float(__nv_bfloat16{(uint16_t)(k & 1 ? reg >> 16 : reg & 0xffffu)});
}

}  // namespace emu

#define threadIdx (emu::self.thread)
#define blockIdx (emu::self.block)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

// A __syncthreads after some of the block's threads returned is undefined on a GPU (the guide requires
// the condition around it to be the same for the whole block): reported.
inline void __syncthreads() {
    if (emu::self.owner->barrier.arrive_and_wait("a __syncthreads that not every thread of the block reaches") != 0)
        emu::fail("a __syncthreads after threads of the block had returned");
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) { return emu::shuffle(mask, v, emu::lane_xor, lane_mask); }
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta) { return emu::shuffle(mask, v, emu::lane_down, (int)delta); }

// The block's dynamic shared memory: the buffer the launch allocated at its exact size.
#define RETRO_DYNAMIC_SHARED(name) unsigned char* name = emu::dynamic_shared

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, c += A B, written from the PTX ISA's fragment
// layouts (independently of kernels/attention.cu's load_a / load_b). Lane l = 4 g + t (g = groupID,
// t = threadID_in_group); each register holds two bf16, the lower-numbered element in the low half.
//   A (16 x 16, row): a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..]
//   B (16 x 8, col):  b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g]
//   C (16 x 8):       c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..2t+1]
// Products of bf16 are exact in f32; the sum is taken in double, then added to c (the hardware's order is
// unspecified, so results may differ from a GPU's in the last bits).
inline void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    emu::Warp& w = emu::warp();
    const int lane = (int)(threadIdx.x & 31);
    uint32_t* mine = w.mine(lane);
    for (int i = 0; i < 4; ++i) mine[i] = a[i];
    mine[4] = b[0];
    mine[5] = b[1];
    emu::warp_sync("an mma.sync that not every lane of the warp reaches");
    const int g = lane >> 2, t = lane & 3;
    for (int e = 0; e < 4; ++e) {
        const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        double sum = 0.0;
        for (int k = 0; k < 16; ++k) {
            const int a_lane = (row & 7) * 4 + ((k & 7) >> 1), a_reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
            const int b_lane = col * 4 + ((k & 7) >> 1), b_reg = 4 + (k >= 8 ? 1 : 0);
            sum += (double)emu::bf16_at(w.theirs(lane, a_lane)[a_reg], k) * emu::bf16_at(w.theirs(lane, b_lane)[b_reg], k);
        }
        c[e] = (float)((double)c[e] + sum);
    }
    w.next(lane);
}
