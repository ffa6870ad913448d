// A stand-in for libcuda.so.1 (the CUDA driver API), for running retro's device code on a machine without
// a GPU: scripts/device-emulation puts this library, libcublasLt.so and libnccl.so (cublaslt.cpp,
// nccl.cpp) first on LD_LIBRARY_PATH, and cudarc loads them as it would load NVIDIA's. Only the entry
// points retro reaches through cudarc are defined; a call to any other panics in cudarc naming the symbol.
//
// The emulated device:
//   - memory is host memory (cuMemAlloc: 256-byte aligned, filled with 0xff bytes, NaN as f32 and bf16, so
//     a kernel reading memory nothing wrote shows); every copy's and memset's range must lie inside one live
//     allocation, else the emulation reports the fault and aborts (a GPU would fault or corrupt memory);
//   - a stream is a worker thread running its work in order, concurrently with the host and other streams;
//     events order streams (cuStreamWaitEvent) and the host (cuEventSynchronize, cuEventQuery); copies to
//     pageable host memory return when done and copies from it are staged at the call, as the driver does;
//   - a kernel is kernels/*.cu compiled for the CPU (tests/kernel_emulation/cuda_emulation.h), found by its
//     entry point's name whatever module image is loaded; launches run one at a time on the whole device;
//   - the device reports itself as an 80 GiB compute capability 9.0 part named "retro device emulation".
// What it cannot show: anything about speed, the GPU's memory model, or code generation by nvcc.
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "device.h"

namespace emu_device {

[[noreturn]] void fault(const std::string& what) {
    fprintf(stderr, "device emulation: %s\n", what.c_str());
    fflush(stderr);
    abort();
}

// ---- streams --------------------------------------------------------------------------------------------

// How far a stream has got: shared with the events recorded on it and the streams waiting for them, so
// either may outlive the other (CUDA lets an event or a stream be destroyed with work still queued).
struct Progress {
    std::mutex m;
    std::condition_variable changed;
    uint64_t done = 0;

    void wait_for(uint64_t ticket) {
        std::unique_lock<std::mutex> l(m);
        changed.wait(l, [&] { return done >= ticket; });
    }

    bool reached(uint64_t ticket) {
        std::lock_guard<std::mutex> l(m);
        return done >= ticket;
    }
};

struct Stream {
    std::shared_ptr<Progress> progress = std::make_shared<Progress>();
    std::mutex m;
    std::condition_variable changed;
    std::deque<std::function<void()>> queue;
    uint64_t queued = 0;
    bool stopping = false;
    std::thread worker;

    Stream() : worker([this] { run(); }) {}
    ~Stream() {
        {
            std::lock_guard<std::mutex> l(m);
            stopping = true;
        }
        changed.notify_all();
        worker.join();
    }

    // Returns the ticket of the work: it has run when progress->done >= ticket.
    uint64_t push(std::function<void()> work) {
        std::lock_guard<std::mutex> l(m);
        queue.push_back(std::move(work));
        const uint64_t ticket = ++queued;
        changed.notify_all();
        return ticket;
    }

    // The ticket of the last work queued so far.
    uint64_t last() {
        std::lock_guard<std::mutex> l(m);
        return queued;
    }

  private:
    void run() {
        std::unique_lock<std::mutex> l(m);
        for (;;) {
            changed.wait(l, [&] { return stopping || !queue.empty(); });
            if (queue.empty()) return;
            std::function<void()> work = std::move(queue.front());
            queue.pop_front();
            l.unlock();
            work();
            {
                std::lock_guard<std::mutex> p(progress->m);
                ++progress->done;
            }
            progress->changed.notify_all();
            l.lock();
        }
    }
};

std::mutex registry_lock;
std::unordered_set<Stream*>& streams() {
    static std::unordered_set<Stream*> s;
    return s;
}

void synchronize(Stream* stream) {
    if (stream) {
        stream->progress->wait_for(stream->last());
        return;
    }
    std::vector<Stream*> all;
    {
        std::lock_guard<std::mutex> l(registry_lock);
        all.assign(streams().begin(), streams().end());
    }
    for (Stream* s : all) synchronize(s);
}

void enqueue(Stream* stream, std::function<void()> work) {
    if (stream) {
        stream->push(std::move(work));
        return;
    }
    synchronize(nullptr);
    work();
}

// ---- memory ---------------------------------------------------------------------------------------------

std::mutex memory_lock;
std::map<uint64_t, size_t> device_allocations;  // start -> bytes
std::map<uint64_t, size_t> pinned_allocations;
size_t device_bytes = 0;
const size_t total_device_bytes = 80ull << 30;

static bool inside(const std::map<uint64_t, size_t>& allocations, uint64_t ptr, size_t bytes) {
    std::lock_guard<std::mutex> l(memory_lock);
    auto it = allocations.upper_bound(ptr);
    if (it == allocations.begin()) return false;
    --it;
    return ptr >= it->first && ptr + bytes <= it->first + it->second;
}

bool device_range(uint64_t ptr, size_t bytes) { return inside(device_allocations, ptr, bytes); }
bool pinned_range(const void* ptr, size_t bytes) { return inside(pinned_allocations, (uint64_t)ptr, bytes); }

// ---- kernels --------------------------------------------------------------------------------------------

std::unordered_map<std::string, Bind>& kernels() {
    static std::unordered_map<std::string, Bind> k;
    return k;
}

void register_kernel(const char* name, Bind bind) {
    if (!kernels().emplace(name, bind).second) fault(std::string("two kernel files define entry point ") + name);
}

}  // namespace emu_device

using namespace emu_device;

// ---- the driver API -------------------------------------------------------------------------------------

typedef int CUresult;
enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_NOT_SUPPORTED = 801,
};
typedef int CUdevice;
typedef uint64_t CUdeviceptr;
struct Context {};
struct Module {};
struct Function {
    std::string name;
    Bind bind;
    int max_dynamic_shared = 48 * 1024;
};
// An event: the stream progress and ticket of its last record, and the time that record ran at.
struct Stamp {
    std::mutex m;
    std::chrono::steady_clock::time_point at;
};
struct Event {
    std::mutex m;
    std::shared_ptr<Progress> progress;  // nullptr: never recorded, or recorded on the legacy stream
    uint64_t ticket = 0;
    std::shared_ptr<Stamp> stamp = std::make_shared<Stamp>();
};
typedef Context* CUcontext;
typedef Module* CUmodule;
typedef Function* CUfunction;
typedef Stream* CUstream;
typedef Event* CUevent;

static Context primary_context;
static thread_local CUcontext current_context = nullptr;
static bool initialised = false;
static const char device_name[] = "retro device emulation (the CPU; not a GPU)";

static int device_count() {
    const char* n = getenv("RETRO_EMULATED_DEVICES");
    return n ? atoi(n) : 1;
}

#define API extern "C" __attribute__((visibility("default")))

API CUresult cuInit(unsigned flags) {
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    initialised = true;
    return CUDA_SUCCESS;
}

API CUresult cuDriverGetVersion(int* version) {
    *version = 13000;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetCount(int* count) {
    if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
    *count = device_count();
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGet(CUdevice* device, int ordinal) {
    if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (ordinal < 0 || ordinal >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    if (len <= 0) return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "%s", device_name);
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetUuid_v2(unsigned char uuid[16], CUdevice device) {
    memset(uuid, 0, 16);
    uuid[15] = (unsigned char)device;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetAttribute(int* value, int attribute, CUdevice) {
    switch (attribute) {
        case 1: *value = 1024; break;            // max threads per block
        case 8: *value = 48 * 1024; break;       // shared memory per block
        case 10: *value = 32; break;             // warp size
        case 16: *value = 132; break;            // multiprocessors
        case 75: *value = 9; break;              // compute capability major
        case 76: *value = 0; break;              // minor
        case 97: *value = 227 * 1024; break;     // shared memory per block, opt-in
        case 115: *value = 0; break;             // memory pools: none (cudarc then allocates synchronously)
        default: *value = 0; return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = total_device_bytes;
    return CUDA_SUCCESS;
}

API CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice device) {
    if (device < 0 || device >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    *ctx = &primary_context;
    return CUDA_SUCCESS;
}

API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }

API CUresult cuCtxSetCurrent(CUcontext ctx) {
    current_context = ctx;
    return CUDA_SUCCESS;
}

API CUresult cuCtxGetCurrent(CUcontext* ctx) {
    *ctx = current_context;
    return CUDA_SUCCESS;
}

API CUresult cuCtxSynchronize() {
    synchronize(nullptr);
    return CUDA_SUCCESS;
}

// ---- streams and events

API CUresult cuStreamCreate(CUstream* stream, unsigned) {
    Stream* s = new Stream;
    std::lock_guard<std::mutex> l(registry_lock);
    streams().insert(s);
    *stream = s;
    return CUDA_SUCCESS;
}

API CUresult cuStreamDestroy_v2(CUstream stream) {
    {
        std::lock_guard<std::mutex> l(registry_lock);
        if (!streams().erase(stream)) return CUDA_ERROR_INVALID_HANDLE;
    }
    // CUDA lets queued work finish after cuStreamDestroy returns; the worker drains it before exiting.
    delete stream;
    return CUDA_SUCCESS;
}

API CUresult cuStreamSynchronize(CUstream stream) {
    synchronize(stream);
    return CUDA_SUCCESS;
}

API CUresult cuEventCreate(CUevent* event, unsigned) {
    *event = new Event;
    return CUDA_SUCCESS;
}

API CUresult cuEventDestroy_v2(CUevent event) {
    delete event;
    return CUDA_SUCCESS;
}

API CUresult cuEventRecord(CUevent event, CUstream stream) {
    auto stamp = std::make_shared<Stamp>();
    if (!stream) {
        synchronize(nullptr);
        stamp->at = std::chrono::steady_clock::now();
        std::lock_guard<std::mutex> l(event->m);
        event->progress = nullptr;
        event->stamp = stamp;
        return CUDA_SUCCESS;
    }
    std::lock_guard<std::mutex> l(event->m);
    event->progress = stream->progress;
    event->stamp = stamp;
    event->ticket = stream->push([stamp] {
        std::lock_guard<std::mutex> l(stamp->m);
        stamp->at = std::chrono::steady_clock::now();
    });
    return CUDA_SUCCESS;
}

// The progress and ticket an event waits for (a never-recorded event has completed).
static std::pair<std::shared_ptr<Progress>, uint64_t> pending(CUevent event) {
    std::lock_guard<std::mutex> l(event->m);
    return {event->progress, event->ticket};
}

static std::chrono::steady_clock::time_point recorded_at(CUevent event) {
    std::shared_ptr<Stamp> stamp;
    {
        std::lock_guard<std::mutex> l(event->m);
        stamp = event->stamp;
    }
    std::lock_guard<std::mutex> l(stamp->m);
    return stamp->at;
}

API CUresult cuEventQuery(CUevent event) {
    auto [progress, ticket] = pending(event);
    return !progress || progress->reached(ticket) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

API CUresult cuEventSynchronize(CUevent event) {
    auto [progress, ticket] = pending(event);
    if (progress) progress->wait_for(ticket);
    return CUDA_SUCCESS;
}

API CUresult cuEventElapsedTime_v2(float* ms, CUevent start, CUevent end) {
    if (cuEventQuery(start) != CUDA_SUCCESS || cuEventQuery(end) != CUDA_SUCCESS) return CUDA_ERROR_NOT_READY;
    *ms = std::chrono::duration<float, std::milli>(recorded_at(end) - recorded_at(start)).count();
    return CUDA_SUCCESS;
}

API CUresult cuStreamWaitEvent(CUstream stream, CUevent event, unsigned) {
    auto [progress, ticket] = pending(event);
    if (!progress || (stream && progress == stream->progress)) return CUDA_SUCCESS;
    enqueue(stream, [progress = progress, ticket = ticket] { progress->wait_for(ticket); });
    return CUDA_SUCCESS;
}

// ---- memory

API CUresult cuMemAlloc_v2(CUdeviceptr* ptr, size_t bytes) {
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    {
        std::lock_guard<std::mutex> l(memory_lock);
        if (device_bytes + bytes > total_device_bytes) return CUDA_ERROR_OUT_OF_MEMORY;
    }
    // Exactly `bytes` (not rounded up), so under AddressSanitizer the redzone starts where the buffer ends.
    void* p = nullptr;
    if (posix_memalign(&p, 256, bytes) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    memset(p, 0xff, bytes);
    std::lock_guard<std::mutex> l(memory_lock);
    device_allocations[(uint64_t)p] = bytes;
    device_bytes += bytes;
    *ptr = (CUdeviceptr)p;
    return CUDA_SUCCESS;
}

API CUresult cuMemFree_v2(CUdeviceptr ptr) {
    // cuMemFree synchronises the device before freeing, so no queued kernel reads freed memory.
    synchronize(nullptr);
    std::lock_guard<std::mutex> l(memory_lock);
    auto it = device_allocations.find(ptr);
    if (it == device_allocations.end()) return CUDA_ERROR_INVALID_VALUE;
    device_bytes -= it->second;
    device_allocations.erase(it);
    free((void*)ptr);
    return CUDA_SUCCESS;
}

API CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::mutex> l(memory_lock);
    *free_bytes = total_device_bytes - device_bytes;
    *total = total_device_bytes;
    return CUDA_SUCCESS;
}

API CUresult cuMemHostAlloc(void** ptr, size_t bytes, unsigned) {
    void* p = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    std::lock_guard<std::mutex> l(memory_lock);
    pinned_allocations[(uint64_t)p] = bytes;
    *ptr = p;
    return CUDA_SUCCESS;
}

API CUresult cuMemFreeHost(void* ptr) {
    synchronize(nullptr);
    std::lock_guard<std::mutex> l(memory_lock);
    if (!pinned_allocations.erase((uint64_t)ptr)) return CUDA_ERROR_INVALID_VALUE;
    free(ptr);
    return CUDA_SUCCESS;
}

static void check_device(const char* what, uint64_t ptr, size_t bytes) {
    if (!device_range(ptr, bytes)) {
        char m[200];
        snprintf(m, sizeof m, "%s of %zu bytes at device address 0x%llx: outside every live allocation", what,
                 bytes, (unsigned long long)ptr);
        fault(m);
    }
}

API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, CUstream stream) {
    if (bytes == 0) return CUDA_SUCCESS;
    check_device("host-to-device copy", dst, bytes);
    if (pinned_range(src, bytes)) {
        enqueue(stream, [=] { memcpy((void*)dst, src, bytes); });
        return CUDA_SUCCESS;
    }
    // From pageable memory the driver stages the source before returning.
    auto staged = std::make_shared<std::vector<unsigned char>>((const unsigned char*)src,
                                                               (const unsigned char*)src + bytes);
    enqueue(stream, [=] { memcpy((void*)dst, staged->data(), bytes); });
    return CUDA_SUCCESS;
}

API CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t bytes, CUstream stream) {
    if (bytes == 0) return CUDA_SUCCESS;
    check_device("device-to-host copy", src, bytes);
    enqueue(stream, [=] { memcpy(dst, (const void*)src, bytes); });
    // Into pageable memory the copy has completed when the call returns.
    if (!pinned_range(dst, bytes)) synchronize(stream);
    return CUDA_SUCCESS;
}

API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream) {
    if (bytes == 0) return CUDA_SUCCESS;
    check_device("device-to-device copy (source)", src, bytes);
    check_device("device-to-device copy (destination)", dst, bytes);
    enqueue(stream, [=] { memmove((void*)dst, (const void*)src, bytes); });
    return CUDA_SUCCESS;
}

API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t bytes) {
    CUresult r = cuMemcpyHtoDAsync_v2(dst, src, bytes, nullptr);
    return r;
}

API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes) {
    return cuMemcpyDtoHAsync_v2(dst, src, bytes, nullptr);
}

struct Memcpy2D {
    size_t src_x, src_y;
    int src_type;
    const void* src_host;
    CUdeviceptr src_device;
    void* src_array;
    size_t src_pitch;
    size_t dst_x, dst_y;
    int dst_type;
    void* dst_host;
    CUdeviceptr dst_device;
    void* dst_array;
    size_t dst_pitch;
    size_t width, height;
};

API CUresult cuMemcpy2DAsync_v2(const Memcpy2D* c, CUstream stream) {
    const int device = 2;
    if (c->src_type != device || c->dst_type != device) return CUDA_ERROR_NOT_SUPPORTED;
    if (c->width > c->src_pitch || c->width > c->dst_pitch) return CUDA_ERROR_INVALID_VALUE;
    if (c->height == 0 || c->width == 0) return CUDA_SUCCESS;
    const uint64_t src = c->src_device + c->src_y * c->src_pitch + c->src_x;
    const uint64_t dst = c->dst_device + c->dst_y * c->dst_pitch + c->dst_x;
    check_device("2D copy (source)", src, (c->height - 1) * c->src_pitch + c->width);
    check_device("2D copy (destination)", dst, (c->height - 1) * c->dst_pitch + c->width);
    const Memcpy2D copy = *c;
    enqueue(stream, [=] {
        for (size_t r = 0; r < copy.height; ++r)
            memmove((void*)(dst + r * copy.dst_pitch), (const void*)(src + r * copy.src_pitch), copy.width);
    });
    return CUDA_SUCCESS;
}

API CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t bytes, CUstream stream) {
    if (bytes == 0) return CUDA_SUCCESS;
    check_device("memset", dst, bytes);
    enqueue(stream, [=] { memset((void*)dst, value, bytes); });
    return CUDA_SUCCESS;
}

// ---- modules and launches

API CUresult cuModuleLoadData(CUmodule* module, const void* image) {
    if (!image) return CUDA_ERROR_INVALID_VALUE;
    *module = new Module;
    return CUDA_SUCCESS;
}

API CUresult cuModuleUnload(CUmodule module) {
    delete module;
    return CUDA_SUCCESS;
}

API CUresult cuModuleGetFunction(CUfunction* function, CUmodule, const char* name) {
    auto it = kernels().find(name);
    if (it == kernels().end()) return CUDA_ERROR_NOT_FOUND;
    *function = new Function{name, it->second};
    return CUDA_SUCCESS;
}

API CUresult cuFuncSetAttribute(CUfunction f, int attribute, int value) {
    const int max_dynamic_shared = 8;
    if (attribute != max_dynamic_shared) return CUDA_ERROR_NOT_SUPPORTED;
    if (value < 0 || value > 227 * 1024) return CUDA_ERROR_INVALID_VALUE;
    f->max_dynamic_shared = value;
    return CUDA_SUCCESS;
}

API CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                            unsigned shared_bytes, CUstream stream, void** params, void** extra) {
    if (extra) return CUDA_ERROR_NOT_SUPPORTED;
    if (!gx || !gy || !gz || !bx || !by || !bz || (uint64_t)bx * by * bz > 1024 || gy > 65535 || gz > 65535)
        return CUDA_ERROR_INVALID_VALUE;
    // Above 48 KiB of dynamic shared memory a launch needs the function's opt-in (cuFuncSetAttribute).
    if (shared_bytes > 48 * 1024 && (int)shared_bytes > f->max_dynamic_shared) return CUDA_ERROR_INVALID_VALUE;
    const LaunchShape shape{{gx, gy, gz}, {bx, by, bz}, shared_bytes};
    enqueue(stream, f->bind(params, shape));
    return CUDA_SUCCESS;
}

API CUresult cuGetErrorName(CUresult e, const char** name) {
    switch (e) {
        case CUDA_SUCCESS: *name = "CUDA_SUCCESS"; break;
        case CUDA_ERROR_INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *name = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case CUDA_ERROR_NOT_INITIALIZED: *name = "CUDA_ERROR_NOT_INITIALIZED"; break;
        case CUDA_ERROR_INVALID_DEVICE: *name = "CUDA_ERROR_INVALID_DEVICE"; break;
        case CUDA_ERROR_INVALID_HANDLE: *name = "CUDA_ERROR_INVALID_HANDLE"; break;
        case CUDA_ERROR_NOT_FOUND: *name = "CUDA_ERROR_NOT_FOUND"; break;
        case CUDA_ERROR_NOT_READY: *name = "CUDA_ERROR_NOT_READY"; break;
        case CUDA_ERROR_NOT_SUPPORTED: *name = "CUDA_ERROR_NOT_SUPPORTED"; break;
        default: *name = nullptr; return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

API CUresult cuGetErrorString(CUresult e, const char** text) {
    CUresult r = cuGetErrorName(e, text);
    return r;
}
