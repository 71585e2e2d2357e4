/* CPU inverse of the FInC unit (docs/inverse.md §7), built and loaded at run time by
 * finc_cli/inverse/native.py through ctypes. Plain C99; OpenMP when the compiler has it.
 *
 * Entry points (float and double; sizes are int64, tensors contiguous, row-major):
 *
 *   int finc_inverse_f32(const float *y, const float *weight, const float *linv, float *x,
 *                        int64_t B, int64_t Cg, int64_t H, int64_t W, int64_t k, int64_t threads);
 *   int finc_inverse_f64(... the same with double ...);
 *
 *   y, x    (B, 4·Cg, H, W)   x is written, y is read; they must not overlap
 *   weight  (4, Cg, Cg, k, k) effective kernel in TL orientation, centre tap unit lower triangular
 *   linv    (4, Cg, Cg)       inverse of the centre taps (unit lower triangular)
 *   returns 0, or 1 when scratch memory could not be allocated (x is then undefined)
 *
 *   int finc_inverse_openmp(void);  1 when built with OpenMP, else 0
 *
 * Method. With M = L⁻¹·W (off-centre taps) and ỹ = L⁻¹·y, a pixel of one group, in that
 * group's own top-left frame, is x_p = ỹ_p − Σ_{t ≠ centre} M_t·x_{p−t}. Every (image, group)
 * pair, an "item", is independent. FINC_LANES items are solved in lockstep, one per SIMD lane:
 * the scratch image holds (channel, row, column, lane), so every operation below is a
 * FINC_LANES-wide vector operation whatever C' and k are, and each lane carries its own
 * group's weights. Within a pack, rows are solved in raster order of the own frame on a
 * zero-padded copy (no bounds checks): the taps on the rows above are applied to the whole
 * row at once, then the k−1 taps to the left on the same row are a recurrence over columns.
 * OpenMP runs the packs in parallel.
 *
 * The type-generic body below is compiled twice by including this file into itself with
 * FINC_REAL set to float, then double.
 */

#ifndef FINC_REAL

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FINC_LANES 8 /* items per pack: one AVX register of floats */

int finc_inverse_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#define FINC_REAL float
#define FINC_NAME(name) name##_f32
#include "finc_inverse_cpu.c"
#undef FINC_REAL
#undef FINC_NAME

#define FINC_REAL double
#define FINC_NAME(name) name##_f64
#include "finc_inverse_cpu.c"
#undef FINC_REAL
#undef FINC_NAME

#else /* type-generic body: FINC_REAL is the element type, FINC_NAME adds the suffix */

typedef FINC_REAL FINC_NAME(real);
#define T FINC_NAME(real)
#define L FINC_LANES

/* Per-lane tables, lane l holding group l % 4 (packs start at multiples of 4 items), with
 * M = L⁻¹·W accumulated in double:
 *   rows (Cg, Cg, k-1, k, L): taps on the rows above, [o][c][a][e][l];
 *   left (Cg, k-1, Cg, L):    taps left on the same row, [o][e][c][l];
 *   lin  (Cg, Cg, L):         L⁻¹, [o][c][l]. */
static void FINC_NAME(prepare)(const T *weight, const T *linv, T *rows, T *left, T *lin, int64_t Cg, int64_t k)
{
    const int64_t p = k - 1, kk = k * k;
    for (int64_t l = 0; l < L; ++l) {
        const int64_t g = l % 4;
        for (int64_t o = 0; o < Cg; ++o)
            for (int64_t c = 0; c < Cg; ++c) {
                lin[(o * Cg + c) * L + l] = linv[(g * Cg + o) * Cg + c];
                for (int64_t a = 0; a < k; ++a)
                    for (int64_t e = 0; e < k; ++e) {
                        if (a == p && e == p)
                            continue; /* centre: L⁻¹·L = I, applied as ỹ */
                        double s = 0.0;
                        for (int64_t m = 0; m < Cg; ++m)
                            s += (double)linv[(g * Cg + o) * Cg + m] *
                                 (double)weight[((g * Cg + m) * Cg + c) * kk + a * k + e];
                        if (a < p)
                            rows[((((o * Cg + c) * p + a) * k + e) * L) + l] = (T)s;
                        else
                            left[(((o * p + e) * Cg + c) * L) + l] = (T)s;
                    }
            }
    }
}

/* Solve the pack of items first .. first+L-1 (those >= n_items are padding lanes).
 * Scratch: xs (Cg, H+k-1, W+k-1, L), acc (Cg, W, L). */
static void FINC_NAME(solve_pack)(const T *restrict y, T *restrict x, const T *restrict rows,
                                  const T *restrict left, const T *restrict lin, T *restrict xs,
                                  T *restrict acc, int64_t first, int64_t n_items, int64_t Cg,
                                  int64_t H, int64_t W, int64_t k)
{
    const int64_t p = k - 1, Wp = W + p, plane = (H + p) * Wp, block = Cg * H * W;
    for (int64_t c = 0; c < Cg; ++c) { /* zero padding: top p rows, left p columns */
        T *xc = xs + c * plane * L;
        memset(xc, 0, (size_t)(p * Wp * L) * sizeof(T));
        for (int64_t i = p; i < H + p; ++i)
            memset(xc + i * Wp * L, 0, (size_t)(p * L) * sizeof(T));
    }
    for (int64_t i = 0; i < H; ++i) {
        /* acc = y row i of each lane's own frame (padding lanes: 0) */
        for (int64_t l = 0; l < L; ++l) {
            const int64_t item = first + l, g = item % 4;
            const int64_t ni = g >= 2 ? H - 1 - i : i;
            if (item >= n_items) {
                for (int64_t cj = 0; cj < Cg * W; ++cj)
                    acc[cj * L + l] = 0;
                continue;
            }
            for (int64_t c = 0; c < Cg; ++c) {
                const T *src = y + item * block + (c * H + ni) * W;
                T *dst = acc + c * W * L + l;
                if (g % 2)
                    for (int64_t j = 0; j < W; ++j)
                        dst[j * L] = src[W - 1 - j];
                else
                    for (int64_t j = 0; j < W; ++j)
                        dst[j * L] = src[j];
            }
        }
        /* ỹ = L⁻¹·y in place: outputs from the last down, since o only reads inputs c < o */
        for (int64_t o = Cg - 1; o > 0; --o) {
            T *ao = acc + o * W * L;
            for (int64_t c = 0; c < o; ++c) {
                const T *m = lin + (o * Cg + c) * L, *ac = acc + c * W * L;
                for (int64_t j = 0; j < W; ++j)
                    for (int64_t l = 0; l < L; ++l)
                        ao[j * L + l] += m[l] * ac[j * L + l];
            }
        }
        /* taps on the rows above, for the whole row */
        for (int64_t o = 0; o < Cg; ++o) {
            T *ao = acc + o * W * L;
            for (int64_t c = 0; c < Cg; ++c)
                for (int64_t a = 0; a < p; ++a)
                    for (int64_t e = 0; e < k; ++e) {
                        const T *m = rows + (((o * Cg + c) * p + a) * k + e) * L;
                        const T *s = xs + (c * plane + (i + a) * Wp + e) * L;
                        for (int64_t j = 0; j < W; ++j)
                            for (int64_t l = 0; l < L; ++l)
                                ao[j * L + l] -= m[l] * s[j * L + l];
                    }
        }
        /* taps to the left on this row: a recurrence over columns */
        T *xrow = xs + (i + p) * Wp * L; /* row i of channel 0; channel c at + c·plane·L */
        for (int64_t j = 0; j < W; ++j)
            for (int64_t o = 0; o < Cg; ++o) {
                T r[L];
                for (int64_t l = 0; l < L; ++l)
                    r[l] = acc[(o * W + j) * L + l];
                for (int64_t e = 0; e < p; ++e)
                    for (int64_t c = 0; c < Cg; ++c) {
                        const T *m = left + ((o * p + e) * Cg + c) * L;
                        const T *s = xrow + (c * plane + j + e) * L;
                        for (int64_t l = 0; l < L; ++l)
                            r[l] -= m[l] * s[l];
                    }
                for (int64_t l = 0; l < L; ++l)
                    xrow[(o * plane + j + p) * L + l] = r[l];
            }
        /* solved row back to each lane's natural frame */
        for (int64_t l = 0; l < L && first + l < n_items; ++l) {
            const int64_t item = first + l, g = item % 4;
            const int64_t ni = g >= 2 ? H - 1 - i : i;
            for (int64_t o = 0; o < Cg; ++o) {
                const T *src = xrow + (o * plane + p) * L + l;
                T *dst = x + item * block + (o * H + ni) * W;
                if (g % 2)
                    for (int64_t j = 0; j < W; ++j)
                        dst[W - 1 - j] = src[j * L];
                else
                    for (int64_t j = 0; j < W; ++j)
                        dst[j] = src[j * L];
            }
        }
    }
}

int FINC_NAME(finc_inverse)(const T *y, const T *weight, const T *linv, T *x, int64_t B,
                            int64_t Cg, int64_t H, int64_t W, int64_t k, int64_t threads)
{
    const int64_t p = k - 1, n_items = 4 * B, n_packs = (n_items + L - 1) / L;
    const int64_t n_rows = Cg * Cg * p * k * L, n_left = Cg * p * Cg * L, n_lin = Cg * Cg * L;
    const int64_t n_scratch = (Cg * (H + p) * (W + p) + Cg * W) * L;
    T *tables = (T *)malloc((size_t)(n_rows + n_left + n_lin + 1) * sizeof(T));
    int failed = 0;
    if (!tables)
        return 1;
    FINC_NAME(prepare)(weight, linv, tables, tables + n_rows, tables + n_rows + n_left, Cg, k);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel num_threads((int)(threads > 0 ? threads : 1)) reduction(|| : failed)
#endif
    {
        T *scratch = (T *)malloc((size_t)n_scratch * sizeof(T));
        if (!scratch)
            failed = 1;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t pack = 0; pack < n_packs; ++pack)
            if (scratch)
                FINC_NAME(solve_pack)(y, x, tables, tables + n_rows, tables + n_rows + n_left, scratch,
                                      scratch + Cg * (H + p) * (W + p) * L, pack * L, n_items, Cg, H, W, k);
        free(scratch);
    }
    free(tables);
    return failed;
}

#undef L
#undef T

#endif /* FINC_REAL */
