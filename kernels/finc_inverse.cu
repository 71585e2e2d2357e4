// finc_inverse.cu: wavefront inverse of the FInC unit (docs/inverse.md §8; Kallappa et al. 2023, §3).
//
// Problem (as in finc_cli/inverse/__init__.py). y (B, C, H, W) contiguous, C = 4·CG, groups
// g = 0..3 (TL, TR, BL, BR) of CG channels each. weight (4, CG, CG, K, K) contiguous, in TL
// orientation, centre tap [.., K-1, K-1] unit lower triangular; linv (4, CG, CG) contiguous,
// the inverse of the centre taps (lower triangular: the entries above the diagonal are never
// read). Group g reads its input flipped in H when g >= 2 and in W when g is odd, so in the
// group's own "frame" (i', j') = (flipped) natural (i, j), pixel p = (i', j') satisfies
//
//     y_p = L·x_p + Σ_{(a',e') ≠ (0,0)} W[K-1-a', K-1-e']·x_{(i'-a', j'-e')}    (x = 0 outside)
//
// and pixels on the anti-diagonal d = i' + j' depend only on earlier anti-diagonals. With
// ỹ = L⁻¹·y and M_t = L⁻¹·W_t this is x_p = ỹ_p − Σ_t M_t·x_{p−t}: H + W − 1 sequential steps.
//
// Every entry is a template <T, K, CG>: T = float or double, K = kernel size (>= 1), CG = C/4.
// The host instantiates it by name (e.g. "finc_inverse_tile<float, 3, 3>") through NVRTC name
// expressions, so the tap and channel loops are unrolled for the layer's own shape. Indices
// inside one (image, group) plane use int (CG·H·W < 2^31); plane offsets use size_t.
//
// Entry points (all launched on the caller's stream; none synchronizes the host):
//   finc_inverse_tile      fused, ONE launch per unit, the image tile in shared memory.
//   finc_inverse_ring      fused, ONE launch per unit, a ring of the last anti-diagonals in
//                          shared memory, y read and x written in global memory.
//   finc_inverse_prepare   M = L⁻¹·W_off into global memory, for finc_inverse_diagonal.
//   finc_inverse_diagonal  fallback for any size: one launch per anti-diagonal.
//   finc_paper_step        the paper's schedule, one launch per (anti-diagonal, channel);
//                          for benchmarks only.

#ifndef FINC_MAX_BLOCK
#define FINC_MAX_BLOCK 1024  // block size bound of the fused kernels (registers ≤ 64 per thread)
#endif
#ifndef FINC_GRID_BLOCK
#define FINC_GRID_BLOCK 256  // block size bound of the per-diagonal kernels, 4 blocks per SM
#endif                       // (also ≤ 64 registers per thread)

namespace finc {

// Orientation of group g: +1 where the padding is on the top / left (TL frame = natural order).
__device__ __forceinline__ int group_sh(int g) { return g < 2 ? 1 : -1; }
__device__ __forceinline__ int group_sw(int g) { return (g & 1) ? -1 : 1; }

// First frame row and pixel count of anti-diagonal d of an H×W image.
__device__ __forceinline__ int diag_first(int d, int W) { return d - W + 1 > 0 ? d - W + 1 : 0; }
__device__ __forceinline__ int diag_count(int d, int H, int W) {
    const int last = d < H - 1 ? d : H - 1;
    return last - diag_first(d, W) + 1;
}

// Channel loops: fully unrolled for the usual small CG, partly beyond (code size).
template <int CG> struct Unroll { static constexpr int value = CG <= 16 ? CG : 8; };
// Rows of taps: unrolled up to k = 3; beyond, one row at a time, since a full unroll lets the
// compiler hoist every tap's loads and spill.
template <int K> struct RowUnroll { static constexpr int value = K <= 3 ? K : 1; };

// M[g][o][t][c] = Σ_{m ≤ o} L⁻¹[g][o][m] · W[g][m][c][K-1-a'][K-1-e'], tap t = a'·K + e' − 1.
// One element; shared by the fused kernels (into shared memory) and finc_inverse_prepare.
template <typename T, int K, int CG>
__device__ __forceinline__ T premultiplied(const T* __restrict__ weight, const T* __restrict__ linv,
                                           int g, int i) {
    constexpr int TAPS = K * K - 1;
    const int c = i % CG;
    const int t = (i / CG) % TAPS;
    const int o = i / (CG * TAPS);
    const int ap = (t + 1) / K, ep = (t + 1) % K;
    const int widx = (K - 1 - ap) * K + (K - 1 - ep);
    const T* L = linv + ((size_t)g * CG + o) * CG;
    const T* Wg = weight + (size_t)g * CG * CG * K * K;
    T s = 0;
    for (int m = 0; m <= o; ++m) s += L[m] * Wg[(m * CG + c) * K * K + widx];
    return s;
}

// L⁻¹ and M of group g into shared memory; the caller syncs.
template <typename T, int K, int CG>
__device__ __forceinline__ void load_operator(const T* __restrict__ weight, const T* __restrict__ linv,
                                              int g, T* sL, T* sM) {
    constexpr int TAPS = K * K - 1;
    for (int i = threadIdx.x; i < CG * CG; i += blockDim.x) sL[i] = linv[(size_t)g * CG * CG + i];
    for (int i = threadIdx.x; i < CG * TAPS * CG; i += blockDim.x)
        sM[i] = premultiplied<T, K, CG>(weight, linv, g, i);
}

// ỹ_o = Σ_{c ≤ o} L⁻¹[o][c] · y_c, with y_c at src[c·stride].
template <typename T, int CG>
__device__ __forceinline__ T centre_solve(const T* Lrow, const T* src, int stride, int o) {
    T s = 0;
#pragma unroll Unroll<CG>::value
    for (int c = 0; c < CG; ++c)
        if (c <= o) s += Lrow[c] * src[c * stride];
    return s;
}

// Addressing of the solved inputs of one pixel, channel 0, for tap (a', e'):
// a plane in natural layout (shared tile or global x) ...
template <typename T>
struct PlaneTaps {
    const T* at_pixel;  // the pixel itself
    int drow, dcol;     // natural offset of one frame step back in i' / j': −sh·W, −sw
    __device__ __forceinline__ const T* at(int ap, int ep) const { return at_pixel + ap * drow + ep * dcol; }
};
// ... or a ring of RING (a power of two ≥ 2K−1) anti-diagonals, [slot][c][i'].
template <typename T, int RING>
struct RingTaps {
    const T* ring;  // this image's ring
    int d, ip, slot_stride;
    __device__ __forceinline__ const T* at(int ap, int ep) const {
        return ring + ((d - ap - ep) & (RING - 1)) * slot_stride + (ip - ap);
    }
};

// acc − Σ_{t, c} M[o][t][c] · x_c(p − t) over the taps that land inside the image.
// mrow = M[o] ([t][c]); cstride = distance between channels at a source address.
template <typename T, int K, int CG, typename Taps>
__device__ __forceinline__ T subtract_taps(T acc, const T* mrow, const Taps& src, int cstride, int ip, int jp) {
#pragma unroll RowUnroll<K>::value
    for (int ap = 0; ap < K; ++ap) {
#pragma unroll
        for (int ep = 0; ep < K; ++ep) {
            if ((ap | ep) == 0 || ap > ip || ep > jp) continue;
            const T* s = src.at(ap, ep);
            const T* m = mrow + (ap * K + ep - 1) * CG;
#pragma unroll Unroll<CG>::value
            for (int c = 0; c < CG; ++c) acc -= m[c] * s[c * cstride];
        }
    }
    return acc;
}

// Dynamic shared memory of the fused kernels, carved as T arrays: L⁻¹ (CG·CG), M (CG·TAPS·CG),
// then the image tiles or rings.
extern __shared__ __align__(16) unsigned char smem[];

}  // namespace finc

// ---------------------------------------------------------------------------------------------
// finc_inverse_tile<T, K, CG>(y, weight, linv, x, B, H, W, ipb)
//   One launch inverts the whole unit. Block (blockIdx.x, g = blockIdx.y) owns group g of the
//   images [chunk·ipb, chunk·ipb + ipb) for chunk = blockIdx.x, blockIdx.x + gridDim.x, ...
//   (grid-stride, so B is not bounded by the grid). Per chunk: coalesced load of the ipb
//   (CG, H, W) planes into shared memory, ỹ = L⁻¹·y in place (per pixel, descending channel),
//   then for d = 1 .. H+W−2 threads take (image, channel, pixel on d) items, solve them in
//   place from the shared tile and meet at __syncthreads(); finally a coalesced store to x.
//   Launch: grid (≥ 1, 4), block ≤ FINC_MAX_BLOCK threads (best: ipb·min(H,W)·CG rounded up to
//   a warp), dynamic shared bytes = sizeof(T)·(CG·CG + CG·(K²−1)·CG + ipb·CG·H·W) (opt in above
//   48 KiB). Limits: that shared size must fit the device; x must not alias y.
// ---------------------------------------------------------------------------------------------
template <typename T, int K, int CG>
__global__ void __launch_bounds__(FINC_MAX_BLOCK, 1)
finc_inverse_tile(const T* __restrict__ y, const T* __restrict__ weight, const T* __restrict__ linv,
                  T* __restrict__ x, int B, int H, int W, int ipb) {
    constexpr int TAPS = K * K - 1;
    T* sL = reinterpret_cast<T*>(finc::smem);
    T* sM = sL + CG * CG;
    T* tile = sM + CG * TAPS * CG;
    const int g = blockIdx.y;
    const int sh = finc::group_sh(g), sw = finc::group_sw(g);
    const int HW = H * W, plane = CG * HW;

    finc::load_operator<T, K, CG>(weight, linv, g, sL, sM);
    const int chunks = (B + ipb - 1) / ipb;
    for (int chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
        const int b0 = chunk * ipb;
        const int nimg = min(ipb, B - b0);
        for (int idx = threadIdx.x; idx < nimg * plane; idx += blockDim.x) {
            const int im = idx / plane;
            tile[idx] = y[((size_t)(b0 + im) * 4 + g) * plane + (idx - im * plane)];  // (B, 4, CG, H, W)
        }
        __syncthreads();  // also orders load_operator before the first use of sL / sM
        // ỹ in place: channel o only needs channels c ≤ o, which a descending loop has not yet
        // overwritten.
        for (int idx = threadIdx.x; idx < nimg * HW; idx += blockDim.x) {
            const int im = idx / HW;
            T* px = tile + im * plane + (idx - im * HW);
#pragma unroll 1
            for (int o = CG - 1; o >= 0; --o) px[o * HW] = finc::centre_solve<T, CG>(sL + o * CG, px, HW, o);
        }
        __syncthreads();
        // Anti-diagonal 0 has no predecessors: x = ỹ there already.
        for (int d = 1; TAPS > 0 && d < H + W - 1; ++d) {
            const int first = finc::diag_first(d, W), n = finc::diag_count(d, H, W);
            for (int it = threadIdx.x; it < nimg * CG * n; it += blockDim.x) {
                const int q = it % n, o = (it / n) % CG, im = it / (n * CG);
                const int ip = first + q, jp = d - ip;  // frame coordinates
                const int i = sh > 0 ? ip : H - 1 - ip, j = sw > 0 ? jp : W - 1 - jp;
                T* px = tile + im * plane + i * W + j;
                const finc::PlaneTaps<T> src{px, -sh * W, -sw};
                // Reads: own ỹ and pixels of earlier anti-diagonals; writes: own (pixel, channel).
                px[o * HW] = finc::subtract_taps<T, K, CG>(px[o * HW], sM + o * TAPS * CG, src, HW, ip, jp);
            }
            __syncthreads();
        }
        for (int idx = threadIdx.x; idx < nimg * plane; idx += blockDim.x) {
            const int im = idx / plane;
            x[((size_t)(b0 + im) * 4 + g) * plane + (idx - im * plane)] = tile[idx];
        }
        __syncthreads();  // the next chunk overwrites the tile
    }
}

// ---------------------------------------------------------------------------------------------
// finc_inverse_ring<T, K, CG, RING>(y, weight, linv, x, B, H, W, ipb)
//   One launch inverts the whole unit, for images whose tile does not fit in shared memory.
//   Same blocks and chunks as finc_inverse_tile, but shared memory holds only a ring of the last
//   RING anti-diagonals of each image ([slot][c][frame row], RING a power of two ≥ 2K−1: a tap
//   reaches back at most 2K−2 anti-diagonals). For d = 0 .. H+W−2 each (image, channel, pixel)
//   item reads y from global memory, computes ỹ, subtracts the taps from the ring, and writes
//   x to global memory and to the ring; one __syncthreads() per anti-diagonal (the slot written
//   at d was last read at d − 1).
//   Launch: grid (≥ 1, 4), block ≤ FINC_MAX_BLOCK threads, dynamic shared bytes =
//   sizeof(T)·(CG·CG + CG·(K²−1)·CG + ipb·RING·CG·H). Limits: that size must fit the device.
// ---------------------------------------------------------------------------------------------
template <typename T, int K, int CG, int RING>
__global__ void __launch_bounds__(FINC_MAX_BLOCK, 1)
finc_inverse_ring(const T* __restrict__ y, const T* __restrict__ weight, const T* __restrict__ linv,
                  T* __restrict__ x, int B, int H, int W, int ipb) {
    static_assert((RING & (RING - 1)) == 0 && RING >= 2 * K - 1, "RING: a power of two >= 2K-1");
    constexpr int TAPS = K * K - 1;
    T* sL = reinterpret_cast<T*>(finc::smem);
    T* sM = sL + CG * CG;
    T* rings = sM + CG * TAPS * CG;
    const int g = blockIdx.y;
    const int sh = finc::group_sh(g), sw = finc::group_sw(g);
    const int HW = H * W, plane = CG * HW, slot = CG * H, ring_size = RING * slot;

    finc::load_operator<T, K, CG>(weight, linv, g, sL, sM);
    __syncthreads();
    const int chunks = (B + ipb - 1) / ipb;
    for (int chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
        const int b0 = chunk * ipb;
        const int nimg = min(ipb, B - b0);
        for (int d = 0; d < H + W - 1; ++d) {
            const int first = finc::diag_first(d, W), n = finc::diag_count(d, H, W);
            for (int it = threadIdx.x; it < nimg * CG * n; it += blockDim.x) {
                const int q = it % n, o = (it / n) % CG, im = it / (n * CG);
                const int ip = first + q, jp = d - ip;
                const int i = sh > 0 ? ip : H - 1 - ip, j = sw > 0 ? jp : W - 1 - jp;
                const size_t at = ((size_t)(b0 + im) * 4 + g) * plane + i * W + j;  // channel 0
                T* ring = rings + im * ring_size;
                T acc = finc::centre_solve<T, CG>(sL + o * CG, y + at, HW, o);
                const finc::RingTaps<T, RING> src{ring, d, ip, slot};
                acc = finc::subtract_taps<T, K, CG>(acc, sM + o * TAPS * CG, src, H, ip, jp);
                ring[(d & (RING - 1)) * slot + o * H + ip] = acc;
                x[at + (size_t)o * HW] = acc;
            }
            __syncthreads();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// finc_inverse_prepare<T, K, CG>(weight, linv, m)
//   m (4, CG, K²−1, CG) = L⁻¹·W_off per group, for finc_inverse_diagonal. Grid-stride over the
//   4·CG·(K²−1)·CG elements; any grid, block ≤ FINC_GRID_BLOCK. Not launched when K = 1.
// ---------------------------------------------------------------------------------------------
template <typename T, int K, int CG>
__global__ void __launch_bounds__(FINC_GRID_BLOCK, 4)
finc_inverse_prepare(const T* __restrict__ weight, const T* __restrict__ linv, T* __restrict__ m) {
    constexpr int PER_GROUP = CG * (K * K - 1) * CG;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < 4 * PER_GROUP; i += gridDim.x * blockDim.x)
        m[i] = finc::premultiplied<T, K, CG>(weight, linv, i / PER_GROUP, i % PER_GROUP);
}

// ---------------------------------------------------------------------------------------------
// finc_inverse_diagonal<T, K, CG>(y, m, linv, x, B, H, W, d)
//   Fallback for any size: solves anti-diagonal d of every (image, group, channel) at once,
//   reading earlier anti-diagonals of x from global memory (written by the previous launches
//   on the same stream). Launch for d = 0 .. H+W−2 in order. Grid (x, y): x grid-strides over
//   the 4·CG·count(d) (group, channel, pixel) items of an image, y over the B images (any
//   y ≤ 65535); block ≤ FINC_GRID_BLOCK. No shared memory.
// ---------------------------------------------------------------------------------------------
template <typename T, int K, int CG>
__global__ void __launch_bounds__(FINC_GRID_BLOCK, 4)
finc_inverse_diagonal(const T* __restrict__ y, const T* __restrict__ m, const T* __restrict__ linv,
                      T* x, int B, int H, int W, int d) {
    constexpr int TAPS = K * K - 1;
    const int HW = H * W, plane = CG * HW;
    const int first = finc::diag_first(d, W), n = finc::diag_count(d, H, W);
    for (int b = blockIdx.y; b < B; b += gridDim.y) {
        for (int it = blockIdx.x * blockDim.x + threadIdx.x; it < 4 * CG * n; it += gridDim.x * blockDim.x) {
            const int q = it % n, o = (it / n) % CG, g = it / (n * CG);
            const int ip = first + q, jp = d - ip;
            const int sh = finc::group_sh(g), sw = finc::group_sw(g);
            const int i = sh > 0 ? ip : H - 1 - ip, j = sw > 0 ? jp : W - 1 - jp;
            const size_t at = ((size_t)b * 4 + g) * plane + i * W + j;  // channel 0
            T acc = finc::centre_solve<T, CG>(linv + (g * CG + o) * CG, y + at, HW, o);
            const finc::PlaneTaps<T> src{x + at, -sh * W, -sw};
            acc = finc::subtract_taps<T, K, CG>(acc, m + (g * CG + o) * TAPS * CG, src, HW, ip, jp);
            x[at + o * HW] = acc;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// finc_paper_step<T, K, CG>(y, weight, x, B, H, W, d, c)
//   The paper's GPU schedule, re-implemented for comparison (benchmarks only): channel c of
//   anti-diagonal d of every (image, group), by forward substitution with the weights as they
//   are (no L⁻¹): x_c = y_c − Σ_{t, c'} W[c][c'][t]·x_c'(p − t) − Σ_{c' < c} L[c][c']·x_c'(p).
//   Launch for d = 0 .. H+W−2, and within d for c = 0 .. CG−1, in order: (H+W−1)·CG launches.
//   Grid (x, y): x grid-strides over the 4·count(d) (group, pixel) items of an image, y over the
//   B images (any y ≤ 65535); block ≤ FINC_GRID_BLOCK.
// ---------------------------------------------------------------------------------------------
template <typename T, int K, int CG>
__global__ void __launch_bounds__(FINC_GRID_BLOCK, 4)
finc_paper_step(const T* __restrict__ y, const T* __restrict__ weight, T* x, int B, int H, int W, int d, int c) {
    const int HW = H * W, plane = CG * HW;
    const int first = finc::diag_first(d, W), n = finc::diag_count(d, H, W);
    for (int b = blockIdx.y; b < B; b += gridDim.y) {
        for (int it = blockIdx.x * blockDim.x + threadIdx.x; it < 4 * n; it += gridDim.x * blockDim.x) {
            const int q = it % n, g = it / n;
            const int ip = first + q, jp = d - ip;
            const int sh = finc::group_sh(g), sw = finc::group_sw(g);
            const int i = sh > 0 ? ip : H - 1 - ip, j = sw > 0 ? jp : W - 1 - jp;
            const size_t at = ((size_t)b * 4 + g) * plane + i * W + j;  // channel 0
            const T* Wc = weight + (g * CG + c) * CG * K * K;           // W[g][c] (CG, K, K)
            T acc = y[at + c * HW];
#pragma unroll finc::RowUnroll<K>::value
            for (int ap = 0; ap < K; ++ap) {
#pragma unroll
                for (int ep = 0; ep < K; ++ep) {
                    if ((ap | ep) == 0 || ap > ip || ep > jp) continue;
                    const T* s = x + at - ap * sh * W - ep * sw;
                    const int widx = (K - 1 - ap) * K + (K - 1 - ep);
#pragma unroll finc::Unroll<CG>::value
                    for (int c2 = 0; c2 < CG; ++c2) acc -= Wc[c2 * K * K + widx] * s[c2 * HW];
                }
            }
            for (int c2 = 0; c2 < c; ++c2) acc -= Wc[c2 * K * K + K * K - 1] * x[at + c2 * HW];
            x[at + c * HW] = acc;
        }
    }
}
