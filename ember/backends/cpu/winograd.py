"""The CPU printers of the Winograd F(4x4, 3x3) transforms (lower/winograd.py).

Both transforms work on eight channels at once, one per SIMD lane (GCC vector extensions,
so the same C builds with or without AVX2), because the GEMM between them reads and writes
channels contiguously (V[p, t, c], M[p, t, o]):

* Input: a task is one tile row of up to 64 channels. The six input rows it needs are
  interleaved, eight channels at a time, into a zero-padded scratch ``s[g][row][col][8]`` by
  8 x 8 transposes (8 channels x 8 columns). A tile's 6x6 patch is then 36 contiguous loads;
  it goes through B^T on its columns, then on its rows. Per position, the task's stores are
  one contiguous run of V (the row's tiles x its channels), written by one core.
* Output: per tile, the 36 vectors M[p, t, o0..o0+8] go through A^T on columns and rows;
  8 x 8 transposes turn eight tiles' 4x4 results into rows of pixels per channel, and each
  row segment is stored through the epilogue (bias, fused ReLU/residual) in a loop over
  contiguous pixels.

The GEMM between them is the generic batched ``Matmul`` (backends/cpu/gemm.py).
"""
from __future__ import annotations

from ...lower.winograd import WinogradInput, WinogradOutput
from .codegen import c_dim, epilogue_store, template
from .gemm import PARALLEL_MACS

# both kinds register it (a program has the pair); the guard prints it once
_PRELUDE = r"""/* Winograd F(4x4, 3x3) transforms (backends/cpu/winograd.py) */
#ifndef EMBER_WINOGRAD
#define EMBER_WINOGRAD 1
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
typedef float ember_w8 __attribute__((vector_size(32)));
/* the first n (or all 8) lanes. A constant-size memcpy is one unaligned vector move; the
   partial case must not become a libc memcpy call (gcc turns a lane-copy loop into one),
   so AVX2 uses masked moves and the portable build copies through a volatile index. */
#if defined(__AVX2__)
#include <immintrin.h>
static inline __m256i ember_w8_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif
static inline ember_w8 ember_w8_loadn(const float *p, int64_t n) {
  ember_w8 v = {0, 0, 0, 0, 0, 0, 0, 0};
  if (n >= 8) { memcpy(&v, p, sizeof v); return v; }
#if defined(__AVX2__)
  return (ember_w8)_mm256_maskload_ps(p, ember_w8_mask(n));
#else
  for (volatile int64_t l = 0; l < n; l++) v[l] = p[l];
  return v;
#endif
}
static inline void ember_w8_storen(float *p, ember_w8 v, int64_t n) {
  if (n >= 8) { memcpy(p, &v, sizeof v); return; }
#if defined(__AVX2__)
  _mm256_maskstore_ps(p, ember_w8_mask(n), (__m256)v);
#else
  for (volatile int64_t l = 0; l < n; l++) p[l] = v[l];
#endif
}
/* o[k * so] = sum_q B^T[k][q] d[q * s] */
static inline void ember_wino_bt(const ember_w8 *d, int s, ember_w8 *o, int so) {
  const ember_w8 d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s], d5 = d[5 * s];
  o[0] = 4.0f * d0 - 5.0f * d2 + d4;
  o[so] = (d3 + d4) - 4.0f * (d1 + d2);
  o[2 * so] = (d4 - d3) + 4.0f * (d1 - d2);
  o[3 * so] = (d4 - d2) + 2.0f * (d3 - d1);
  o[4 * so] = (d4 - d2) - 2.0f * (d3 - d1);
  o[5 * so] = 4.0f * d1 - 5.0f * d3 + d5;
}
/* o[a * so] = sum_q A^T[a][q] m[q * s] */
static inline void ember_wino_at(const ember_w8 *m, int s, ember_w8 *o, int so) {
  const ember_w8 a = m[s] + m[2 * s], b = m[s] - m[2 * s], c = m[3 * s] + m[4 * s], d = m[3 * s] - m[4 * s];
  o[0] = m[0] + a + c;
  o[so] = b + 2.0f * d;
  o[2 * so] = a + 4.0f * c;
  o[3 * so] = b + 8.0f * d + m[5 * s];
}
/* r[i][l] <-> r[l][i]: an 8 x 8 block through three rounds of two-input shuffles (vunpck,
   vshuf and vperm2f128 or vpermt2ps: whatever the target has) */
typedef int32_t ember_i8 __attribute__((vector_size(32)));
#if defined(__clang__)
#define EMBER_SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define EMBER_SHUF(a, b, ...) __builtin_shuffle(a, b, (ember_i8){__VA_ARGS__})
#endif
static inline void ember_w8_transpose(ember_w8 r[8]) {
  ember_w8 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = EMBER_SHUF(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = EMBER_SHUF(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4)
    for (int j = 0; j < 2; j++) {
      u[i + j] = EMBER_SHUF(t[i + j], t[i + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + j + 2] = EMBER_SHUF(t[i + j], t[i + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  /* u[0] = rows 0-3 of columns 0, 4; u[2]: 1, 5; u[1]: 2, 6; u[3]: 3, 7 (u[4..7]: rows 4-7) */
#define EMBER_HALVES(q, a) r[q] = EMBER_SHUF(u[a], u[a + 4], 0, 1, 2, 3, 8, 9, 10, 11); \
                          r[q + 4] = EMBER_SHUF(u[a], u[a + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  EMBER_HALVES(0, 0) EMBER_HALVES(1, 2) EMBER_HALVES(2, 1) EMBER_HALVES(3, 3)
#undef EMBER_HALVES
}
/* scratch floats of the input transform: six zero-padded rows of 64 channels */
static inline int64_t ember_wino_scratch(int64_t ntw) { return 64 * 6 * (4 * ntw + 2); }
/* nc <= 8 channels x[cc][H][W] (channels HW apart) interleaved into the zero-padded scratch
   s[r][col][8] (R x U pixels; scratch row r is image row row0 + r, column col image column
   col - pw) by 8 x 8 transposes (8 channels x 8 columns) */
static void ember_wino_interleave(const float *restrict x, int64_t HW, int64_t nc, int64_t H, int64_t W,
    int64_t row0, int64_t pw, int64_t R, int64_t U, float *restrict s) {
  const int64_t wn = ember_min64(W, U - pw);  /* image columns that land in the scratch */
  for (int64_t r = 0; r < R; r++) {
    float *sr = s + r * U * 8;
    const int64_t h = row0 + r;
    if (h < 0 || h >= H) { memset(sr, 0, sizeof(float) * U * 8); continue; }
    memset(sr, 0, sizeof(float) * pw * 8);
    if (pw + W < U) memset(sr + (pw + W) * 8, 0, sizeof(float) * (U - pw - W) * 8);
    for (int64_t w0 = 0; w0 < wn; w0 += 8) {
      const int64_t nw = ember_min64(8, wn - w0);
      ember_w8 q[8];
      for (int64_t cc = 0; cc < 8; cc++) q[cc] = cc < nc ? ember_w8_loadn(x + cc * HW + h * W + w0, nw) : (ember_w8){0};
      ember_w8_transpose(q);
      for (int64_t l = 0; l < nw; l++) memcpy(sr + (w0 + pw + l) * 8, &q[l], sizeof q[l]);
    }
  }
}
/* V[p][t][c0 + cc] (positions ps apart, tiles C apart) of the ntw tiles of one tile row,
   nc <= 64 channels: the row's six input rows of each group of 8 channels are interleaved
   into s[g][6][U][8]; then per tile and group, 36 contiguous loads, B^T on columns and rows,
   36 stores. A task writes, per position, the tile row's nc channels of every tile: one
   contiguous run (all of it where nc = C), not 64-byte pieces a plane apart. Two cores
   writing interleaved pieces of V's 36 planes scaled not at all (l1: 241 us on 2 threads,
   238 on 1). */
static void ember_wino_in_row(const float *restrict x, int64_t HW, int64_t nc, int64_t H, int64_t W,
    int64_t row0, int64_t pw, int64_t ntw, float *restrict s, float *restrict v, int64_t ps, int64_t C) {
  const int64_t U = 4 * ntw + 2, ng = (nc + 7) / 8;
  for (int64_t g = 0; g < ng; g++)
    ember_wino_interleave(x + 8 * g * HW, HW, ember_min64(8, nc - 8 * g), H, W, row0, pw, 6, U, s + g * 6 * U * 8);
  for (int64_t tw = 0; tw < ntw; tw++)
    for (int64_t g = 0; g < ng; g++) {
      ember_w8 e[36], t[36], d[36];
      const float *sg = s + (g * 6 * U + 4 * tw) * 8;
      for (int i = 0; i < 6; i++)
        for (int j = 0; j < 6; j++) memcpy(&e[6 * i + j], sg + (i * U + j) * 8, sizeof e[0]);
      for (int j = 0; j < 6; j++) ember_wino_bt(e + j, 6, t + j, 6);          /* columns */
      for (int i = 0; i < 6; i++) ember_wino_bt(t + 6 * i, 1, d + 6 * i, 1);  /* rows */
      float *vt = v + tw * C + 8 * g;
      for (int p = 0; p < 36; p++) ember_w8_storen(vt + p * ps, d[p], nc - 8 * g);
    }
}
/* the 4x4 outputs of nl <= 8 tiles (tiles O apart, positions ps apart in m) of channels
   o0 .. o0 + no (no <= 8) as rows of pixels: y[oc][a][4 * tile + b]. Per tile the 36 values
   are contiguous loads with a channel per lane; 8 x 8 transposes turn the results into rows. */
static inline void ember_wino_out_tiles(const float *m, int64_t ps, int64_t O, int64_t nl, int64_t no,
    float y[8][4][32]) {
  ember_w8 yb[4][32];
  for (int64_t l = 0; l < 8; l++) {
    ember_w8 mm[36], t[24], r[16];
    if (l >= nl) { for (int a = 0; a < 4; a++) for (int b = 0; b < 4; b++) yb[a][4 * l + b] = (ember_w8){0}; continue; }
    if (no == 8) for (int p = 0; p < 36; p++) memcpy(&mm[p], m + p * ps + l * O, sizeof mm[p]);
    else for (int p = 0; p < 36; p++) mm[p] = ember_w8_loadn(m + p * ps + l * O, no);
    for (int k = 0; k < 6; k++) ember_wino_at(mm + k, 6, t + k, 6);          /* columns */
    for (int a = 0; a < 4; a++) ember_wino_at(t + 6 * a, 1, r + 4 * a, 1);   /* rows */
    for (int a = 0; a < 4; a++) for (int b = 0; b < 4; b++) yb[a][4 * l + b] = r[4 * a + b];
  }
  for (int a = 0; a < 4; a++)
    for (int g = 0; g < 4 && 2 * g < nl; g++) {
      ember_w8 q[8];
      for (int i = 0; i < 8; i++) q[i] = yb[a][8 * g + i];
      ember_w8_transpose(q);
      for (int64_t oc = 0; oc < no; oc++) memcpy(&y[oc][a][8 * g], &q[oc], sizeof q[oc]);
    }
}
#endif
"""


@template(WinogradInput, prelude=_PRELUDE)
def print_input(k: WinogradInput, params, printer) -> str:
    X, V = params[k.x], params[k.out]
    ph, pw = k.pad
    return "\n".join([
        f"  const int64_t N = {c_dim(k.N)}, C = {k.C}, nth = {c_dim(k.nth)}, ntw = {c_dim(k.ntw)}, T = N * nth * ntw;",
        f"  const int64_t H = {c_dim(k.H)}, W = {c_dim(k.W)};",
        "  const int64_t ncc = (C + 63) / 64;  /* a task: one tile row of 64 channels */",
        "  if (N == 0) return;",
        "  int joined = 0;  /* ember_spin_join's count */",
        f"  #pragma omp parallel if(N * C * H * W * 36 > {PARALLEL_MACS})",
        "  {",
        "    float *s = (float *)aligned_alloc(64, sizeof(float) * ember_wino_scratch(ntw));",
        "    #pragma omp for schedule(dynamic, 1) nowait",
        "    for (int64_t t = 0; t < N * nth * ncc; t++) {",
        "      const int64_t n = t / (nth * ncc), th = t / ncc % nth, c0 = t % ncc * 64;",
        f"      ember_wino_in_row({X} + {c_dim(k.offset)} + (n * C + c0) * H * W, H * W, ember_min64(64, C - c0),",
        f"                        H, W, 4 * th - {ph}, {pw}, ntw, s, {V} + (n * nth + th) * ntw * C + c0, T * C, C);",
        "    }",
        "    free(s);",
        "    ember_spin_join(&joined);",
        "  }",
    ]) + "\n"


@template(WinogradOutput, prelude=_PRELUDE)
def print_output(k: WinogradOutput, params, printer) -> str:
    Mb, Y = params[k.m], params[k.out]
    L = [f"  const int64_t N = {c_dim(k.N)}, O = {k.O}, Ho = {c_dim(k.Ho)}, Wo = {c_dim(k.Wo)};",
         f"  const int64_t nth = {c_dim(k.nth)}, ntw = {c_dim(k.ntw)};",
         "  const int64_t T = N * nth * ntw, nob = (O + 7) / 8;  /* task pairs share M's cache lines: chunks of 2 */",
         "  if (N == 0) return;",
         f"  #pragma omp parallel for schedule(dynamic, 2) if(N * O * Ho * Wo * 36 > {PARALLEL_MACS})",
         "  for (int64_t t = 0; t < N * nob; t++) {",
         "    const int64_t n = t / nob, o0 = (t % nob) * 8, no = ember_min64(8, O - o0);",
         f"    const float *mt = {Mb} + n * nth * ntw * O + o0;",
         "    float y[8][4][32] __attribute__((aligned(32)));",
         "    for (int64_t th = 0; th < nth; th++)",
         "      for (int64_t tw0 = 0; tw0 < ntw; tw0 += 8) {",
         "        ember_wino_out_tiles(mt + (th * ntw + tw0) * O, T * O, O, ember_min64(8, ntw - tw0), no, y);",
         "        const int64_t w0 = 4 * tw0, nw = ember_min64(32, Wo - w0);",
         "        for (int64_t oc = 0; oc < no; oc++) {",
         "          const int64_t o = o0 + oc;",
         "          for (int a = 0; a < 4 && 4 * th + a < Ho; a++) {",
         "            const int64_t h = 4 * th + a;",
         "            for (int64_t c = 0; c < nw; c++) {"]
    L += epilogue_store(params, "              ", k.epilogue, Y, k.out.dtype, "((n * O + o) * Ho + h) * Wo + w0 + c",
                        "y[oc][a][c]", "const int64_t i0 = n, i1 = o, i2 = h, i3 = w0 + c; const float acc = y[oc][a][c]; "
                        "(void)i0; (void)i1; (void)i2; (void)i3;")
    L += ["            }", "          }", "        }", "      }", "  }"]
    return "\n".join(L) + "\n"
