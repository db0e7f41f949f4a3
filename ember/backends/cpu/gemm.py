"""The CPU GEMM: a register-blocked micro-kernel, cache blocking, OpenMP, fused epilogue.

``out[b, i, j] = epilogue(sum_k A[b, i, k] * B[b, k, j])`` for float32 A and B.

* Micro-kernel: an MR x NR tile of C; each k step broadcasts MR elements of A (rows of A,
  unit stride along k) and loads NR packed elements of B. By the instruction set the
  compiler targets (-march=native): AVX-512, 12 x 32 (two 16-column panels side by side, 24
  zmm accumulators; a lone last panel takes a 12 x 16 kernel); AVX2/FMA, 6 x 16 (two ymm per
  row); else a portable C loop, 6 x 16. All read the same packed layout, so the constants
  (and saved artifacts) do not depend on it; ``EMBER_MR`` and ``EMBER_NR`` in the C.
* B layout: panels of 16 columns, ``Bp[(j / 16) * K + k][j % 16]``, zero-padded past N. A
  constant B (a weight) is packed once at compile time (``ember.lower.packing``), one
  matrix for every batch entry or one per entry (``Bp[b][j / 16][k][j % 16]``); an
  activation B (attention's Q@K^T, P@V) is packed per task on the fly.
* Blocking: K in blocks of at most KC (KC_PACKED for a packed weight; the B micro-panel,
  KC x NR, is read from L2, a prefetch ahead, by each row tile of the task; its MC rows of
  A stay in L2); tasks of (batch, MC rows, NC columns) go to OpenMP, NC at most NC_MAX
  (fewer columns per task, a B block nearer L2 size: 2048^3 went 230 -> 265 GFLOP/s), then NC
  and MC halved until there are TASKS_WANTED of them.
  Partial sums over K blocks accumulate in C (when C is float32; otherwise K is one
  block); the last block's tile goes to an MR x NR buffer and the epilogue stores it to C,
  element by element, in a loop gcc vectorizes. A kernel may carry its own blocking
  (``Matmul.tile``: "kc", "mc", "tasks", "mc_min"), chosen per shape by ``autotune.py``. Tasks are scheduled dynamically, so a
  core that the OS takes away for a while does not stall the others at the barrier.
* A is read in place (rows ``rs`` apart), except that an A whose rows are 4 KiB apart (K a
  multiple of 1024) is first copied, once per call, to rows 16 floats further apart: twelve
  rows in one set of an 8-way L1 evicted each other every k step (Zen 4, 1024^3: 124 -> 167
  GFLOP/s); and an A with a k-stride other than 1 is packed per task (``ember_pack_a``).
* M == 1 with a packed weight is a GEMV: panels are split across threads and each k step
  feeds eight independent accumulators.
* Ragged edges: a task's rows are split into tiles of nearly equal height (at most MR; 16
  rows are 8 + 8, not 12 + 4, whose 4-row tile has too few accumulators to hide the FMA
  latency: 13 x 512 x 512 went 19.7 -> 17.4 us); a column tile narrower than 16 goes
  through the tile buffer. K == 0 gives the epilogue of zero.
* conv2d is this GEMM with the image as B (``ImageOperand``, lower/rules_conv.py; a grouped
  conv batches over (image, group)): its im2col panels are packed straight from the image,
  per task (``ember_pack_img``), so no im2col matrix is written and read back.
* An activation B whose columns several row tasks share (a deep conv layer: many output
  channels, a small image) is packed whole once per call, in parallel, before the tasks.
"""
from __future__ import annotations

from ...ir import dtypes
from ...ir.symbolic import prod
from ...lower.loop_ir import Matmul
from ...lower.packing import ImageOperand

MR, NR = 6, 16
MR_AVX512 = 12       # rows of the AVX-512 micro-tile (EMBER_MR in the C)
KC = 512             # K block: fewer blocks, fewer round trips of C's partial sums (Zen 4: 256 -> 512 took 1024^3 167 -> 182 GFLOP/s)
KC_PACKED = 1024     # with a pre-packed weight (Zen 4, paired in one process: 1024^3 x0.97 against 512, one K block, C written once; K = 1536-3072 x0.99)
MC_PACKED = 96       # rows per task with a pre-packed B (A block 96 x KC_PACKED floats, 384 KiB, in L2)
MC_ONTHEFLY = 192    # larger when B is packed per task, so packing is a smaller share
PARALLEL_MACS = 1 << 17  # multiply-adds below which a GEMM stays on one thread
TASKS_WANTED = 16    # split N, then M, until there are this many tasks (load balance on few cores)
MC_MIN = 24          # rows per task at the finest M split
NC_MAX = 512         # columns per task at most: its B block is KC x 512 floats (1 MiB at KC, 2 at KC_PACKED)
PREPACK_MAX = 1 << 23  # floats: an activation B up to this size is packed whole, once per call


def _ukr_avx(mr: int) -> str:
    acc = ", ".join(f"c{r}0 = _mm256_setzero_ps(), c{r}1 = _mm256_setzero_ps()" for r in range(mr))
    rows = " ".join(f"const float *restrict a{r} = a + {r} * rs;" for r in range(mr))
    body = "\n".join(
        f"    {{ const __m256 av = _mm256_broadcast_ss(a{r} + k); c{r}0 = _mm256_fmadd_ps(av, b0, c{r}0); "
        f"c{r}1 = _mm256_fmadd_ps(av, b1, c{r}1); }}" for r in range(mr))
    add = "\n".join(f"    c{r}0 = _mm256_add_ps(c{r}0, _mm256_loadu_ps(ci + {r} * ldi)); "
                    f"c{r}1 = _mm256_add_ps(c{r}1, _mm256_loadu_ps(ci + {r} * ldi + 8));" for r in range(mr))
    store = "\n".join(f"  _mm256_storeu_ps(c + {r} * ldc, c{r}0); _mm256_storeu_ps(c + {r} * ldc + 8, c{r}1);"
                      for r in range(mr))
    return f"""static inline void ember_ukr{mr}(int64_t kc, const float *restrict a, int64_t rs,
    const float *restrict b, const float *ci, int64_t ldi, float *c, int64_t ldc, int accumulate) {{
  __m256 {acc};
  {rows}
  #pragma GCC unroll 4
  for (int64_t k = 0; k < kc; k++) {{
    const __m256 b0 = _mm256_loadu_ps(b + 16 * k), b1 = _mm256_loadu_ps(b + 16 * k + 8);
{body}
  }}
  if (accumulate) {{
{add}
  }}
{store}
}}
"""


def _ukr_avx512(mr: int, panels: int) -> str:
    """MR x (16 * panels) with one zmm accumulator per row and panel: each k step loads one
    row of each panel and issues MR * panels FMAs whose A operand is one broadcast from
    memory. Two panels (MR = 12: 24 accumulators of 32 registers) make the kernel FMA-bound:
    one panel needs 13 loads per 12 FMAs and is load-bound at about 70 % of peak. Same
    operands as the AVX2 kernel: rows of A read in place, ``rs`` apart; the second panel's
    rows are at ``b2``. B is prefetched 64 k steps (4 KiB) ahead: a task with few rows
    (Winograd's 16 tiles, a 7x7 image's 49 pixels) reads each B panel about once, from L3
    or memory, and the prefetch hides part of that (49x4608x512, its weight in L3: 306 ->
    377 GFLOP/s; flushed from L3 before each call: 297 -> 326; no change for many rows)."""
    cols = range(panels)
    acc = ", ".join(f"c{r}_{p} = _mm512_setzero_ps()" for r in range(mr) for p in cols)
    rows = " ".join(f"const float *restrict a{r} = a + {r} * rs;" for r in range(mr))
    loads = ", ".join(f"b{p} = _mm512_loadu_ps(b{'2' if p else ''} + 16 * k)" for p in cols)
    body = "\n".join(f"    {{ const __m512 av = _mm512_set1_ps(a{r}[k]); " +
                     " ".join(f"c{r}_{p} = _mm512_fmadd_ps(av, b{p}, c{r}_{p});" for p in cols) + " }"
                     for r in range(mr))
    add = "\n".join(f"    c{r}_{p} = _mm512_add_ps(c{r}_{p}, _mm512_loadu_ps(ci + {r} * ldi + {16 * p}));"
                    for r in range(mr) for p in cols)
    store = "\n".join(f"  _mm512_storeu_ps(c + {r} * ldc + {16 * p}, c{r}_{p});" for r in range(mr) for p in cols)
    name = f"ember_ukr{mr}" + ("w" if panels == 2 else "")
    b2 = ", const float *restrict b2" if panels == 2 else ""
    return f"""static inline void {name}(int64_t kc, const float *restrict a, int64_t rs,
    const float *restrict b{b2}, const float *ci, int64_t ldi, float *c, int64_t ldc, int accumulate) {{
  __m512 {acc};
  {rows}
  #pragma GCC unroll {4 // panels}
  for (int64_t k = 0; k < kc; k++) {{
    const __m512 {loads};
    _mm_prefetch((const char *)(b + 16 * k + 1024), _MM_HINT_T0);{"" if panels == 1 else " _mm_prefetch((const char *)(b2 + 16 * k + 1024), _MM_HINT_T0);"}
{body}
  }}
  if (accumulate) {{
{add}
  }}
{store}
}}
"""


def _ukr_portable(mr: int) -> str:
    return f"""static inline void ember_ukr{mr}(int64_t kc, const float *restrict a, int64_t rs,
    const float *restrict b, const float *ci, int64_t ldi, float *c, int64_t ldc, int accumulate) {{
  float t[{mr}][16];
  for (int r = 0; r < {mr}; r++) for (int j = 0; j < 16; j++) t[r][j] = accumulate ? ci[r * ldi + j] : 0.0f;
  for (int64_t k = 0; k < kc; k++)
    for (int r = 0; r < {mr}; r++) {{
      const float av = a[r * rs + k];
      for (int j = 0; j < 16; j++) t[r][j] += av * b[16 * k + j];
    }}
  for (int r = 0; r < {mr}; r++) for (int j = 0; j < 16; j++) c[r * ldc + j] = t[r][j];
}}
"""


_GEMV_AVX = r"""static inline void ember_gemv16(int64_t K, const float *restrict a, int64_t sa,
    const float *restrict b, float *restrict y) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  __m256 s4 = _mm256_setzero_ps(), s5 = _mm256_setzero_ps(), s6 = _mm256_setzero_ps(), s7 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    const float *bk = b + 16 * k;
    const __m256 a0 = _mm256_set1_ps(a[k * sa]), a1 = _mm256_set1_ps(a[(k + 1) * sa]);
    const __m256 a2 = _mm256_set1_ps(a[(k + 2) * sa]), a3 = _mm256_set1_ps(a[(k + 3) * sa]);
    s0 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(bk), s0); s1 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(bk + 8), s1);
    s2 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(bk + 16), s2); s3 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(bk + 24), s3);
    s4 = _mm256_fmadd_ps(a2, _mm256_loadu_ps(bk + 32), s4); s5 = _mm256_fmadd_ps(a2, _mm256_loadu_ps(bk + 40), s5);
    s6 = _mm256_fmadd_ps(a3, _mm256_loadu_ps(bk + 48), s6); s7 = _mm256_fmadd_ps(a3, _mm256_loadu_ps(bk + 56), s7);
  }
  for (; k < K; k++) {
    const __m256 av = _mm256_set1_ps(a[k * sa]);
    s0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(b + 16 * k), s0);
    s1 = _mm256_fmadd_ps(av, _mm256_loadu_ps(b + 16 * k + 8), s1);
  }
  s0 = _mm256_add_ps(_mm256_add_ps(s0, s2), _mm256_add_ps(s4, s6));
  s1 = _mm256_add_ps(_mm256_add_ps(s1, s3), _mm256_add_ps(s5, s7));
  _mm256_storeu_ps(y, s0); _mm256_storeu_ps(y + 8, s1);
}
"""

_PACK_IMG_AVX = r"""/* Rows k0 <= k < k0 + kc of the im2col matrix of one image x [C, H, W], columns j0 <= j < N
   (j = ho * Wo + wo, k = (c * KH + rh) * KW + rw), into 16-wide panels, zero-padded: the
   convolution's B operand packed without an im2col buffer. g = {H, W, KH, KW, Wo, sh, sw, ph,
   pw, dh, dw}. A panel's 16 columns fall into runs of one output row each (one or two runs
   for a wide image); per k, a run is a strided slice of one input row, clipped by the
   padding. AVX2 masked loads (which read nothing in masked-off lanes) copy a run with its
   clipping in a few instructions, stride 1 directly, stride 2 through an even-lane shuffle:
   this copy is per task, and cheap packing is what keeps a conv near the GEMM's speed. */
static inline __m256i ember_lane_mask(__m256i lane, int64_t lo, int64_t hi) {
  return _mm256_and_si256(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32((int)lo - 1)),
                          _mm256_cmpgt_epi32(_mm256_set1_epi32((int)hi), lane));
}
static inline __m256 ember_even_lanes(__m256 a, __m256 b) {  /* a0 a2 .. a6 b0 b2 .. b6 */
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
}
static void ember_pack_img(int64_t kc, int64_t k0, int64_t nc, int64_t N, int64_t j0, const float *restrict x,
    const int64_t *g, float *restrict out) {
  const int64_t H = g[0], W = g[1], KH = g[2], KW = g[3], Wo = g[4], sh = g[5], sw = g[6];
  const int64_t ph = g[7], pw = g[8], dh = g[9], dw = g[10];
  const __m256i l0 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), l8 = _mm256_add_epi32(l0, _mm256_set1_epi32(8));
  const __m256i l16 = _mm256_add_epi32(l8, _mm256_set1_epi32(8)), l24 = _mm256_add_epi32(l16, _mm256_set1_epi32(8));
  for (int64_t jp = 0; jp < nc; jp += 16) {
    const int64_t jb = j0 + jp, nr = ember_min64(16, N - jb);
    int64_t ra[16], rn[16], rh0[16], rw0[16];  /* run: first lane, length, window corner */
    int nrun = 0;
    for (int64_t j = 0; j < nr; nrun++) {
      const int64_t ho = (jb + j) / Wo, wo = (jb + j) % Wo, len = ember_min64(nr - j, Wo - wo);
      ra[nrun] = j; rn[nrun] = len; rh0[nrun] = ho * sh - ph; rw0[nrun] = wo * sw - pw;
      j += len;
    }
    float *restrict o = out + jp * kc;
    int64_t c = k0 / (KH * KW), rh = (k0 / KW) % KH, rw = k0 % KW;
    if (nrun == 1 && nr == 16 && rw0[0] >= 0 && rw0[0] + (KW - 1) * dw + 15 * sw < W) {
      /* no tap of this panel is clipped sideways: per (c, rh) the row is in or out, and its
         KW taps are copies at a fixed shift (most panels of a wide image; no test per k) */
      for (int64_t k = 0; k < kc; ) {
        const int64_t n = ember_min64(KW - rw, kc - k), hh = rh0[0] + rh * dh;
        if (hh >= 0 && hh < H) {
          const float *src = x + c * H * W + hh * W + rw0[0] + rw * dw;
          if (sw == 1)
            for (int64_t t = 0; t < n; t++, src += dw, o += 16) {
              _mm256_storeu_ps(o, _mm256_loadu_ps(src)); _mm256_storeu_ps(o + 8, _mm256_loadu_ps(src + 8));
            }
          else if (sw == 2)  /* even lanes of 31 floats (the 32nd may lie past the image) */
            for (int64_t t = 0; t < n; t++, src += dw, o += 16) {
              _mm256_storeu_ps(o, ember_even_lanes(_mm256_loadu_ps(src), _mm256_loadu_ps(src + 8)));
              _mm256_storeu_ps(o + 8, ember_even_lanes(_mm256_loadu_ps(src + 16),
                                                       _mm256_maskload_ps(src + 24, ember_lane_mask(l0, 0, 7))));
            }
          else
            for (int64_t t = 0; t < n; t++, src += dw, o += 16) for (int j = 0; j < 16; j++) o[j] = src[j * sw];
        } else {
          for (int64_t t = 0; t < n; t++, o += 16) {
            _mm256_storeu_ps(o, _mm256_setzero_ps()); _mm256_storeu_ps(o + 8, _mm256_setzero_ps());
          }
        }
        k += n; rw = 0;
        if (++rh == KH) { rh = 0; c++; }
      }
      continue;
    }
    for (int64_t k = 0; k < kc; k++, o += 16) {
      const float *xc = x + c * H * W;
      __m256 v0 = _mm256_setzero_ps(), v1 = _mm256_setzero_ps();
      for (int r = 0; r < nrun; r++) {
        const int64_t hh = rh0[r] + rh * dh, w0 = rw0[r] + rw * dw;  /* input row, column of lane ra */
        if (hh < 0 || hh >= H || w0 + (rn[r] - 1) * sw < 0 || w0 >= W) continue;
        /* lanes [lo, hi) read columns inside [0, W) (no division for strides 1 and 2: this runs per k) */
        const int64_t before = w0 >= 0 ? 0 : sw == 1 ? -w0 : sw == 2 ? (1 - w0) >> 1 : (sw - 1 - w0) / sw;
        const int64_t inside = sw == 1 ? W - w0 : sw == 2 ? (W - w0 + 1) >> 1 : (W - w0 + sw - 1) / sw;
        const int64_t lo = ra[r] + before, hi = ra[r] + ember_min64(rn[r], inside);
        const float *p = xc + hh * W + w0 - ra[r] * sw;  /* lane j reads p[j * sw] */
        if (hi - lo == 16) {  /* the common case: the whole panel, unclipped */
          if (sw == 1) { v0 = _mm256_loadu_ps(p); v1 = _mm256_loadu_ps(p + 8); }
          else {
            for (int j = 0; j < 16; j++) o[j] = p[j * sw];
            v0 = _mm256_loadu_ps(o); v1 = _mm256_loadu_ps(o + 8);
          }
        } else if (sw == 1) {
          v0 = _mm256_or_ps(v0, _mm256_maskload_ps(p, ember_lane_mask(l0, lo, hi)));
          v1 = _mm256_or_ps(v1, _mm256_maskload_ps(p + 8, ember_lane_mask(l8, lo, hi)));
        } else if (sw == 2) {  /* positions 2*lo .. 2*hi-2 of p */
          const int64_t qa = 2 * lo, qb = 2 * hi - 1;
          const __m256 a = _mm256_maskload_ps(p, ember_lane_mask(l0, qa, qb));
          const __m256 b = _mm256_maskload_ps(p + 8, ember_lane_mask(l8, qa, qb));
          const __m256 e = _mm256_maskload_ps(p + 16, ember_lane_mask(l16, qa, qb));
          const __m256 f = _mm256_maskload_ps(p + 24, ember_lane_mask(l24, qa, qb));
          v0 = _mm256_or_ps(v0, ember_even_lanes(a, b));
          v1 = _mm256_or_ps(v1, ember_even_lanes(e, f));
        } else {
          float t[16] __attribute__((aligned(32))) = {0};
          for (int64_t j = lo; j < hi; j++) t[j] = p[j * sw];
          v0 = _mm256_or_ps(v0, _mm256_load_ps(t));
          v1 = _mm256_or_ps(v1, _mm256_load_ps(t + 8));
        }
      }
      _mm256_storeu_ps(o, v0); _mm256_storeu_ps(o + 8, v1);
      if (++rw == KW) { rw = 0; if (++rh == KH) { rh = 0; c++; } }
    }
  }
}
"""

_PACK_IMG_PORTABLE = r"""/* Rows k0 <= k < k0 + kc of the im2col matrix of one image x [C, H, W], columns j0 <= j < N
   (j = ho * Wo + wo, k = (c * KH + rh) * KW + rw), into 16-wide panels, zero-padded: the
   convolution's B operand packed without an im2col buffer. g = {H, W, KH, KW, Wo, sh, sw, ph,
   pw, dh, dw}. Portable version: a panel in one output row whose window row is inside the image
   is 16 loads at a fixed stride, other rows go element by element. */
static void ember_pack_img(int64_t kc, int64_t k0, int64_t nc, int64_t N, int64_t j0, const float *restrict x,
    const int64_t *g, float *restrict out) {
  const int64_t H = g[0], W = g[1], KH = g[2], KW = g[3], Wo = g[4], sh = g[5], sw = g[6];
  const int64_t ph = g[7], pw = g[8], dh = g[9], dw = g[10];
  for (int64_t jp = 0; jp < nc; jp += 16) {
    const int64_t jb = j0 + jp, nr = ember_min64(16, N - jb);
    int64_t hb[16], wb[16];  /* top-left input corner of each column's window */
    for (int j = 0; j < 16; j++) {
      const int64_t jj = jb + (j < nr ? j : 0);
      hb[j] = (jj / Wo) * sh - ph; wb[j] = (jj % Wo) * sw - pw;
    }
    const int row = nr == 16 && jb / Wo == (jb + 15) / Wo;
    float *restrict o = out + jp * kc;
    int64_t c = k0 / (KH * KW), rh = (k0 / KW) % KH, rw = k0 % KW;
    for (int64_t k = 0; k < kc; k++, o += 16) {
      const float *restrict xc = x + c * H * W;
      const int64_t hh = hb[0] + rh * dh, w0 = wb[0] + rw * dw;
      if (row && hh >= 0 && hh < H && w0 >= 0 && w0 + 15 * sw < W) {
        const float *restrict xr = xc + hh * W + w0;
        if (sw == 1) for (int j = 0; j < 16; j++) o[j] = xr[j];
        else for (int j = 0; j < 16; j++) o[j] = xr[j * sw];
      } else {
        for (int j = 0; j < 16; j++) {
          const int64_t h = hb[j] + rh * dh, w = wb[j] + rw * dw;
          o[j] = j < nr && h >= 0 && h < H && w >= 0 && w < W ? xc[h * W + w] : 0.0f;
        }
      }
      if (++rw == KW) { rw = 0; if (++rh == KH) { rh = 0; c++; } }
    }
  }
}
"""

_GEMV_PORTABLE = r"""static inline void ember_gemv16(int64_t K, const float *restrict a, int64_t sa,
    const float *restrict b, float *restrict y) {
  float t[4][16] = {{0}};
  int64_t k = 0;
  for (; k + 4 <= K; k += 4)
    for (int u = 0; u < 4; u++) for (int j = 0; j < 16; j++) t[u][j] += a[(k + u) * sa] * b[16 * (k + u) + j];
  for (; k < K; k++) for (int j = 0; j < 16; j++) t[0][j] += a[k * sa] * b[16 * k + j];
  for (int j = 0; j < 16; j++) y[j] = (t[0][j] + t[1][j]) + (t[2][j] + t[3][j]);
}
"""

_PACK = r"""/* B[k][j] (strides sk, sn), k < kc, j0 <= j < N, into 16-wide panels, zero-padded. */
static inline void ember_pack_b(int64_t kc, int64_t nc, int64_t N, int64_t j0, const float *restrict b,
    int64_t sk, int64_t sn, float *restrict out) {
  for (int64_t jp = 0; jp < nc; jp += 16) {
    const int64_t nr = ember_min64(16, N - j0 - jp);
    float *restrict o = out + jp * kc;
    if (sn == 1 && nr == 16) {
      for (int64_t k = 0; k < kc; k++) for (int j = 0; j < 16; j++) o[16 * k + j] = b[k * sk + j0 + jp + j];
    } else {
      for (int64_t k = 0; k < kc; k++)
        for (int j = 0; j < 16; j++) o[16 * k + j] = j < nr ? b[k * sk + (j0 + jp + j) * sn] : 0.0f;
    }
  }
}
/* rows of A with any strides into a row-major block (unit stride along k) */
static inline void ember_pack_a(int64_t mc, int64_t kc, const float *restrict a, int64_t sm, int64_t sk,
    float *restrict out) {
  for (int64_t i = 0; i < mc; i++) for (int64_t k = 0; k < kc; k++) out[i * kc + k] = a[i * sm + k * sk];
}
"""


def _dispatch(mr: int, wide: bool) -> str:
    """``ember_ukr(mr, np, ...)``: an mr-row tile of np panels (np = 2 only where EMBER_NR is
    32, the AVX-512 kernels; elsewhere a second panel would be a second call)."""
    def call(m):
        one = f"ember_ukr{m}(kc, a, rs, b, ci, ldi, c, ldc, accumulate)"
        if not wide:
            return f"    case {m}: {one}; break;\n"
        return (f"    case {m}: if (np == 2) ember_ukr{m}w(kc, a, rs, b, b2, ci, ldi, c, ldc, accumulate); "
                f"else {one}; break;\n")
    return (UKR_SIGNATURE + " {\n" + ("" if wide else "  (void)np; (void)b2;\n") +
            "  switch (mr) {\n" + "".join(call(m) for m in range(1, mr + 1)) + "  }\n}\n")


# hidden: each program's library keeps its own copy (one built for AVX2 must not call another's)
UKR_SIGNATURE = ("__attribute__((visibility(\"hidden\"))) void ember_ukr(int mr, int np, int64_t kc, "
                 "const float *a, int64_t rs,\n    const float *b, const float *b2, const float *ci, int64_t ldi, "
                 "float *c, int64_t ldc, int accumulate)")
# a program whose source holds this line links the micro-kernels' object (toolchain.build)
LINK_MARK = "/* ember: links the GEMM micro-kernels (gemm.ukr_source) */"


def ukr_source() -> str:
    """The micro-kernels and their dispatcher as a translation unit of their own: compiled
    once per compiler, flags and CPU, cached, and linked into every program with a GEMM
    (toolchain.build): they are the same for every program, so no program compiles them
    again."""
    avx512 = "".join(_ukr_avx512(m, p) for m in range(1, MR_AVX512 + 1) for p in (1, 2)) + _dispatch(MR_AVX512, True)
    avx = "".join(_ukr_avx(m) for m in range(1, MR + 1)) + _dispatch(MR, False)
    portable = "".join(_ukr_portable(m) for m in range(1, MR + 1)) + _dispatch(MR, False)
    return ("/* Ember's GEMM micro-kernels (backends/cpu/gemm.py) */\n#include <stdint.h>\n"
            "#if defined(__AVX2__) && defined(__FMA__)\n#include <immintrin.h>\n"
            "#if defined(__AVX512F__)\n" + avx512 + "#else\n" + avx + "#endif\n"
            "#else\n" + portable + "#endif\n")


def prelude() -> str:
    """C helpers shared by every GEMM kernel of a program (printed once).

    ``EMBER_MR`` x ``EMBER_NR`` is the micro-tile for the instruction set the compiler
    targets: 12 x 32 with AVX-512 (two panels of zmm accumulators), 6 x 16 with AVX2 or the
    portable loop. The packed layouts are the same for all three (16-column panels), so
    constants do not depend on it. The micro-kernels themselves are declared here and
    linked from their own object (``ukr_source``).
    """
    return ("#include <stdlib.h>\n#if defined(__AVX2__) && defined(__FMA__)\n#include <immintrin.h>\n"
            "#define EMBER_GEMM_AVX2 1\n" + _GEMV_AVX + _PACK_IMG_AVX +
            f"#if defined(__AVX512F__)\n#define EMBER_MR {MR_AVX512}\n#define EMBER_NR 32\n"
            f"#else\n#define EMBER_MR {MR}\n#define EMBER_NR 16\n#endif\n"
            f"#else\n#define EMBER_MR {MR}\n#define EMBER_NR 16\n" + _GEMV_PORTABLE + _PACK_IMG_PORTABLE + "#endif\n" +
            _PACK + UKR_SIGNATURE + ";\n" + LINK_MARK + "\n")


def supports(k: Matmul) -> bool:
    """The micro-kernel path computes in float32: both operands must be f32."""
    return k.a.buf.dtype is dtypes.f32 and k.b.buf.dtype is dtypes.f32


def print_matmul(k: Matmul, params, c_dim, epilogue_lines) -> str:
    """C body of one Matmul kernel.

    ``epilogue_lines(ind, acc_expr, i_name, j_name, out_index) -> list[str]`` prints the
    store of one element (applying the kernel's epilogue); the caller owns Expr printing.
    """
    nb = len(k.batch)
    A, B, C = params[k.a.buf], params[k.b.buf], params[k.out]
    packed = getattr(k.b, "packed", 0)
    img = isinstance(k.b, ImageOperand)
    out_f32 = k.out.dtype is dtypes.f32
    sa = [c_dim(s) for s in k.a.strides]
    sb = [c_dim(s) for s in k.b.strides]
    L = [f"  const int64_t M = {c_dim(k.M)}, N = {c_dim(k.N)}, K = {c_dim(k.K)};",
         f"  const int64_t nbatch = {c_dim(prod(k.batch))};",
         "  if (nbatch == 0 || M == 0 || N == 0) return;",
         f"  const int64_t sam = {sa[nb]}, sak = {sa[nb + 1]};"]
    if img:
        _, H, W, KH, KW, Wo, (sh, sw), (ph, pw), (dh, dw) = k.b.geom
        g = ", ".join(c_dim(d) for d in (H, W, KH, KW, Wo, sh, sw, ph, pw, dh, dw))
        L.append(f"  const int64_t geom[11] = {{{g}}};")
    elif not packed:
        L.append(f"  const int64_t sbk = {sb[nb]}, sbn = {sb[nb + 1]};")
    # blocking: the kernel's own tile (autotune.py) where it has one, else the defaults
    tile = k.tile or {}
    kc_max = int(tile.get("kc", KC_PACKED if packed else KC))
    tasks_wanted = int(tile.get("tasks", TASKS_WANTED))
    mc_min = int(tile.get("mc_min", MC_MIN))
    # K blocks of nearly equal size (<= kc_max); one block when C cannot hold partial sums
    if out_f32:
        L.append(f"  const int64_t nkb = K > {kc_max} ? (K + {kc_max - 1}) / {kc_max} : 1, kcb = nkb > 1 ? (K + nkb - 1) / nkb : K + (K == 0);")
    else:
        L.append("  const int64_t kcb = K + (K == 0);")
    mc = int(tile.get("mc", MC_PACKED if packed else MC_ONTHEFLY))
    L.append(f"  int64_t mc = M < {mc} ? M : {mc}, mt = (M + mc - 1) / mc;")
    L.append("  const int64_t n16 = (N + 15) / 16 * 16, npan = n16 / 16;")
    L.append(f"  int64_t nc = n16 > {NC_MAX} ? {NC_MAX} : n16;")
    # columns first, down to one micro-tile when the rows are one block: a task of its own
    # rows would read the B block again (a 49-row conv read its 9 MB weight 3 times)
    L.append(f"  while (nbatch * mt * ((n16 + nc - 1) / nc) < {tasks_wanted} && nc > (mt == 1 ? EMBER_NR : 64)) nc = (nc / 2 + EMBER_NR - 1) / EMBER_NR * EMBER_NR;")
    L.append("  const int64_t nt = (n16 + nc - 1) / nc;")
    # few, wide tasks (a deep conv layer: many output channels, a small image) leave a core
    # idle at the end; split the rows finer, in whole micro-tiles
    L.append(f"  while (nbatch * mt * nt < {tasks_wanted} && mc > {mc_min} && mc > EMBER_MR) {{ mc = (mc / 2 + EMBER_MR - 1) / EMBER_MR * EMBER_MR; mt = (M + mc - 1) / mc; }}")
    L.append("  const int64_t ntasks = nbatch * mt * nt;")
    L.append(f"  const int big = nbatch * M * N * K > {PARALLEL_MACS};")

    def batch_coords(ind, out):
        rest = "bi"
        offa, offb = [c_dim(k.a.offset)], [c_dim(k.b.offset)]
        for d in reversed(range(nb)):
            out.append(f"{ind}const int64_t i{d} = ({rest}) % {c_dim(k.batch[d])};")
            rest = f"({rest}) / {c_dim(k.batch[d])}"
            offa.append(f"i{d} * {sa[d]}")
            offb.append(f"i{d} * {sb[d]}")
        out.append(f"{ind}const int64_t oa = {' + '.join(offa)}; (void)oa;")
        out.append(f"{ind}const int64_t ob = {' + '.join(offb)}; (void)ob;")

    # -- GEMV: one row against a packed weight, panels across threads
    if packed:
        g = []
        g.append("    for (int64_t t = 0; t < nbatch * np_; t++) {")
        g.append("      const int64_t bi = t / np_, jp = t % np_;")
        batch_coords("      ", g)
        g.append("      float y[16] __attribute__((aligned(64)));")
        g.append(f"      ember_gemv16(K, {A} + oa, sak, {B} + ob + jp * K * 16, y);")
        g.append("      const int64_t j0 = jp * 16, nr = ember_min64(16, N - j0);")
        g.append("      for (int64_t c = 0; c < nr; c++) {")
        g += epilogue_lines("        ", "y[c]", "0", "(j0 + c)", "bi * N + j0 + c")
        g.append("      }")
        g.append("    }")
        L.append("  if (M == 1) {")
        L.append("    const int64_t np_ = n16 / 16;")
        L.append("    if (big) {")
        L.append("      #pragma omp parallel for schedule(dynamic, 4)")
        L += ["  " + x for x in g]
        L.append("    } else {")
        L += ["  " + x for x in g]
        L.append("    }")
        L.append("    return;")
        L.append("  }")

    def pack_b(kc, k0, nc, j0, dst):
        if img:
            return f"ember_pack_img({kc}, {k0}, {nc}, N, {j0}, {B} + ob, geom, {dst});"
        return f"ember_pack_b({kc}, {nc}, N, {j0}, {B} + ob + ({k0}) * sbk, sbk, sbn, {dst});"

    # -- blocked GEMM: tasks of (batch, mc rows, nc columns)
    body = []
    # A's rows are read in place, MR of them at once; when their stride is a multiple of 4 KiB
    # they fall in one L1 set (8 ways on Zen 4) and evict each other every k step.
    # Such an A is copied once per call to rows one cache line further apart.
    L.append("  const int64_t ars = K + 16;")
    L.append(f"  float *afull = sak == 1 && sam % 1024 == 0 && M > EMBER_MR && n16 >= 64 && "
             f"nbatch * M * ars <= {PREPACK_MAX} ? (float *)aligned_alloc(64, sizeof(float) * nbatch * M * ars) : NULL;")
    body.append("  if (afull) {")
    body.append("    #pragma omp for schedule(static) nowait")
    body.append("    for (int64_t t = 0; t < nbatch * M; t++) {")
    body.append("      const int64_t bi = t / M, r = t % M;")
    batch_coords("      ", body)
    body.append(f"      memcpy(afull + t * ars, {A} + oa + r * sam, sizeof(float) * K);")
    body.append("    }")
    body.append("    ember_spin_join(&joined);")
    body.append("    #pragma omp barrier")
    body.append("  }")
    body.append("  float *abuf = sak == 1 ? NULL : (float *)malloc(sizeof(float) * mc * kcb);")
    if not packed:
        # B is packed per task, or, when several row tasks share its columns, once for all of
        # them before the tasks start (so that no column panel is packed twice)
        L.append(f"  float *bfull = mt > 1 && nbatch * K * n16 <= {PREPACK_MAX} ? "
                 "(float *)aligned_alloc(64, sizeof(float) * (nbatch * K * n16 + 16)) : NULL;")
        body.append("  if (bfull) {")
        body.append("    #pragma omp for schedule(static) nowait")
        body.append("    for (int64_t t = 0; t < nbatch * npan; t++) {")
        body.append("      const int64_t bi = t / npan, jp = t % npan;")
        batch_coords("      ", body)
        body.append("      " + pack_b("K", "0", "16", "jp * 16", "bfull + t * K * 16"))
        body.append("    }")
        body.append("    ember_spin_join(&joined);")
        body.append("    #pragma omp barrier")
        body.append("  }")
        body.append("  float *bbuf = bfull ? NULL : (float *)aligned_alloc(64, sizeof(float) * ((nc * kcb + 15) / 16 * 16));")
    body.append("  float tile[EMBER_MR * EMBER_NR] __attribute__((aligned(64)));")
    body.append("  #pragma omp for schedule(dynamic, 1) nowait")
    body.append("  for (int64_t t = 0; t < ntasks; t++) {")
    body.append("    const int64_t bi = t / (mt * nt), m0 = ((t / nt) % mt) * mc, n0 = (t % nt) * nc;")
    body.append("    const int64_t m1 = ember_min64(M, m0 + mc), n1 = ember_min64(n16, n0 + nc);")
    batch_coords("    ", body)
    body.append("    for (int64_t pc = 0; pc == 0 || pc < K; pc += kcb) {  /* K == 0: one empty block */")
    body.append("      const int64_t kc = ember_min64(kcb, K - pc);")
    body.append("      const int last = pc + kc >= K;")
    if not packed:
        body.append("      if (!bfull) " + pack_b("kc", "pc", "n1 - n0", "n0", "bbuf"))
    body.append(f"      const float *ablk = {A} + oa + m0 * sam + pc * sak;")
    body.append("      int64_t rs = sam;")
    body.append("      if (afull) { ablk = afull + (bi * M + m0) * ars + pc; rs = ars; }")
    body.append("      if (abuf) { ember_pack_a(m1 - m0, kc, ablk, sam, sak, abuf); ablk = abuf; rs = kc; }")
    # column tiles of EMBER_NR (one or two 16-wide panels; the second panel's rows follow the
    # first's whole K extent, or the task's K block when packed per task)
    body.append("      for (int64_t j = n0; j < n1; j += EMBER_NR) {")
    if packed:
        body.append(f"        const float *bp = {B} + ob + (j / 16 * K + pc) * 16, *bp2 = bp + K * 16;")
    else:
        body.append("        const float *bp = bfull ? bfull + ((bi * npan + j / 16) * K + pc) * 16 : bbuf + (j - n0) * kc;")
        body.append("        const float *bp2 = bp + (bfull ? K : kc) * 16;")
    body.append("        const int np = n1 - j > 16 ? EMBER_NR / 16 : 1;")
    body.append("        const int64_t nr = ember_min64(16 * np, N - j);")
    # row tiles of nearly equal height: 16 rows are 8 + 8, not 12 + 4 (a short tile has too
    # few accumulators to hide the FMA latency)
    body.append("        const int64_t rt = (m1 - m0 + EMBER_MR - 1) / EMBER_MR, rq = (m1 - m0) / rt, rx = (m1 - m0) % rt;")
    body.append("        for (int64_t i = m0, ti = 0; i < m1; i += rq + (ti < rx), ti++) {")
    body.append("          const int mr = (int)(rq + (ti < rx));")
    body.append("          const float *ap = ablk + (i - m0) * rs;")
    if out_f32:
        # partial sums over K blocks live in C; full-width tiles go straight there
        body.append(f"          float *cp = {C} + (bi * M + i) * N + j;")
    epi = k.epilogue is not None or not out_f32
    if epi:
        # the last K block lands in the tile buffer and the epilogue stores it to C
        body.append("          if (last) {")
        if out_f32:
            body.append("            if (nr == 16 * np) ember_ukr(mr, np, kc, ap, rs, bp, bp2, cp, N, tile, EMBER_NR, pc > 0);")
            body.append("            else {")
            body.append("              ember_ukr(mr, np, kc, ap, rs, bp, bp2, tile, EMBER_NR, tile, EMBER_NR, 0);")
            body.append("              if (pc > 0) for (int r = 0; r < mr; r++) for (int64_t c = 0; c < nr; c++) "
                        "tile[r * EMBER_NR + c] += cp[r * N + c];")
            body.append("            }")
        else:
            body.append("            ember_ukr(mr, np, kc, ap, rs, bp, bp2, tile, EMBER_NR, tile, EMBER_NR, 0);")
        body.append("            for (int r = 0; r < mr; r++)")
        body.append("              for (int64_t c = 0; c < nr; c++) {")
        body += epilogue_lines("                ", "tile[r * EMBER_NR + c]", "(i + r)", "(j + c)",
                               "(bi * M + i + r) * N + j + c")
        body.append("              }")
        body.append("            continue;")
        body.append("          }")
    if out_f32:
        body.append("          if (nr == 16 * np) ember_ukr(mr, np, kc, ap, rs, bp, bp2, cp, N, cp, N, pc > 0);")
        body.append("          else {")
        body.append("            ember_ukr(mr, np, kc, ap, rs, bp, bp2, tile, EMBER_NR, tile, EMBER_NR, 0);")
        body.append("            for (int r = 0; r < mr; r++) for (int64_t c = 0; c < nr; c++) "
                    "cp[r * N + c] = (pc > 0 ? cp[r * N + c] : 0.0f) + tile[r * EMBER_NR + c];")
        body.append("          }")
    body.append("        }")
    body.append("      }")
    body.append("    }")
    body.append("  }")
    body.append("  free(abuf);")
    if not packed:
        body.append("  free(bbuf);")
    body.append("  ember_spin_join(&joined);")
    L.append("  int joined = 0;  /* ember_spin_join's count */")
    L.append("  if (big) {")
    L.append("    #pragma omp parallel")
    L.append("    {")
    L += ["  " + x for x in body]
    L.append("    }")
    L.append("  } else {")
    L += ["  " + x for x in body if "#pragma" not in x]
    L.append("  }")
    L.append("  free(afull);")
    if not packed:
        L.append("  free(bfull);")
    return "\n".join(L) + "\n"
