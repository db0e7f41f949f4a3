"""The CPU printer of the fused ``Attention`` kernel (lower/attention.py).

A task is (one batch/head index, a block of QB = 16 query rows); OpenMP hands tasks out
dynamically. Inside a task the keys are walked in blocks of KB, with an online softmax:

* Q is packed transposed and pre-scaled, ``qt[d][i] = q[i, d] * scale`` (16 query lanes),
  so the scores of a key block come out transposed, ``s[j][i]``: queries lie in the SIMD
  lanes and the per-query max, exp and sum over keys are plain vertical vector operations.
* s = K_blk @ qt is a GEMM micro-kernel: four keys broadcast against two 8-float vectors of
  qt per d step (eight FMA accumulators), K read in place through its strides.
* Online softmax: m_new = max(m, rowmax); the accumulator and the running sum are scaled by
  exp(m - m_new); p = exp(s - m_new) overwrites s. A row whose keys are all masked so far
  keeps m = -inf and shifts by 0 instead, so exp gives zeros, never NaN from -inf - -inf.
* acc[i][:] += p[:, i] @ V_blk: four queries x 16 columns of V per micro-kernel call. V is
  read in place when its rows are contiguous and Dv is a multiple of 16, else the block is
  copied (zero-padded) first.
* Causal: a query block stops at the last key its last row may see, and only the blocks
  crossing the diagonal pay for the per-element test.
* End: out = acc / l; a dead row (max still -inf) gives 0 when ``safe``, else 0 * inf = NaN
  like the reference.

The micro-kernels use AVX2/FMA intrinsics when the compiler targets them and a plain C
loop otherwise; exp is ``ember_expf`` (fastmath.py), which gcc inlines and vectorizes.
"""
from __future__ import annotations

from ...ir.symbolic import prod
from ...lower.attention import Attention
from .codegen import c_dim, c_literal, template
from .gemm import PARALLEL_MACS

QB, KB = 16, 64

_COMMON = r"""/* fused attention (backends/cpu/attention.py) */
#include <stdlib.h>
#define EMBER_ATT_QB 16
#define EMBER_ATT_KB 64
typedef struct {
  const float *q, *k, *v, *mask; float *out;
  int64_t sq, sk, d, dv;
  int64_t qs, qd, ks, kd, vs, vd, ms, mk;  /* strides: q rows/cols, k, v, mask query/key */
  float scale; int causal, safe;
} ember_att_args;
"""

_AVX = r"""#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
/* s[j][0:16] = sum_d k[j, d] * qt[d][0:16], j < nk */
static inline void ember_att_scores(int64_t nk, int64_t D, const float *restrict k, int64_t ks, int64_t kd,
    const float *restrict qt, float *restrict s) {
  int64_t j = 0;
  for (; j + 4 <= nk; j += 4) {
    const float *k0 = k + j * ks, *k1 = k0 + ks, *k2 = k1 + ks, *k3 = k2 + ks;
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    for (int64_t d = 0; d < D; d++) {
      const __m256 b0 = _mm256_loadu_ps(qt + 16 * d), b1 = _mm256_loadu_ps(qt + 16 * d + 8);
      __m256 a = _mm256_broadcast_ss(k0 + d * kd); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01);
      a = _mm256_broadcast_ss(k1 + d * kd); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11);
      a = _mm256_broadcast_ss(k2 + d * kd); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21);
      a = _mm256_broadcast_ss(k3 + d * kd); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31);
    }
    float *o = s + 16 * j;
    _mm256_storeu_ps(o, c00); _mm256_storeu_ps(o + 8, c01); _mm256_storeu_ps(o + 16, c10); _mm256_storeu_ps(o + 24, c11);
    _mm256_storeu_ps(o + 32, c20); _mm256_storeu_ps(o + 40, c21); _mm256_storeu_ps(o + 48, c30); _mm256_storeu_ps(o + 56, c31);
  }
  for (; j < nk; j++) {
    const float *k0 = k + j * ks;
    __m256 c0 = _mm256_setzero_ps(), c1 = c0;
    for (int64_t d = 0; d < D; d++) {
      const __m256 a = _mm256_broadcast_ss(k0 + d * kd);
      c0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(qt + 16 * d), c0);
      c1 = _mm256_fmadd_ps(a, _mm256_loadu_ps(qt + 16 * d + 8), c1);
    }
    _mm256_storeu_ps(s + 16 * j, c0); _mm256_storeu_ps(s + 16 * j + 8, c1);
  }
}
/* acc[i0+r][c:c+16] = acc[..] * alpha[i0+r] + sum_j p[j][i0+r] * v[j][c:c+16], r < 4, c < dv16 */
static inline void ember_att_pv(int64_t nk, int64_t i0, int64_t dv16, const float *restrict p,
    const float *restrict v, int64_t vs, const float *restrict alpha, float *restrict acc) {
  const __m256 al0 = _mm256_broadcast_ss(alpha + i0), al1 = _mm256_broadcast_ss(alpha + i0 + 1);
  const __m256 al2 = _mm256_broadcast_ss(alpha + i0 + 2), al3 = _mm256_broadcast_ss(alpha + i0 + 3);
  for (int64_t c = 0; c < dv16; c += 16) {
    float *a0 = acc + i0 * dv16 + c, *a1 = a0 + dv16, *a2 = a1 + dv16, *a3 = a2 + dv16;
    __m256 c00 = _mm256_mul_ps(al0, _mm256_loadu_ps(a0)), c01 = _mm256_mul_ps(al0, _mm256_loadu_ps(a0 + 8));
    __m256 c10 = _mm256_mul_ps(al1, _mm256_loadu_ps(a1)), c11 = _mm256_mul_ps(al1, _mm256_loadu_ps(a1 + 8));
    __m256 c20 = _mm256_mul_ps(al2, _mm256_loadu_ps(a2)), c21 = _mm256_mul_ps(al2, _mm256_loadu_ps(a2 + 8));
    __m256 c30 = _mm256_mul_ps(al3, _mm256_loadu_ps(a3)), c31 = _mm256_mul_ps(al3, _mm256_loadu_ps(a3 + 8));
    for (int64_t j = 0; j < nk; j++) {
      const float *vj = v + j * vs + c, *pj = p + 16 * j + i0;
      const __m256 b0 = _mm256_loadu_ps(vj), b1 = _mm256_loadu_ps(vj + 8);
      __m256 a = _mm256_broadcast_ss(pj); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01);
      a = _mm256_broadcast_ss(pj + 1); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11);
      a = _mm256_broadcast_ss(pj + 2); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21);
      a = _mm256_broadcast_ss(pj + 3); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31);
    }
    _mm256_storeu_ps(a0, c00); _mm256_storeu_ps(a0 + 8, c01); _mm256_storeu_ps(a1, c10); _mm256_storeu_ps(a1 + 8, c11);
    _mm256_storeu_ps(a2, c20); _mm256_storeu_ps(a2 + 8, c21); _mm256_storeu_ps(a3, c30); _mm256_storeu_ps(a3 + 8, c31);
  }
}
#else
"""

_PORTABLE = r"""static inline void ember_att_scores(int64_t nk, int64_t D, const float *restrict k, int64_t ks, int64_t kd,
    const float *restrict qt, float *restrict s) {
  for (int64_t j = 0; j < nk; j++) {
    float t[16] = {0};
    for (int64_t d = 0; d < D; d++) {
      const float a = k[j * ks + d * kd];
      for (int i = 0; i < 16; i++) t[i] += a * qt[16 * d + i];
    }
    for (int i = 0; i < 16; i++) s[16 * j + i] = t[i];
  }
}
static inline void ember_att_pv(int64_t nk, int64_t i0, int64_t dv16, const float *restrict p,
    const float *restrict v, int64_t vs, const float *restrict alpha, float *restrict acc) {
  for (int r = 0; r < 4; r++) {
    float *a = acc + (i0 + r) * dv16;
    for (int64_t c = 0; c < dv16; c++) a[c] *= alpha[i0 + r];
    for (int64_t j = 0; j < nk; j++) {
      const float pj = p[16 * j + i0 + r];
      for (int64_t c = 0; c < dv16; c++) a[c] += pj * v[j * vs + c];
    }
  }
}
#endif
"""

_DRIVER = r"""static inline int64_t ember_att_scratch(int64_t D, int64_t Dv) {
  const int64_t dv16 = (Dv + 15) / 16 * 16;
  return 16 * D + EMBER_ATT_KB * 16 + 16 * dv16 + EMBER_ATT_KB * dv16 + 4 * 16;
}
/* out rows i0 .. i0+nq-1 (nq <= 16) of one batch/head; ws holds ember_att_scratch floats */
static void ember_att_rows(const ember_att_args *A, int64_t i0, int64_t nq, float *restrict ws) {
  const int64_t D = A->d, Dv = A->dv, Sk = A->sk, dv16 = (Dv + 15) / 16 * 16;
  float *restrict qt = ws, *restrict s = qt + 16 * D, *restrict acc = s + EMBER_ATT_KB * 16;
  float *restrict vp = acc + 16 * dv16, *restrict m = vp + EMBER_ATT_KB * dv16;
  float *restrict l = m + 16, *restrict alpha = l + 16, *restrict shift = alpha + 16;
  for (int64_t d = 0; d < D; d++)
    for (int i = 0; i < 16; i++) qt[16 * d + i] = i < nq ? A->q[(i0 + i) * A->qs + d * A->qd] * A->scale : 0.0f;
  for (int i = 0; i < 16; i++) { m[i] = -INFINITY; l[i] = 0.0f; }
  memset(acc, 0, sizeof(float) * 16 * dv16);
  const int64_t off = Sk - A->sq;   /* causal: query i sees keys j <= i + off */
  int64_t kend = Sk;
  if (A->causal) kend = ember_max64(0, ember_min64(Sk, i0 + nq + off));
  const int vdirect = A->vd == 1 && Dv == dv16;
  for (int64_t k0 = 0; k0 < kend; k0 += EMBER_ATT_KB) {
    const int64_t nk = ember_min64(EMBER_ATT_KB, kend - k0);
    ember_att_scores(nk, D, A->k + k0 * A->ks, A->ks, A->kd, qt, s);
    if (A->mask) {
      const float *mk = A->mask + i0 * A->ms + k0 * A->mk;
      for (int64_t j = 0; j < nk; j++)
        for (int64_t i = 0; i < nq; i++) s[16 * j + i] += mk[i * A->ms + j * A->mk];
    }
    if (A->causal && k0 + nk - 1 > i0 + off)   /* the block crosses the diagonal */
      for (int64_t j = 0; j < nk; j++)
        for (int i = 0; i < 16; i++) s[16 * j + i] = k0 + j > i0 + i + off ? -INFINITY : s[16 * j + i];
    /* online softmax, one query per lane */
    float mx[16];
    for (int i = 0; i < 16; i++) mx[i] = m[i];
    for (int64_t j = 0; j < nk; j++)
      for (int i = 0; i < 16; i++) mx[i] = s[16 * j + i] > mx[i] ? s[16 * j + i] : mx[i];
    for (int i = 0; i < 16; i++) {
      shift[i] = mx[i] == -INFINITY ? 0.0f : mx[i];
      alpha[i] = ember_expf(m[i] - shift[i]);
      m[i] = mx[i];
    }
    float sum[16] = {0};
    for (int64_t j = 0; j < nk; j++)
      for (int i = 0; i < 16; i++) { const float e = ember_expf(s[16 * j + i] - shift[i]); s[16 * j + i] = e; sum[i] += e; }
    for (int i = 0; i < 16; i++) l[i] = l[i] * alpha[i] + sum[i];
    const float *vb = A->v + k0 * A->vs;
    int64_t vs = A->vs;
    if (!vdirect) {   /* V rows not contiguous or Dv ragged: copy the block, zero-padded */
      for (int64_t j = 0; j < nk; j++)
        for (int64_t c = 0; c < dv16; c++) vp[j * dv16 + c] = c < Dv ? vb[j * A->vs + c * A->vd] : 0.0f;
      vb = vp; vs = dv16;
    }
    for (int64_t i = 0; i < nq; i += 4) ember_att_pv(nk, i, dv16, s, vb, vs, alpha, acc);
  }
  for (int64_t i = 0; i < nq; i++) {
    const int dead = m[i] == -INFINITY;
    const float inv = 1.0f / l[i];
    float *o = A->out + (i0 + i) * Dv;
    for (int64_t c = 0; c < Dv; c++) o[c] = A->safe && dead ? 0.0f : acc[i * dv16 + c] * inv;
  }
}
"""

PRELUDE = _COMMON + _AVX + _PORTABLE + _DRIVER


@template(Attention, prelude=PRELUDE)
def print_attention(k: Attention, params, printer) -> str:
    nb = len(k.batch)
    ops = [("q", k.q), ("k", k.k), ("v", k.v)] + ([("m", k.mask)] if k.mask is not None else [])
    L = [f"  const int64_t Sq = {c_dim(k.Sq)}, Sk = {c_dim(k.Sk)}, D = {c_dim(k.D)}, Dv = {c_dim(k.Dv)};",
         f"  const int64_t nbatch = {c_dim(prod(k.batch))}, nqb = (Sq + {QB - 1}) / {QB};",
         "  if (nbatch == 0 || Sq == 0 || Dv == 0) return;",
         f"  #pragma omp parallel if(nbatch * Sq * Sk * (D + Dv) > {PARALLEL_MACS})",
         "  {",
         "    float *ws = malloc(sizeof(float) * ember_att_scratch(D, Dv));",
         "    #pragma omp for schedule(dynamic)",
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
          f"        {params[k.v.buf]} + {' + '.join(offs['v'])}, {mask}, {params[k.out]} + bi * Sq * Dv,",
          f"        Sq, Sk, D, Dv, {', '.join(st['q'])}, {', '.join(st['k'])}, {', '.join(st['v'])}, {ms}, {mk},",
          f"        {c_literal(k.scale, k.q.buf.dtype)}, {int(k.causal)}, {int(k.safe)}}};",
          f"      ember_att_rows(&a, qb * {QB}, ember_min64({QB}, Sq - qb * {QB}), ws);",
          "    }",
          "    free(ws);",
          "  }"]
    return "\n".join(L) + "\n"
