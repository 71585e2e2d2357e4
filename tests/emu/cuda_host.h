// cuda_host.h: the CUDA built-ins kernels/finc_inverse.cu uses, emulated on the host (tests only).
//
// One std::thread per CUDA thread; the blocks of a launch run one after another, and the
// threads of a block take turns: a baton lets one run at a time, from one __syncthreads (a
// std::barrier) to the next. So no two threads ever really overlap: the checker in
// race_check.h needs no locks, runs repeat exactly, and a missing barrier is found by the
// checker (it knows which accesses a barrier would have ordered), not by luck.
//
// Dynamic shared memory is the kernel's own `extern __shared__` array, which the driver defines
// and poisons before each block. Static `__shared__` variables are not emulated (the macro
// drops the qualifier); test_kernels_emulated.py checks that the kernel declares none.
#pragma once

#include <algorithm>
#include <barrier>
#include <cstdarg>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

struct uint3 { unsigned x = 0, y = 0, z = 0; };
struct dim3 { unsigned x = 1, y = 1, z = 1; };

inline thread_local uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

using std::max;  // CUDA's integer min / max
using std::min;

namespace emu {

// What a run found wrong: the first few messages, and how many there were in all.
inline std::vector<std::string> errors;
inline long error_count = 0;

inline void fail(const char* format, ...) {
    if (++error_count > 20) return;
    char text[512];
    va_list args;
    va_start(args, format);
    std::vsnprintf(text, sizeof text, format, args);
    va_end(args);
    errors.emplace_back(text);
}

// When an access happens: launch (in stream order), linear block, barriers the block has
// passed, thread in the block. Host code has thread = -1.
struct Stamp {
    int launch = -1, block = -1, phase = 0, thread = -1;
};
inline int launch_count = 0;
inline thread_local Stamp now;
inline thread_local const char* stack_top = nullptr;  // objects below it are the thread's locals

struct Block {
    std::mutex baton;  // held by the one thread that runs
    std::barrier<> barrier;
    explicit Block(unsigned threads) : barrier(threads) {}
};
inline Block* running = nullptr;

}  // namespace emu

inline void __syncthreads() {
    emu::Block* block = emu::running;
    block->baton.unlock();
    block->barrier.arrive_and_wait();
    block->baton.lock();
    ++emu::now.phase;
}

inline void __threadfence_block() {}  // one thread runs at a time: its writes are already visible

namespace emu {

// Runs `kernel` (a callable that calls the __global__ function) on a (grid.x, grid.y) grid of
// `threads`-thread blocks; `before_block` runs on the host before each block.
template <class Kernel, class BeforeBlock>
void launch(dim3 grid, unsigned threads, Kernel kernel, BeforeBlock before_block) {
    gridDim = grid;
    blockDim = {threads, 1, 1};
    const int id = launch_count++;
    for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            before_block();
            Block block(threads);
            std::vector<int> syncs(threads, 0);
            running = &block;
            std::vector<std::thread> pool;
            pool.reserve(threads);
            for (unsigned t = 0; t < threads; ++t)
                pool.emplace_back([&, t] {
                    block.baton.lock();
                    threadIdx = {t, 0, 0};
                    blockIdx = {bx, by, 0};
                    now = {id, int(by * grid.x + bx), 0, int(t)};
                    char marker;
                    stack_top = &marker;
                    kernel();
                    syncs[t] = now.phase;
                    block.baton.unlock();
                    block.barrier.arrive_and_drop();  // the others no longer wait for this thread
                });
            for (auto& thread : pool) thread.join();
            running = nullptr;
            const auto [fewest, most] = std::minmax_element(syncs.begin(), syncs.end());
            if (*fewest != *most)
                fail("launch %d block (%u, %u): threads called __syncthreads between %d and %d times "
                     "(a barrier in divergent code)", id, bx, by, *fewest, *most);
        }
}

}  // namespace emu
