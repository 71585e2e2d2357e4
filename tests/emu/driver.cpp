// driver.cpp: runs launches of kernels/finc_inverse.cu's entries on the host (tests only).
//
// Built once per (source, T, K, CG) by tests/emu/emulator.py, around the source exactly as
// finc_cli/inverse/kernel_source.load_source prepares it for NVRTC (#defines, #line 1, file):
//   g++ -std=c++20 -O1 -pthread -I tests/emu -DEMU_SOURCE='"prepared.cu"' -DEMU_T=float
//       -DEMU_K=3 -DEMU_CG=3 -DEMU_RING=4 tests/emu/driver.cpp -o driver
// Usage: driver JOB OUT. JOB, little-endian:
//   "FINCEMU1", u32 item size, u32 buffer count, u32 launch count;
//   per buffer: u32 name length, name, u64 item count, the items;
//   per launch: i32 entry, u32 grid x, u32 grid y, u32 block, u64 dynamic shared bytes,
//               i32 buffer[4] (indices, -1 unused), i32 arg[5]; entries and their operands:
//     0 tile(y, weight, linv, x; B, H, W, ipb)   1 ring(y, weight, linv, x; B, H, W, ipb)
//     2 prepare(weight, linv, m)                 3 diagonal(y, m, linv, x; B, H, W, d)
//     4 paper_step(y, weight, x; B, H, W, d, c)
// The launches run in order, as on one stream. OUT receives every buffer afterwards, in order.
// Exit 0; 1 when the checks of race_check.h or cuda_host.h found errors (listed on stderr);
// 2 for a malformed job or an impossible launch.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "cuda_host.h"
#include "race_check.h"

#include EMU_SOURCE

constexpr size_t SHARED_CAPACITY = 256 << 10;  // above every device's opt-in limit (227 KiB)
namespace finc {
alignas(16) unsigned char smem[SHARED_CAPACITY];  // the kernel's extern __shared__ array
}

using T = emu::Checked<EMU_T>;
static_assert(sizeof(T) == sizeof(EMU_T) && alignof(T) == alignof(EMU_T), "Checked<T> must be laid out as T");

namespace {

constexpr size_t GUARD = 64;  // poisoned items on each side of a buffer: touching them is out of bounds

struct Buffer {
    std::string name;
    size_t count;
    std::vector<EMU_T> storage;  // GUARD + count + GUARD items
    T* items() { return reinterpret_cast<T*>(storage.data() + GUARD); }
};

struct Launch {
    int32_t entry;
    uint32_t grid_x, grid_y, block;
    uint64_t shared;
    int32_t buffer[4], arg[5];
};

[[noreturn]] void bad(const char* what) {
    std::fprintf(stderr, "driver: %s\n", what);
    std::exit(2);
}

template <class V>
V take(std::ifstream& in) {
    V v;
    if (!in.read(reinterpret_cast<char*>(&v), sizeof v)) bad("the job file ends early");
    return v;
}

void poison(void* p, size_t bytes) { std::memset(p, 0xff, bytes); }  // all-ones: a NaN in float and double

std::vector<Buffer> read_buffers(std::ifstream& in, uint32_t count) {
    std::vector<Buffer> buffers(count);
    for (Buffer& b : buffers) {
        b.name.resize(take<uint32_t>(in));
        if (!in.read(b.name.data(), b.name.size())) bad("the job file ends early");
        b.count = take<uint64_t>(in);
        b.storage.resize(b.count + 2 * GUARD);
        poison(b.storage.data(), b.storage.size() * sizeof(EMU_T));
        if (!in.read(reinterpret_cast<char*>(b.storage.data() + GUARD), b.count * sizeof(EMU_T)))
            bad("the job file ends early");
        const char* lo = reinterpret_cast<const char*>(b.items());
        emu::regions.push_back({b.name, lo, lo + b.count * sizeof(EMU_T), lo - GUARD * sizeof(EMU_T),
                                lo + (b.count + GUARD) * sizeof(EMU_T), sizeof(EMU_T), false,
                                std::vector<emu::Shadow>(b.count)});
    }
    return buffers;
}

Launch read_launch(std::ifstream& in) {
    Launch l;
    l.entry = take<int32_t>(in);
    l.grid_x = take<uint32_t>(in);
    l.grid_y = take<uint32_t>(in);
    l.block = take<uint32_t>(in);
    l.shared = take<uint64_t>(in);
    for (int32_t& b : l.buffer) b = take<int32_t>(in);
    for (int32_t& a : l.arg) a = take<int32_t>(in);
    return l;
}

// The shared-memory region of one launch: `bytes` usable, the rest of the array out of bounds.
emu::Region& shared_region(uint64_t bytes) {
    if (emu::regions.empty() || !emu::regions.back().shared) {
        const char* base = reinterpret_cast<const char*>(finc::smem);
        emu::regions.push_back({"shared", base, base, base, base + SHARED_CAPACITY, sizeof(EMU_T), true, {}});
    }
    emu::Region& r = emu::regions.back();
    r.hi = r.lo + bytes / sizeof(EMU_T) * sizeof(EMU_T);
    return r;
}

void run(const Launch& l, std::vector<Buffer>& buffers) {
    const bool fused = l.entry == 0 || l.entry == 1;
    const unsigned bound = fused ? FINC_MAX_BLOCK : FINC_GRID_BLOCK;  // the entry's __launch_bounds__
    if (l.block < 1 || l.block > bound) bad("block size outside [1, the entry's __launch_bounds__]");
    if (l.grid_x < 1 || l.grid_y < 1 || l.grid_y > 65535 || l.grid_x > 0x7fffffffu) bad("grid outside the CUDA limits");
    if (l.shared > SHARED_CAPACITY) bad("more dynamic shared memory than any device has");
    static constexpr int operands[] = {4, 4, 3, 4, 3};  // pointer arguments of each entry
    if (l.entry < 0 || l.entry > 4) bad("unknown entry");
    T* p[4] = {};
    for (int i = 0; i < operands[l.entry]; ++i) {
        const int b = l.buffer[i];
        if (b < 0 || size_t(b) >= buffers.size()) bad("a launch names a buffer the job does not have");
        p[i] = buffers[b].items();
    }
    const int* a = l.arg;
    emu::Region& shared = shared_region(l.shared);
    auto fresh_shared = [&] {
        poison(finc::smem, SHARED_CAPACITY);
        shared.shadow.assign((shared.hi - shared.lo) / sizeof(EMU_T), emu::Shadow{});
    };
    const dim3 grid{l.grid_x, l.grid_y, 1};
    constexpr int K = EMU_K, CG = EMU_CG;
    switch (l.entry) {
    case 0:
        emu::launch(grid, l.block, [&] { finc_inverse_tile<T, K, CG>(p[0], p[1], p[2], p[3], a[0], a[1], a[2], a[3]); },
                    fresh_shared);
        break;
    case 1:
        emu::launch(grid, l.block,
                    [&] { finc_inverse_ring<T, K, CG, EMU_RING>(p[0], p[1], p[2], p[3], a[0], a[1], a[2], a[3]); },
                    fresh_shared);
        break;
    case 2:
        if constexpr (K > 1)  // as on the GPU, where prepare is not instantiated for K = 1
            emu::launch(grid, l.block, [&] { finc_inverse_prepare<T, K, CG>(p[0], p[1], p[2]); }, fresh_shared);
        else
            bad("prepare is not an entry when K = 1");
        break;
    case 3:
        emu::launch(grid, l.block,
                    [&] { finc_inverse_diagonal<T, K, CG>(p[0], p[1], p[2], p[3], a[0], a[1], a[2], a[3]); },
                    fresh_shared);
        break;
    case 4:
        emu::launch(grid, l.block, [&] { finc_paper_step<T, K, CG>(p[0], p[1], p[2], a[0], a[1], a[2], a[3], a[4]); },
                    fresh_shared);
        break;
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) bad("usage: driver JOB OUT");
    std::ifstream in(argv[1], std::ios::binary);
    char magic[8];
    if (!in.read(magic, 8) || std::memcmp(magic, "FINCEMU1", 8)) bad("not a job file");
    if (take<uint32_t>(in) != sizeof(EMU_T)) bad("the job's item size is not this driver's");
    const uint32_t nbuffers = take<uint32_t>(in), nlaunches = take<uint32_t>(in);
    std::vector<Buffer> buffers = read_buffers(in, nbuffers);
    std::vector<Launch> launches;
    for (uint32_t i = 0; i < nlaunches; ++i) launches.push_back(read_launch(in));
    for (const Launch& l : launches) run(l, buffers);

    std::ofstream out(argv[2], std::ios::binary);
    for (Buffer& b : buffers)
        out.write(reinterpret_cast<const char*>(b.storage.data() + GUARD), b.count * sizeof(EMU_T));
    if (!out) bad("cannot write the output file");
    for (const std::string& e : emu::errors) std::fprintf(stderr, "%s\n", e.c_str());
    if (emu::error_count > long(emu::errors.size()))
        std::fprintf(stderr, "... and %ld more\n", emu::error_count - long(emu::errors.size()));
    return emu::error_count ? 1 : 0;
}
