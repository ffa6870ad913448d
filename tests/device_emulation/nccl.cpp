// A stand-in for libnccl.so on the emulated device (see driver.cpp): the collectives retro uses
// (all-reduce, reduce-scatter, all-gather, broadcast) between the processes of one machine, through a
// file mapped into every rank (the unique id names it), so `mpirun -np N` runs of the NCCL paths work on
// CPUs. Each collective runs on the stream it was queued on, in issue order per communicator (as NCCL
// orders a communicator's work), in chunks: every rank copies its part of a chunk into its slot of the
// file, all ranks meet, each reads what it needs, all meet again.
//
// Failures behave as NCCL's do: a rank whose peer process died sees ncclRemoteError from
// ncclCommGetAsyncError while its collective stays stuck, until ncclCommAbort (retro's watchdog) frees
// it; the stuck collective then returns without writing its output. Sums are taken in rank order, in f32
// for bf16 and f32, f64 for f64.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "cuda_bf16.h"
#include "device.h"

typedef int ncclResult_t;
enum : int { ncclSuccess = 0, ncclSystemError = 2, ncclInvalidArgument = 4, ncclInvalidUsage = 5, ncclRemoteError = 6 };
enum : int { ncclInt8 = 0, ncclUint8 = 1, ncclInt32 = 2, ncclUint32 = 3, ncclInt64 = 4, ncclUint64 = 5,
             ncclFloat16 = 6, ncclFloat32 = 7, ncclFloat64 = 8, ncclBfloat16 = 9 };
enum : int { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3 };

struct UniqueId {
    char internal[128];
};

static const size_t slot_bytes = 4 << 20;
static const int max_ranks = 64;

// The mapped file's header; slot r (slot_bytes) of rank r follows it.
struct Shared {
    std::atomic<uint32_t> arrived;
    std::atomic<uint32_t> generation;
    std::atomic<uint32_t> joined;
    int32_t pids[max_ranks];
};
static const size_t header_bytes = 4096;
static_assert(sizeof(Shared) <= header_bytes, "header");

struct Comm {
    int rank = 0, size = 1, device = 0;
    Shared* shared = nullptr;
    unsigned char* slots = nullptr;
    size_t mapped = 0;
    std::atomic<bool> aborted{false};
    std::atomic<int> async_error{ncclSuccess};
    // Issue order: a collective runs when `next_to_run` reaches its ticket.
    std::mutex order;
    std::condition_variable turn;
    uint64_t issued = 0, next_to_run = 0;

    unsigned char* slot(int r) const { return slots + (size_t)r * slot_bytes; }

    // Whether a peer's process has ended (NCCL sees its connections close).
    bool peer_died() const {
        for (int r = 0; r < size; ++r)
            if (r != rank && kill(shared->pids[r], 0) != 0 && errno == ESRCH) return true;
        return false;
    }

    // All ranks meet. False when the communicator was aborted while waiting (the collective is abandoned).
    bool barrier() {
        if (size == 1) return !aborted;
        const uint32_t gen = shared->generation.load();
        if (shared->arrived.fetch_add(1) + 1 == (uint32_t)size) {
            shared->arrived.store(0);
            shared->generation.fetch_add(1);
            return true;
        }
        auto checked = std::chrono::steady_clock::now();
        for (unsigned spins = 0; shared->generation.load() == gen; ++spins) {
            if (aborted) return false;
            if (spins < 1000) {
                std::this_thread::yield();
                continue;
            }
            std::this_thread::sleep_for(std::chrono::microseconds(100));
            if (std::chrono::steady_clock::now() - checked > std::chrono::milliseconds(200)) {
                checked = std::chrono::steady_clock::now();
                if (peer_died()) async_error = ncclRemoteError;
            }
        }
        return true;
    }
};

#define API extern "C" __attribute__((visibility("default")))

static size_t element_bytes(int type) {
    switch (type) {
        case ncclInt8: case ncclUint8: return 1;
        case ncclFloat16: case ncclBfloat16: return 2;
        case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
        case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
        default: return 0;
    }
}


template <typename T>
static T combine(int op, T a, T b) {
    switch (op) {
        case ncclSum: return a + b;
        case ncclProd: return a * b;
        case ncclMax: return a < b ? b : a;
        default: return b < a ? b : a;
    }
}

// out[i] = op over ranks r of in(r)[i], for `count` elements (in(r) = slot r + offset bytes).
static void reduce(const Comm& c, size_t offset, int type, int op, size_t count, void* out) {
    for (size_t i = 0; i < count; ++i) {
        switch (type) {
            case ncclFloat32: {
                float acc = ((const float*)(c.slot(0) + offset))[i];
                for (int r = 1; r < c.size; ++r) acc = combine(op, acc, ((const float*)(c.slot(r) + offset))[i]);
                ((float*)out)[i] = acc;
                break;
            }
            case ncclFloat64: {
                double acc = ((const double*)(c.slot(0) + offset))[i];
                for (int r = 1; r < c.size; ++r) acc = combine(op, acc, ((const double*)(c.slot(r) + offset))[i]);
                ((double*)out)[i] = acc;
                break;
            }
            case ncclBfloat16: {
                float acc = __bfloat162float(((const __nv_bfloat16*)(c.slot(0) + offset))[i]);
                for (int r = 1; r < c.size; ++r)
                    acc = combine(op, acc, __bfloat162float(((const __nv_bfloat16*)(c.slot(r) + offset))[i]));
                ((__nv_bfloat16*)out)[i] = __float2bfloat16(acc);
                break;
            }
            default: emu_device::fault("NCCL emulation: reductions of this datatype are not emulated");
        }
    }
}

API ncclResult_t ncclGetVersion(int* version) {
    *version = 22805;
    return ncclSuccess;
}

API const char* ncclGetErrorString(ncclResult_t r) {
    switch (r) {
        case ncclSuccess: return "no error";
        case ncclSystemError: return "unhandled system error (emulation)";
        case ncclInvalidArgument: return "invalid argument (emulation)";
        case ncclInvalidUsage: return "invalid usage (emulation)";
        case ncclRemoteError: return "remote process exited or there was a network error (emulation)";
        default: return "unknown result code";
    }
}

API const char* ncclGetLastError(void*) { return ""; }

API ncclResult_t ncclGetUniqueId(UniqueId* id) {
    memset(id, 0, sizeof *id);
    std::random_device random;
    const char* tmp = getenv("TMPDIR");
    snprintf(id->internal, sizeof id->internal, "%s/retro-nccl-emulation-%d-%08x%08x", tmp && *tmp ? tmp : "/tmp",
             (int)getpid(), random(), random());
    return ncclSuccess;
}

API ncclResult_t ncclCommInitRank(Comm** out, int size, UniqueId id, int rank) {
    if (size < 1 || size > max_ranks || rank < 0 || rank >= size) return ncclInvalidArgument;
    id.internal[sizeof id.internal - 1] = 0;
    const std::string path = id.internal;
    if (path.find("retro-nccl-emulation-") == std::string::npos) return ncclInvalidArgument;
    Comm* c = new Comm;
    c->rank = rank, c->size = size;
    c->mapped = header_bytes + (size_t)size * slot_bytes;
    int fd = -1;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    if (rank == 0) {
        fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
        if (fd < 0 || ftruncate(fd, (off_t)c->mapped) != 0) return ncclSystemError;
    } else {
        // Wait for rank 0 to create the file at its full size.
        for (;;) {
            fd = open(path.c_str(), O_RDWR);
            struct stat st;
            if (fd >= 0 && fstat(fd, &st) == 0 && (size_t)st.st_size == c->mapped) break;
            if (fd >= 0) close(fd);
            if (std::chrono::steady_clock::now() > deadline) return ncclSystemError;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    }
    void* map = mmap(nullptr, c->mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return ncclSystemError;
    c->shared = (Shared*)map;
    c->slots = (unsigned char*)map + header_bytes;
    c->shared->pids[rank] = (int32_t)getpid();
    // Every rank joins, then rank 0 removes the file (the mappings stay).
    c->shared->joined.fetch_add(1);
    while (c->shared->joined.load() < (uint32_t)size) {
        if (std::chrono::steady_clock::now() > deadline) return ncclSystemError;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (!c->barrier()) return ncclSystemError;
    if (rank == 0) unlink(path.c_str());
    *out = c;
    return ncclSuccess;
}

API ncclResult_t ncclCommCount(const Comm* c, int* count) {
    *count = c->size;
    return ncclSuccess;
}

API ncclResult_t ncclCommUserRank(const Comm* c, int* rank) {
    *rank = c->rank;
    return ncclSuccess;
}

API ncclResult_t ncclCommCuDevice(const Comm* c, int* device) {
    *device = c->device;
    return ncclSuccess;
}

API ncclResult_t ncclCommGetAsyncError(Comm* c, ncclResult_t* state) {
    *state = c->async_error.load();
    return ncclSuccess;
}

API ncclResult_t ncclCommAbort(Comm* c) {
    // The collectives stuck in a barrier return; the communicator is left mapped (a stream may still be
    // leaving it), as the process ends after an abort.
    c->aborted = true;
    return ncclSuccess;
}

API ncclResult_t ncclCommDestroy(Comm* c) {
    {
        std::unique_lock<std::mutex> l(c->order);
        c->turn.wait(l, [&] { return c->next_to_run == c->issued || c->aborted; });
    }
    if (c->aborted) return ncclSuccess;
    munmap(c->shared, c->mapped);
    delete c;
    return ncclSuccess;
}

API ncclResult_t ncclGroupStart() { return ncclSuccess; }
API ncclResult_t ncclGroupEnd() { return ncclSuccess; }

// Queue `body` (which runs the collective's chunks) on `stream` in the communicator's issue order.
template <typename Body>
static ncclResult_t issue(Comm* c, emu_device::Stream* stream, Body body) {
    uint64_t ticket;
    {
        std::lock_guard<std::mutex> l(c->order);
        ticket = c->issued++;
    }
    emu_device::enqueue(stream, [c, ticket, body] {
        {
            std::unique_lock<std::mutex> l(c->order);
            c->turn.wait(l, [&] { return c->next_to_run == ticket; });
        }
        if (!c->aborted && c->async_error == ncclSuccess) body();
        std::lock_guard<std::mutex> l(c->order);
        ++c->next_to_run;
        c->turn.notify_all();
    });
    return ncclSuccess;
}

static bool buffers_ok(const void* send, size_t send_bytes, const void* recv, size_t recv_bytes) {
    return (send_bytes == 0 || emu_device::device_range((uint64_t)send, send_bytes)) &&
           (recv_bytes == 0 || emu_device::device_range((uint64_t)recv, recv_bytes));
}

// A collective over [0, count) in pieces of at most `chunk` elements: `stage(first, n)` fills this rank's
// slot, the ranks meet, `finish(first, n)` reads the slots, the ranks meet again (so no slot is refilled
// while a peer reads it). Stops once a barrier fails (the communicator aborted, or a peer died).
template <typename Stage, typename Finish>
static void in_chunks(Comm* c, size_t count, size_t chunk, Stage stage, Finish finish) {
    for (size_t first = 0; first < count; first += chunk) {
        const size_t n = std::min(chunk, count - first);
        stage(first, n);
        if (!c->barrier()) return;
        finish(first, n);
        if (!c->barrier()) return;
    }
}

API ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, int type, int op, Comm* c,
                               emu_device::Stream* stream) {
    const size_t e = element_bytes(type);
    if (!e || op < ncclSum || op > ncclMin) return ncclInvalidArgument;
    if (!buffers_ok(send, count * e, recv, count * e)) return ncclInvalidArgument;
    return issue(c, stream, [=] {
        in_chunks(
            c, count, slot_bytes / e,
            [&](size_t first, size_t n) { memcpy(c->slot(c->rank), (const unsigned char*)send + first * e, n * e); },
            [&](size_t first, size_t n) { reduce(*c, 0, type, op, n, (unsigned char*)recv + first * e); });
    });
}

API ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t recv_count, int type, int op, Comm* c,
                                   emu_device::Stream* stream) {
    const size_t e = element_bytes(type);
    if (!e || op < ncclSum || op > ncclMin) return ncclInvalidArgument;
    if (!buffers_ok(send, recv_count * c->size * e, recv, recv_count * e)) return ncclInvalidArgument;
    return issue(c, stream, [=] {
        // Per chunk, every rank's slot holds the chunk of each rank's segment, segment r at r * n.
        in_chunks(
            c, recv_count, slot_bytes / e / (size_t)c->size,
            [&](size_t first, size_t n) {
                for (int r = 0; r < c->size; ++r)
                    memcpy(c->slot(c->rank) + (size_t)r * n * e,
                           (const unsigned char*)send + ((size_t)r * recv_count + first) * e, n * e);
            },
            [&](size_t first, size_t n) {
                reduce(*c, (size_t)c->rank * n * e, type, op, n, (unsigned char*)recv + first * e);
            });
    });
}

API ncclResult_t ncclAllGather(const void* send, void* recv, size_t send_count, int type, Comm* c,
                               emu_device::Stream* stream) {
    const size_t e = element_bytes(type);
    if (!e) return ncclInvalidArgument;
    if (!buffers_ok(send, send_count * e, recv, send_count * c->size * e)) return ncclInvalidArgument;
    return issue(c, stream, [=] {
        in_chunks(
            c, send_count, slot_bytes / e,
            [&](size_t first, size_t n) { memcpy(c->slot(c->rank), (const unsigned char*)send + first * e, n * e); },
            [&](size_t first, size_t n) {
                for (int r = 0; r < c->size; ++r)
                    memcpy((unsigned char*)recv + ((size_t)r * send_count + first) * e, c->slot(r), n * e);
            });
    });
}

API ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, int type, int root, Comm* c,
                               emu_device::Stream* stream) {
    const size_t e = element_bytes(type);
    if (!e || root < 0 || root >= c->size) return ncclInvalidArgument;
    if (!buffers_ok(c->rank == root ? send : nullptr, c->rank == root ? count * e : 0, recv, count * e))
        return ncclInvalidArgument;
    return issue(c, stream, [=] {
        in_chunks(
            c, count, slot_bytes / e,
            [&](size_t first, size_t n) {
                if (c->rank == root) memcpy(c->slot(root), (const unsigned char*)send + first * e, n * e);
            },
            [&](size_t first, size_t n) { memmove((unsigned char*)recv + first * e, c->slot(root), n * e); });
    });
}
