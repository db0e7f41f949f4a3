"""The CPU printers of the Winograd F(4x4, 3x3) transforms (lower/winograd.py).

Both transforms work on eight tiles at once, one per SIMD lane (GCC vector extensions, so
the same C builds with or without AVX2), along a row of tiles:

* Input: a channel of one image is first copied into a zero-padded scratch with its columns
  split by residue mod 4, ``s[row][u % 4][u / 4]`` (u the padded column). Column ``4 tw + j``
  of tile tw is then ``s[row][j % 4][tw + j / 4]``: eight consecutive tiles' values are one
  contiguous load, and no lane needs a gather. The 6x6 patch goes through B^T on its columns,
  then on its rows, and the 36 vectors are stored to V[p, c, t..t+8] (t contiguous).
* Output: the 36 vectors M[p, o, t..t+8] go through A^T on columns and rows; the 4x4 results
  are interleaved back into image order in a small buffer, and each output row segment is
  stored through the epilogue (bias, fused ReLU/residual) in a loop over contiguous pixels.

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
/* scratch floats for one channel of the input transform */
static inline int64_t ember_wino_scratch(int64_t nth, int64_t ntw) { return (4 * nth + 2) * 4 * (ntw + 8); }
/* V[p][t] (positions ps apart) of every tile of one channel x [H][W] of one image */
static void ember_wino_in(const float *restrict x, int64_t H, int64_t W, int64_t ph, int64_t pw,
    int64_t nth, int64_t ntw, float *restrict s, float *restrict v, int64_t ps) {
  const int64_t Wq = ntw + 8, R = 4 * nth + 2;
  for (int64_t r = 0; r < R; r++) {
    float *restrict sr = s + r * 4 * Wq;
    memset(sr, 0, sizeof(float) * 4 * Wq);
    const int64_t h = r - ph;
    if (h < 0 || h >= H) continue;
    const float *restrict xr = x + h * W;
    for (int64_t w = 0; w < W; w++) { const int64_t u = w + pw; sr[(u & 3) * Wq + (u >> 2)] = xr[w]; }
  }
  for (int64_t th = 0; th < nth; th++)
    for (int64_t tw0 = 0; tw0 < ntw; tw0 += 8) {
      ember_w8 d[36], t[36];
      for (int i = 0; i < 6; i++) {
        const float *sr = s + (4 * th + i) * 4 * Wq + tw0;
        for (int j = 0; j < 6; j++) d[6 * i + j] = ember_w8_loadn(sr + (j & 3) * Wq + (j >> 2), 8);
      }
      for (int j = 0; j < 6; j++) ember_wino_bt(d + j, 6, t + j, 6);          /* columns */
      for (int i = 0; i < 6; i++) ember_wino_bt(t + 6 * i, 1, d + 6 * i, 1);  /* rows */
      float *vt = v + th * ntw + tw0;
      const int64_t nl = ntw - tw0;
      for (int p = 0; p < 36; p++) ember_w8_storen(vt + p * ps, d[p], nl);
    }
}
/* the 4x4 outputs of eight tiles of one channel, interleaved: y[a][4 * lane + b] */
static inline void ember_wino_out_tiles(const float *m, int64_t ps, int64_t nl, float y[4][32]) {
  ember_w8 mm[36], t[24], r[16];
  for (int p = 0; p < 36; p++) mm[p] = ember_w8_loadn(m + p * ps, nl);
  for (int k = 0; k < 6; k++) ember_wino_at(mm + k, 6, t + k, 6);          /* columns */
  for (int a = 0; a < 4; a++) ember_wino_at(t + 6 * a, 1, r + 4 * a, 1);   /* rows */
  for (int a = 0; a < 4; a++)
    for (int l = 0; l < 8; l++)
      for (int b = 0; b < 4; b++) y[a][4 * l + b] = r[4 * a + b][l];
}
#endif
"""


@template(WinogradInput, prelude=_PRELUDE)
def print_input(k: WinogradInput, params, printer) -> str:
    X, V = params[k.x], params[k.out]
    ph, pw = k.pad
    return "\n".join([
        f"  const int64_t N = {c_dim(k.N)}, C = {k.C}, nth = {k.nth}, ntw = {k.ntw}, T = N * nth * ntw;",
        "  if (N == 0) return;",
        f"  #pragma omp parallel if(N * C * {k.H * k.W * 36} > {PARALLEL_MACS})",
        "  {",
        "    float *s = (float *)malloc(sizeof(float) * ember_wino_scratch(nth, ntw));",
        "    #pragma omp for schedule(dynamic, 4)",
        "    for (int64_t t = 0; t < N * C; t++) {",
        "      const int64_t n = t / C, c = t % C;",
        f"      ember_wino_in({X} + {c_dim(k.offset)} + t * {k.H * k.W}, {k.H}, {k.W}, {ph}, {pw}, nth, ntw, s,",
        f"                    {V} + c * 36 * T + n * nth * ntw, T);",
        "    }",
        "    free(s);",
        "  }",
    ]) + "\n"


@template(WinogradOutput, prelude=_PRELUDE)
def print_output(k: WinogradOutput, params, printer) -> str:
    Mb, Y = params[k.m], params[k.out]
    L = [f"  const int64_t N = {c_dim(k.N)}, O = {k.O}, Ho = {k.Ho}, Wo = {k.Wo}, nth = {k.nth}, ntw = {k.ntw};",
         "  const int64_t T = N * nth * ntw;",
         "  if (N == 0) return;",
         f"  #pragma omp parallel for schedule(dynamic, 4) if(N * O * {k.Ho * k.Wo * 36} > {PARALLEL_MACS})",
         "  for (int64_t t = 0; t < N * O; t++) {",
         "    const int64_t n = t / O, o = t % O;",
         f"    const float *mo = {Mb} + o * T + n * nth * ntw;",
         "    float y[4][32] __attribute__((aligned(32)));",
         "    for (int64_t th = 0; th < nth; th++)",
         "      for (int64_t tw0 = 0; tw0 < ntw; tw0 += 8) {",
         "        ember_wino_out_tiles(mo + th * ntw + tw0, O * T, ntw - tw0, y);",
         "        const int64_t w0 = 4 * tw0, nw = ember_min64(32, Wo - w0);",
         "        for (int a = 0; a < 4 && 4 * th + a < Ho; a++) {",
         "          const int64_t h = 4 * th + a;",
         "          for (int64_t c = 0; c < nw; c++) {"]
    L += epilogue_store(params, "            ", k.epilogue, Y, k.out.dtype, "((n * O + o) * Ho + h) * Wo + w0 + c",
                        "y[a][c]", "const int64_t i0 = n, i1 = o, i2 = h, i3 = w0 + c; const float acc = y[a][c]; "
                        "(void)i0; (void)i1; (void)i2; (void)i3;")
    L += ["          }", "        }", "      }", "  }"]
    return "\n".join(L) + "\n"
