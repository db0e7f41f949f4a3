"""The CPU printer of the fused ``Attention`` kernel (lower/attention.py).

A task is (one batch/head index, a block of QB = 16 query rows); OpenMP hands tasks out
dynamically. Inside a task the keys are walked in blocks of KB, with an online softmax:

* Q is packed transposed and pre-scaled, ``qt[d][i] = q[i, d] * scale`` (16 query lanes),
  so the scores of a key block come out transposed, ``s[j][i]``: queries lie in the SIMD
  lanes and the per-query max, exp and sum over keys are plain vertical vector operations
  (gcc vectorizes those loops).
* Both products are one micro-kernel over 16 query lanes, ``c[r][:] (+)= sum_t a[r, t] *
  b[t][:]``, six rows at a time (twelve FMA accumulators, enough to hide FMA latency), with
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

MR = 6   # rows per micro-kernel call: 2 * MR = 12 accumulators hide the FMA latency


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
_MM = ("static void ember_att_mm(int64_t rows, int64_t T, const float *a, int64_t ar, int64_t at,\n"
       "    const float *b, float *c, const float *alpha) {\n"
       f"  for (int64_t r = 0; r < rows; r += {MR}) {{\n"
       f"    switch (ember_min64({MR}, rows - r)) {{\n" +
       "".join(f"      case {m}: ember_att_ukr{m}(T, a + r * ar, ar, at, b, c + 16 * r, alpha); break;\n"
               for m in range(1, MR + 1)) +
       "    }\n  }\n}\n")

_AVX = ("#if defined(__AVX2__) && defined(__FMA__)\n#include <immintrin.h>\n" +
        "".join(_ukr_avx(m) for m in range(1, MR + 1)) + "#else\n" +
        "".join(_ukr_portable(m) for m in range(1, MR + 1)) + "#endif\n" + _MM)

_DRIVER = r"""static inline int64_t ember_att_scratch(int64_t D, int64_t Dv) {
  return 16 * D + EMBER_ATT_KB * 16 + 16 * Dv + 4 * 16;
}
/* out rows i0 .. i0+nq-1 (nq <= 16) of one batch/head; ws holds ember_att_scratch floats */
static void ember_att_rows(const ember_att_args *A, int64_t i0, int64_t nq, float *restrict ws) {
  const int64_t D = A->d, Dv = A->dv, Sk = A->sk;
  float *restrict qt = ws, *restrict s = qt + 16 * D, *restrict acc = s + EMBER_ATT_KB * 16;
  float *restrict m = acc + 16 * Dv, *restrict l = m + 16, *restrict alpha = l + 16, *restrict shift = alpha + 16;
  for (int64_t d = 0; d < D; d++)
    for (int i = 0; i < 16; i++) qt[16 * d + i] = i < nq ? A->q[(i0 + i) * A->qs + d * A->qd] * A->scale : 0.0f;
  for (int i = 0; i < 16; i++) { m[i] = -INFINITY; l[i] = 0.0f; }
  memset(acc, 0, sizeof(float) * 16 * Dv);
  const int64_t off = Sk - A->sq;   /* causal: query i sees keys j <= i + off */
  int64_t kend = Sk;
  if (A->causal) kend = ember_max64(0, ember_min64(Sk, i0 + nq + off));
  for (int64_t k0 = 0; k0 < kend; k0 += EMBER_ATT_KB) {
    const int64_t nk = ember_min64(EMBER_ATT_KB, kend - k0);
    ember_att_mm(nk, D, A->k + k0 * A->ks, A->ks, A->kd, qt, s, NULL);   /* s[j][i] */
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
    /* acc[c][i] = acc[c][i] * alpha[i] + sum_j v[j][c] * p[j][i] */
    ember_att_mm(Dv, nk, A->v + k0 * A->vs, A->vd, A->vs, s, acc, alpha);
  }
  float scale[16];
  for (int i = 0; i < 16; i++) scale[i] = A->safe && m[i] == -INFINITY ? 0.0f : 1.0f / l[i];
  for (int64_t i = 0; i < nq; i++) {
    float *o = A->out + (i0 + i) * Dv;
    for (int64_t c = 0; c < Dv; c++) o[c] = acc[16 * c + i] * scale[i];
  }
}
"""


PRELUDE = _COMMON + _AVX + _DRIVER


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
