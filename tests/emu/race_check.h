// race_check.h: emu::Checked<T>, a T that reports each load and store, and the checker behind it.
//
// The driver instantiates the kernel templates with Checked<float> / Checked<double>: same size,
// layout and arithmetic as the plain type, but every access to a registered region (a buffer
// of the job, or the dynamic shared memory of a launch) is checked for
//   out of bounds   an element outside its buffer, or past the launch's dynamic shared bytes;
//   uninitialised   a shared element read before any thread of its block wrote it;
//   a race          two threads touch one element, at least one writes, and nothing orders them:
//                   same launch and either different blocks, or the same block between the same
//                   two __syncthreads (launches on one stream are ordered).
// Locals and temporaries on the thread's own stack are not checked; an access anywhere else
// is reported.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "cuda_host.h"

namespace emu {

constexpr int SEVERAL = -2;  // Stamp.block / .thread: more than one reader since the last order point

struct Shadow {
    Stamp write, read;  // the last write, and the last reads that nothing has ordered yet
};

struct Region {
    std::string name;
    const char* lo;        // the elements kernels may touch: [lo, hi)
    const char* hi;
    const char* guard_lo;  // [guard_lo, guard_hi) ⊇ [lo, hi): an access there is out of bounds
    const char* guard_hi;
    size_t item;
    bool shared;  // reset before each block: a read before a write is uninitialised
    std::vector<Shadow> shadow;
};
inline std::vector<Region> regions;

// May an access stamped `a` and one stamped `b` run at the same time?
inline bool unordered(const Stamp& a, const Stamp& b) {
    if (a.launch < 0 || a.launch != b.launch) return false;
    if (a.block == SEVERAL || a.block != b.block) return true;
    return a.phase == b.phase && a.thread != b.thread;  // SEVERAL threads include another one
}

inline const char* thread_name(const Stamp& s, char* text, size_t size) {
    if (s.block == SEVERAL) std::snprintf(text, size, "threads of several blocks");
    else if (s.thread == SEVERAL) std::snprintf(text, size, "several threads of block %d", s.block);
    else std::snprintf(text, size, "thread %d of block %d", s.thread, s.block);
    return text;
}

inline void race(const char* what, const Region& r, size_t i, const Stamp& other) {
    char mine[64], theirs[64];
    fail("launch %d: %s, after %d __syncthreads, %s %s[%zu], unordered with %s", now.launch,
         thread_name(now, mine, sizeof mine), now.phase, what, r.name.c_str(), i,
         thread_name(other, theirs, sizeof theirs));
}

inline void on_read(Region& r, size_t i) {
    Shadow& s = r.shadow[i];
    if (r.shared && s.write.launch < 0) {
        char mine[64];
        fail("launch %d: %s reads %s[%zu] before any thread of its block wrote it", now.launch,
             thread_name(now, mine, sizeof mine), r.name.c_str(), i);
    } else if (unordered(s.write, now)) {
        race("reads", r, i, s.write);
    }
    Stamp& last = s.read;
    if (last.launch != now.launch) last = now;
    else if (last.block != now.block) last.block = last.thread = SEVERAL;
    else if (last.phase != now.phase) last = now;  // the earlier reads are ordered before this one
    else if (last.thread != now.thread) last.thread = SEVERAL;
}

inline void on_write(Region& r, size_t i) {
    Shadow& s = r.shadow[i];
    if (unordered(s.write, now)) race("writes", r, i, s.write);
    else if (unordered(s.read, now)) race("overwrites", r, i, s.read);
    s.write = now;
}

inline void check(const void* address, bool write) {
    const char* a = static_cast<const char*>(address);
    for (Region& r : regions) {
        if (a < r.guard_lo || a >= r.guard_hi) continue;
        if (a < r.lo || a >= r.hi) {
            char mine[64];
            const long offset = a < r.lo ? -long((r.lo - a) / r.item) : long((a - r.lo) / r.item);
            fail("launch %d: %s %s %s[%ld], out of bounds (%zu elements)", now.launch,
                 thread_name(now, mine, sizeof mine), write ? "writes" : "reads", r.name.c_str(), offset,
                 size_t(r.hi - r.lo) / r.item);
            return;
        }
        const size_t i = size_t(a - r.lo) / r.item;
        write ? on_write(r, i) : on_read(r, i);
        return;
    }
    // A local or a temporary: below the thread's first frame, or just above it (inlining may
    // put the kernel's objects in that frame; what lies higher holds no Checked objects).
    if (a > stack_top - (1 << 20) && a < stack_top + (64 << 10)) return;
    char mine[64];
    fail("launch %d: %s %s address %p, outside every buffer", now.launch, thread_name(now, mine, sizeof mine),
         write ? "writes" : "reads", address);
}

template <typename T>
struct Checked {
    T v;

    Checked() = default;
    Checked(T x) : v(x) {}
    Checked(const Checked& o) : v(o.get()) {}
    Checked& operator=(const Checked& o) {
        set(o.get());
        return *this;
    }
    T get() const {
        check(this, false);
        return v;
    }
    void set(T x) {
        check(this, true);
        v = x;
    }

    Checked& operator+=(const Checked& o) { return *this = get() + o.get(); }
    Checked& operator-=(const Checked& o) { return *this = get() - o.get(); }
    Checked& operator*=(const Checked& o) { return *this = get() * o.get(); }
    Checked& operator/=(const Checked& o) { return *this = get() / o.get(); }
    friend Checked operator+(const Checked& a, const Checked& b) { return a.get() + b.get(); }
    friend Checked operator-(const Checked& a, const Checked& b) { return a.get() - b.get(); }
    friend Checked operator*(const Checked& a, const Checked& b) { return a.get() * b.get(); }
    friend Checked operator/(const Checked& a, const Checked& b) { return a.get() / b.get(); }
    friend Checked operator-(const Checked& a) { return -a.get(); }
    friend bool operator<(const Checked& a, const Checked& b) { return a.get() < b.get(); }
    friend bool operator>(const Checked& a, const Checked& b) { return a.get() > b.get(); }
    friend bool operator<=(const Checked& a, const Checked& b) { return a.get() <= b.get(); }
    friend bool operator>=(const Checked& a, const Checked& b) { return a.get() >= b.get(); }
    friend bool operator==(const Checked& a, const Checked& b) { return a.get() == b.get(); }
    friend bool operator!=(const Checked& a, const Checked& b) { return a.get() != b.get(); }
};

}  // namespace emu
