"""The CPU printer of the fused ``Attention`` kernel (lower/attention.py).

A task is (one batch/head index, a block of QB = 16 query rows); OpenMP hands tasks out
dynamically. Inside a task the keys are walked in blocks of KB, with an online softmax:

* Q is packed transposed and pre-scaled, ``qt[d][i] = q[i, d] * scale`` (16 query lanes),
  so the scores of a key block come out transposed, ``s[j][i]``: queries lie in the SIMD
  lanes and the per-query max, exp and sum over keys are plain vertical vector operations
  (gcc vectorizes those loops).
* Both products are one micro-kernel over 16 query lanes, ``c[r][:] (+)= sum_t a[r, t] *
  b[t][:]``, six rows at a time (twelve ymm accumulators, enough to hide FMA latency; twelve
  rows of one zmm each with AVX-512), with
  ``a`` broadcast element by element through its strides, so K and V are read in place
  whatever their layout and head dim: s[j][:] = sum_d K[j, d] qt[d][:] (rows = keys), and
  acc[c][:] = acc[c][:] * alpha[:] + sum_j V[j, c] p[j][:] (rows = value columns; the
  accumulator is kept transposed too and turned back when the rows are stored).
* Online softmax: m_new = max(m, rowmax); the accumulator and the running sum are scaled by
  alpha = exp(m - m_new); p = exp(s - m_new) overwrites s. A row whose keys are all masked
  so far keeps m = -inf and shifts by 0 instead, so exp gives zeros, never NaN from
  -inf - -inf.
* Causal: a query block stops at the last key its last row may see, and only the blocks
  crossing the diagonal pay for the per-element test.
* Padding: rows that share one mask row (a padding mask) walk only the keys from its first to
  its last above -1e30 (``ember_att_trim``); a batch of short sequences padded to one length
  does the work of its real tokens. A row that would see none keeps every key.
* End: out = acc / l; a dead row (max still -inf) gives 0 when ``safe``, else 0 * inf = NaN
  like the reference.
* A block of at most four queries (Sq = 1, the tail of a sequence) would leave most of the
  16 lanes idle; it goes row by row instead: scores as dot products along d (four keys at
  a time), the output as an axpy along Dv, the same online softmax with scalars.

The micro-kernels use AVX2/FMA intrinsics when the compiler targets them and a plain C
loop otherwise; exp is ``ember_expf_softmax`` (fastmath.py: 0 below e^-87, no subnormal
path), which gcc inlines and vectorizes.
"""
from __future__ import annotations

from ...ir.symbolic import prod
from ...lower.attention import Attention
from ...lower.loop_ir import Operand
from .codegen import c_dim, c_literal, template
from .gemm import PARALLEL_MACS

QB = 16        # queries per task: the 16 lanes (two ymm vectors) of every micro-kernel
KB = 64        # keys per online-softmax step: the 64 x 16 score tile stays in L1
ROWWISE = 4    # query blocks this small go row by row

_COMMON = f"""/* fused attention (backends/cpu/attention.py) */
#include <stdlib.h>
#define EMBER_ATT_KB {KB}
#define EMBER_ATT_ROWWISE {ROWWISE}
""" + r"""typedef struct {
  const float *q, *k, *v, *mask; float *out;
  int64_t sq, sk, d, dv;
  int64_t qs, qd, ks, kd, vs, vd, ms, mk, os;  /* strides: q rows/cols, k, v, mask query/key, out rows */
  float scale; int causal, safe;
} ember_att_args;
"""

MR = 6   # rows per micro-kernel call: 2 * MR = 12 accumulators hide the FMA latency
MR_AVX512 = 12   # with AVX-512 one zmm holds the 16 lanes: 12 rows, 12 accumulators


def _ukr_avx512(mr: int) -> str:
    init = " ".join(f"__m512 c{r} = alpha ? _mm512_mul_ps(al, _mm512_loadu_ps(c + {16 * r})) : _mm512_setzero_ps();"
                    for r in range(mr))
    body = "\n".join(f"    c{r} = _mm512_fmadd_ps(_mm512_set1_ps(a[{r} * ar + t * at]), b0, c{r});" for r in range(mr))
    store = " ".join(f"_mm512_storeu_ps(c + {16 * r}, c{r});" for r in range(mr))
    return f"""static inline void ember_att_ukr{mr}(int64_t T, const float *restrict a, int64_t ar, int64_t at,
    const float *restrict b, float *restrict c, const float *restrict alpha) {{
  const __m512 al = alpha ? _mm512_loadu_ps(alpha) : _mm512_setzero_ps();
  {init}
  for (int64_t t = 0; t < T; t++) {{
    const __m512 b0 = _mm512_loadu_ps(b + 16 * t);
{body}
  }}
  {store}
}}
"""


def _ukr_avx(mr: int) -> str:
    init = " ".join(f"__m256 c{r}0 = alpha ? _mm256_mul_ps(al0, _mm256_loadu_ps(c + {16 * r})) : _mm256_setzero_ps(), "
                    f"c{r}1 = alpha ? _mm256_mul_ps(al1, _mm256_loadu_ps(c + {16 * r + 8})) : _mm256_setzero_ps();"
                    for r in range(mr))
    body = "\n".join(f"    {{ const __m256 av = _mm256_broadcast_ss(a + {r} * ar + t * at); "
                     f"c{r}0 = _mm256_fmadd_ps(av, b0, c{r}0); c{r}1 = _mm256_fmadd_ps(av, b1, c{r}1); }}"
                     for r in range(mr))
    store = " ".join(f"_mm256_storeu_ps(c + {16 * r}, c{r}0); _mm256_storeu_ps(c + {16 * r + 8}, c{r}1);"
                     for r in range(mr))
    return f"""static inline void ember_att_ukr{mr}(int64_t T, const float *restrict a, int64_t ar, int64_t at,
    const float *restrict b, float *restrict c, const float *restrict alpha) {{
  const __m256 al0 = alpha ? _mm256_loadu_ps(alpha) : _mm256_setzero_ps(), al1 = alpha ? _mm256_loadu_ps(alpha + 8) : al0;
  {init}
  for (int64_t t = 0; t < T; t++) {{
    const __m256 b0 = _mm256_loadu_ps(b + 16 * t), b1 = _mm256_loadu_ps(b + 16 * t + 8);
{body}
  }}
  {store}
}}
"""


def _ukr_portable(mr: int) -> str:
    return f"""static inline void ember_att_ukr{mr}(int64_t T, const float *restrict a, int64_t ar, int64_t at,
    const float *restrict b, float *restrict c, const float *restrict alpha) {{
  float t16[{mr}][16];
  for (int r = 0; r < {mr}; r++) for (int i = 0; i < 16; i++) t16[r][i] = alpha ? c[16 * r + i] * alpha[i] : 0.0f;
  for (int64_t t = 0; t < T; t++)
    for (int r = 0; r < {mr}; r++) {{
      const float av = a[r * ar + t * at];
      for (int i = 0; i < 16; i++) t16[r][i] += av * b[16 * t + i];
    }}
  for (int r = 0; r < {mr}; r++) for (int i = 0; i < 16; i++) c[16 * r + i] = t16[r][i];
}}
"""


# c[r][0:16] = (alpha ? c[r][0:16] * alpha[0:16] : 0) + sum_t a[r * ar + t * at] * b[t][0:16], r < rows:
# the one product of the kernel, 16 query lanes wide. Scores: rows = keys, t = d, a = K,
# b = qt. Output: rows = value columns, t = keys, a = V read transposed, b = p.
def _mm(mr: int) -> str:
    return ("static void ember_att_mm(int64_t rows, int64_t T, const float *a, int64_t ar, int64_t at,\n"
            "    const float *b, float *c, const float *alpha) {\n"
            f"  for (int64_t r = 0; r < rows; r += {mr}) {{\n"
            f"    switch (ember_min64({mr}, rows - r)) {{\n" +
            "".join(f"      case {m}: ember_att_ukr{m}(T, a + r * ar, ar, at, b, c + 16 * r, alpha); break;\n"
                    for m in range(1, mr + 1)) +
            "    }\n  }\n}\n")


# s[u] = sum_d q[d] * k[u * ks + d], u < 4, k unit-stride along d: the scores of one query row
_DOT4_AVX = r"""static inline void ember_att_dot4(int64_t D, const float *restrict q, const float *restrict k, int64_t ks,
    float *restrict s) {
  const float *k0 = k, *k1 = k + ks, *k2 = k1 + ks, *k3 = k2 + ks;
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    const __m256 x = _mm256_loadu_ps(q + d);
    a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k0 + d), a0); a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k1 + d), a1);
    a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k2 + d), a2); a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k3 + d), a3);
  }
  /* two rounds of pairwise adds leave [s0 s1 s2 s3] in each 128-bit half */
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  for (; d < D; d++) { s[0] += q[d] * k0[d]; s[1] += q[d] * k1[d]; s[2] += q[d] * k2[d]; s[3] += q[d] * k3[d]; }
}
"""
_DOT4_PORTABLE = r"""static inline void ember_att_dot4(int64_t D, const float *restrict q, const float *restrict k, int64_t ks,
    float *restrict s) {
  for (int u = 0; u < 4; u++) {
    float t = 0.0f;
    for (int64_t d = 0; d < D; d++) t += q[d] * k[u * ks + d];
    s[u] = t;
  }
}
"""

# The 16-lane path moves data between rows of q, the output and the lane-major scratch
# (queries in lanes). With AVX-512 a 16 x 16 block goes through registers: 16 row loads, a
# transpose of 64 shuffles, 16 stores (a gather per column cost a fifth of the kernel's own
# time on a Zen 4, whose gathers are slow); a mask with a row per query takes one gather per
# key (strides that do not fit an int32 index, and other targets, take scalar loops).
_AVX512_MOVES = r"""#if defined(__AVX512F__)
#define EMBER_ATT_AVX512 1
/* v[i] = p[i * stride] for i < n (n <= 16), 0 in the other lanes */
static inline __m512 ember_att_gather16(const float *p, int64_t stride, int64_t n) {
  const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32((int)stride));
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), (__mmask16)((1u << n) - 1), idx, p, 4);
}
static inline int ember_att_gatherable(int64_t stride) { return stride >= 0 && stride < (1 << 26); }
/* r[j][i] <- r[i][j]: 32-bit interleaves, then 64-bit, leave each 128-bit lane L of u[4g + c]
   holding column 4L + c of rows 4g .. 4g+3; a 4 x 4 transpose of lanes finishes it */
static inline void ember_att_transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int k = 0; k < 16; k += 2) { t[k] = _mm512_unpacklo_ps(r[k], r[k + 1]); t[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]); }
  for (int g = 0; g < 16; g += 4) {
    u[g] = _mm512_shuffle_ps(t[g], t[g + 2], 0x44); u[g + 1] = _mm512_shuffle_ps(t[g], t[g + 2], 0xEE);
    u[g + 2] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0x44); u[g + 3] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
  }
  for (int c = 0; c < 4; c++) {
    const __m512 x0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), x1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
    const __m512 x2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44), x3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
    r[c] = _mm512_shuffle_f32x4(x0, x2, 0x88); r[4 + c] = _mm512_shuffle_f32x4(x0, x2, 0xDD);
    r[8 + c] = _mm512_shuffle_f32x4(x1, x3, 0x88); r[12 + c] = _mm512_shuffle_f32x4(x1, x3, 0xDD);
  }
}
/* qt[d][i] = q[i][d] * scale for i < nq (0 beyond), q rows qs apart, unit stride along d */
static inline void ember_att_load_qt(const float *q, int64_t qs, int64_t nq, int64_t D, float scale, float *qt) {
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t d0 = 0; d0 < D; d0 += 16) {
    const int64_t nd = ember_min64(16, D - d0);
    const __mmask16 m = (__mmask16)((1u << nd) - 1);
    __m512 r[16];
    for (int i = 0; i < 16; i++) r[i] = i < nq ? _mm512_maskz_loadu_ps(m, q + i * qs + d0) : _mm512_setzero_ps();
    ember_att_transpose16(r);
    for (int64_t j = 0; j < nd; j++) _mm512_storeu_ps(qt + 16 * (d0 + j), _mm512_mul_ps(r[j], sc));
  }
}
/* out[i][c] = acc[c][i] * scale[i] for i < nq, c < Dv, out rows os apart */
static inline void ember_att_store_rows(const float *acc, int64_t Dv, const float *scale, int64_t nq,
    float *out, int64_t os) {
  for (int64_t c0 = 0; c0 < Dv; c0 += 16) {
    const int64_t nc = ember_min64(16, Dv - c0);
    const __mmask16 m = (__mmask16)((1u << nc) - 1);
    __m512 r[16];
    for (int j = 0; j < 16; j++) r[j] = j < nc ? _mm512_loadu_ps(acc + 16 * (c0 + j)) : _mm512_setzero_ps();
    ember_att_transpose16(r);
    for (int64_t i = 0; i < nq; i++) _mm512_mask_storeu_ps(out + i * os + c0, m, _mm512_mul_ps(r[i], _mm512_set1_ps(scale[i])));
  }
}
#endif
"""

_AVX = ("#if defined(__AVX2__) && defined(__FMA__)\n#include <immintrin.h>\n" + _DOT4_AVX + _AVX512_MOVES +
        "#if defined(__AVX512F__)\n" + "".join(_ukr_avx512(m) for m in range(1, MR_AVX512 + 1)) + _mm(MR_AVX512) +
        "#else\n" + "".join(_ukr_avx(m) for m in range(1, MR + 1)) + _mm(MR) + "#endif\n" +
        "#else\n" + "".join(_ukr_portable(m) for m in range(1, MR + 1)) + _DOT4_PORTABLE + _mm(MR) + "#endif\n")

_DRIVER = r"""/* Keys [*kb, *ke) for rows that share one mask row: the keys before the first and after the
   last whose mask is above EMBER_ATT_MASKED are dropped (the padding of a batch of short
   sequences; a NaN counts as unmasked). Exact: such a key's weight e^(s + mask - max) is 0 in
   float32 once the row has a key above the threshold, unless scores differ by 1e29. When the
   first row would see no such key in its own keys [*kb, first_end), nothing is dropped, so
   an all-masked row keeps the reference's result (uniform weights for a finite fill). */
#define EMBER_ATT_MASKED -1e30f
static inline void ember_att_trim(const float *mrow, int64_t mk, int64_t first_end, int64_t *kb, int64_t *ke) {
  int64_t a = *kb, b = *ke;
  while (a < b && mrow[a * mk] <= EMBER_ATT_MASKED) a++;
  if (a >= ember_min64(b, first_end)) return;
  while (mrow[(b - 1) * mk] <= EMBER_ATT_MASKED) b--;
  *kb = a; *ke = b;
}
static inline int64_t ember_att_scratch(int64_t D, int64_t Dv) {
  return 16 * D + EMBER_ATT_KB * 16 + 16 * Dv + 4 * 16;
}
/* out row i of one batch/head alone: with a handful of queries, 16 query lanes would be
   mostly padding, so the scores are dot products along d and the output an axpy along Dv */
static void ember_att_row(const ember_att_args *A, int64_t i, float *restrict ws) {
  const int64_t D = A->d, Dv = A->dv, Sk = A->sk, ks = A->ks, kd = A->kd, vs = A->vs, vd = A->vd;
  float *restrict q = ws, *restrict s = q + D, *restrict acc = s + EMBER_ATT_KB;
  for (int64_t d = 0; d < D; d++) q[d] = A->q[i * A->qs + d * A->qd] * A->scale;
  memset(acc, 0, sizeof(float) * Dv);
  float m = -INFINITY, l = 0.0f;
  /* causal: this row's last visible key ends the walk, no per-key test */
  int64_t kbeg = 0, kend = A->causal ? ember_max64(0, ember_min64(Sk, i + 1 + Sk - A->sq)) : Sk;
  if (A->mask) ember_att_trim(A->mask + i * A->ms, A->mk, kend, &kbeg, &kend);
  for (int64_t k0 = kbeg; k0 < kend; k0 += EMBER_ATT_KB) {
    const int64_t nk = ember_min64(EMBER_ATT_KB, kend - k0);
    const float *kb = A->k + k0 * ks;
    int64_t j = 0;
    if (kd == 1)
      for (; j + 4 <= nk; j += 4) ember_att_dot4(D, q, kb + j * ks, ks, s + j);
    for (; j < nk; j++) {
      float t = 0.0f;
      for (int64_t d = 0; d < D; d++) t += q[d] * kb[j * ks + d * kd];
      s[j] = t;
    }
    if (A->mask)
      for (j = 0; j < nk; j++) s[j] += A->mask[i * A->ms + (k0 + j) * A->mk];
    float mx = m;
    for (j = 0; j < nk; j++) mx = s[j] > mx ? s[j] : mx;
    const float shift = mx == -INFINITY ? 0.0f : mx, alpha = ember_expf_softmax(m - shift);
    m = mx;
    float sum = 0.0f;
    for (j = 0; j < nk; j++) { s[j] = ember_expf_softmax(s[j] - shift); sum += s[j]; }
    l = l * alpha + sum;
    for (int64_t c = 0; c < Dv; c++) acc[c] *= alpha;
    const float *vb = A->v + k0 * vs;
    j = 0;
    if (vd == 1)   /* four keys per pass over acc: a quarter of the loads and stores */
      for (; j + 4 <= nk; j += 4) {
        const float p0 = s[j], p1 = s[j + 1], p2 = s[j + 2], p3 = s[j + 3];
        const float *v0 = vb + j * vs, *v1 = v0 + vs, *v2 = v1 + vs, *v3 = v2 + vs;
        for (int64_t c = 0; c < Dv; c++) acc[c] += p0 * v0[c] + p1 * v1[c] + p2 * v2[c] + p3 * v3[c];
      }
    for (; j < nk; j++)
      for (int64_t c = 0; c < Dv; c++) acc[c] += s[j] * vb[j * vs + c * vd];
  }
  const float scale = A->safe && m == -INFINITY ? 0.0f : 1.0f / l;
  for (int64_t c = 0; c < Dv; c++) A->out[i * A->os + c] = acc[c] * scale;
}
/* out rows i0 .. i0+nq-1 (nq <= 16) of one batch/head; ws holds ember_att_scratch floats */
static void ember_att_rows(const ember_att_args *A, int64_t i0, int64_t nq, float *restrict ws) {
  if (nq <= EMBER_ATT_ROWWISE) {
    for (int64_t i = 0; i < nq; i++) ember_att_row(A, i0 + i, ws);
    return;
  }
  const int64_t D = A->d, Dv = A->dv, Sk = A->sk;
  float *restrict qt = ws, *restrict s = qt + 16 * D, *restrict acc = s + EMBER_ATT_KB * 16;
  float *restrict m = acc + 16 * Dv, *restrict l = m + 16, *restrict alpha = l + 16, *restrict shift = alpha + 16;
#ifdef EMBER_ATT_AVX512
  if (A->qd == 1) ember_att_load_qt(A->q + i0 * A->qs, A->qs, nq, D, A->scale, qt);
  else
#endif
  for (int64_t d = 0; d < D; d++)
    for (int i = 0; i < 16; i++) qt[16 * d + i] = i < nq ? A->q[(i0 + i) * A->qs + d * A->qd] * A->scale : 0.0f;
  for (int i = 0; i < 16; i++) { m[i] = -INFINITY; l[i] = 0.0f; }
  memset(acc, 0, sizeof(float) * 16 * Dv);
  const int64_t off = Sk - A->sq;   /* causal: query i sees keys j <= i + off */
  int64_t kbeg = 0, kend = Sk;
  if (A->causal) kend = ember_max64(0, ember_min64(Sk, i0 + nq + off));
  if (A->mask && A->ms == 0)   /* a padding mask: its leading and trailing masked keys are skipped */
    ember_att_trim(A->mask + i0 * A->ms, A->mk, A->causal ? i0 + 1 + off : Sk, &kbeg, &kend);
  for (int64_t k0 = kbeg; k0 < kend; k0 += EMBER_ATT_KB) {
    const int64_t nk = ember_min64(EMBER_ATT_KB, kend - k0);
    ember_att_mm(nk, D, A->k + k0 * A->ks, A->ks, A->kd, qt, s, NULL);   /* s[j][i] */
    if (A->mask) {
      const float *mk = A->mask + i0 * A->ms + k0 * A->mk;
      if (A->ms == 0)   /* one mask row for all queries (a padding mask): a broadcast per key */
        for (int64_t j = 0; j < nk; j++) {
          const float mj = mk[j * A->mk];
          for (int i = 0; i < 16; i++) s[16 * j + i] += mj;
        }
#ifdef EMBER_ATT_AVX512
      else if (ember_att_gatherable(A->ms))
        for (int64_t j = 0; j < nk; j++)
          _mm512_storeu_ps(s + 16 * j, _mm512_add_ps(_mm512_loadu_ps(s + 16 * j), ember_att_gather16(mk + j * A->mk, A->ms, nq)));
#endif
      else
        for (int64_t j = 0; j < nk; j++)
          for (int64_t i = 0; i < nq; i++) s[16 * j + i] += mk[i * A->ms + j * A->mk];
    }
    if (A->causal && k0 + nk - 1 > i0 + off)   /* the block crosses the diagonal */
      for (int64_t j = 0; j < nk; j++)
        for (int i = 0; i < 16; i++) s[16 * j + i] = k0 + j > i0 + i + off ? -INFINITY : s[16 * j + i];
    /* online softmax, one query per lane */
    float mx[16];
#ifdef EMBER_ATT_AVX512   /* gcc leaves this loop scalar: 16 chains of vmaxss */
    __m512 vmx = _mm512_loadu_ps(m);
    for (int64_t j = 0; j < nk; j++) vmx = _mm512_max_ps(_mm512_loadu_ps(s + 16 * j), vmx);  /* NaN keeps m, as below */
    _mm512_storeu_ps(mx, vmx);
#else
    for (int i = 0; i < 16; i++) mx[i] = m[i];
    for (int64_t j = 0; j < nk; j++)
      for (int i = 0; i < 16; i++) mx[i] = s[16 * j + i] > mx[i] ? s[16 * j + i] : mx[i];
#endif
    for (int i = 0; i < 16; i++) {
      shift[i] = mx[i] == -INFINITY ? 0.0f : mx[i];
      alpha[i] = ember_expf_softmax(m[i] - shift[i]);
      m[i] = mx[i];
    }
    for (int64_t j = 0; j < nk; j++)
      for (int i = 0; i < 16; i++) s[16 * j + i] = ember_expf_softmax(s[16 * j + i] - shift[i]);
    float sum[16] = {0};
#ifdef EMBER_ATT_AVX512   /* the sum in a register: gcc kept it on the stack, a store and a load per key */
    __m512 vsum = _mm512_setzero_ps();
    for (int64_t j = 0; j < nk; j++) vsum = _mm512_add_ps(vsum, _mm512_loadu_ps(s + 16 * j));
    _mm512_storeu_ps(sum, vsum);
#else
    for (int64_t j = 0; j < nk; j++)
      for (int i = 0; i < 16; i++) sum[i] += s[16 * j + i];
#endif
    for (int i = 0; i < 16; i++) l[i] = l[i] * alpha[i] + sum[i];
    /* acc[c][i] = acc[c][i] * alpha[i] + sum_j v[j][c] * p[j][i] */
    ember_att_mm(Dv, nk, A->v + k0 * A->vs, A->vd, A->vs, s, acc, alpha);
  }
  float scale[16];
  for (int i = 0; i < 16; i++) scale[i] = A->safe && m[i] == -INFINITY ? 0.0f : 1.0f / l[i];
#ifdef EMBER_ATT_AVX512
  ember_att_store_rows(acc, Dv, scale, nq, A->out + i0 * A->os, A->os);
#else
  for (int64_t i = 0; i < nq; i++)
    for (int64_t c = 0; c < Dv; c++) A->out[(i0 + i) * A->os + c] = acc[16 * c + i] * scale[i];
#endif
}
"""


PRELUDE = _COMMON + _AVX + _DRIVER


@template(Attention, prelude=PRELUDE)
def print_attention(k: Attention, params, printer) -> str:
    nb = len(k.batch)
    ops = [("q", k.q), ("k", k.k), ("v", k.v)] + ([("m", k.mask)] if k.mask is not None else []) + \
        [("o", Operand(k.out, 0, k.out_strides))]
    L = [f"  const int64_t Sq = {c_dim(k.Sq)}, Sk = {c_dim(k.Sk)}, D = {c_dim(k.D)}, Dv = {c_dim(k.Dv)};",
         f"  const int64_t nbatch = {c_dim(prod(k.batch))}, nqb = (Sq + {QB - 1}) / {QB};",
         "  if (nbatch == 0 || Sq == 0 || Dv == 0) return;",
         "  int joined = 0;  /* ember_spin_join's count */",
         f"  #pragma omp parallel if(nbatch * Sq * Sk * (D + Dv) > {PARALLEL_MACS})",
         "  {",
         "    float *ws = malloc(sizeof(float) * ember_att_scratch(D, Dv));",
         "    #pragma omp for schedule(dynamic) nowait",
         "    for (int64_t t = 0; t < nbatch * nqb; t++) {",
         "      const int64_t bi = t / nqb, qb = t % nqb;"]
    rest = "bi"
    offs = {name: [c_dim(o.offset)] for name, o in ops}
    for d in reversed(range(nb)):
        L.append(f"      const int64_t i{d} = ({rest}) % {c_dim(k.batch[d])};")
        rest = f"({rest}) / {c_dim(k.batch[d])}"
        for name, o in ops:
            if o.strides[d] != 0:
                offs[name].append(f"i{d} * {c_dim(o.strides[d])}")
    st = {name: [c_dim(s) for s in o.strides[nb:]] for name, o in ops}
    mask = f"{params[k.mask.buf]} + {' + '.join(offs['m'])}" if k.mask is not None else "NULL"
    ms, mk = st["m"] if k.mask is not None else ("0", "0")
    L += ["      const ember_att_args a = {",
          f"        {params[k.q.buf]} + {' + '.join(offs['q'])}, {params[k.k.buf]} + {' + '.join(offs['k'])},",
          f"        {params[k.v.buf]} + {' + '.join(offs['v'])}, {mask}, {params[k.out]} + {' + '.join(offs['o'])},",
          f"        Sq, Sk, D, Dv, {', '.join(st['q'])}, {', '.join(st['k'])}, {', '.join(st['v'])}, {ms}, {mk}, {st['o'][0]},",
          f"        {c_literal(k.scale, k.q.buf.dtype)}, {int(k.causal)}, {int(k.safe)}}};",
          f"      ember_att_rows(&a, qb * {QB}, ember_min64({QB}, Sq - qb * {QB}), ws);",
          "    }",
          "    free(ws);",
          "    ember_spin_join(&joined);",
          "  }"]
    return "\n".join(L) + "\n"
