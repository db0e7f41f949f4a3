"""The CPU int8 GEMM: exact int32 accumulation, register-blocked AVX2, OpenMP over tiles.

``out[i, j] = epilogue(sum_k A[i, k] * W[j, k])`` for the ``lower.qgemm.QGemm`` kernel: A is
the activations (8-bit, minus their zero point) as int16 [M, K2], W a constant weight packed at
compile time (``lower/packing_int8.py``: panels of 16 columns, K walked in pairs, int8 or int16).

Why int16 pairs (``vpmaddwd``) and not ``vpmaddubsw``:

* ``vpmaddubsw`` (u8 x s8 -> s16 pair sums) saturates once a pair sum passes 32767; full-range
  u8 activations against s8 weights reach 2 * 255 * 127 = 64770. Making that impossible costs
  accuracy: activations cut to 7 bits ("reduce_range", FBGEMM's AVX2 choice) or weights to 7.
* ``vpmaddwd`` (s16 x s16 -> s32 pair sums) is exact for any 8-bit operands, even after
  subtracting zero points (|x - zp| <= 255), and the int32 sum of K products stays exact while
  K * 255 * max|w| < 2**31 (K < 65793 for int8 weights; the lowering checks, and falls back).
* It is not slower where it matters: the u8 route needs ``vpmaddubsw`` + ``vpmaddwd`` (with a
  vector of ones) per 32 multiply-adds, the int16 route two ``vpmaddwd``. Both are two uops on
  the vector-multiply ports (two per cycle on Zen 3 and on Intel cores since Skylake), i.e. 32
  multiply-adds per cycle, twice fp32 FMA. Summing two ``vpmaddubsw`` results in s16 before
  ``vpmaddwd`` (the one trick that would make the u8 route faster) overflows for 7-bit x 8-bit
  operands (4 * 127 * 127 > 32767), so it is not exact here.
* The weight stays int8 in memory (half the bytes of int16, a quarter of fp32) and is widened
  in registers with ``vpmovsxbw`` as it is loaded, one cheap uop per 16 values.

Micro-kernel: an MR x 16 tile (MR <= 6) of int32 in 2 * MR ymm accumulators; each k-pair
broadcasts MR pairs of A (32 bits each) and loads one 16 x 2 slice of the packed panel. K is
not blocked: int32 partial sums never leave the registers, so the tile is final when the
micro-kernel returns, and the epilogue (zero-point/scale dequantization, bias, fused pointwise
work: an ``Expr`` of ``acc``, i0, i1) is printed into the store of the tile. Tasks are (row
block, run of panels), scheduled dynamically across OpenMP threads; M = 1 (a GEMV) is one row
block split over panels, so the weight streams once at memory speed on every core.
Without AVX2 a portable C micro-kernel reads the same packed layout.
"""
from __future__ import annotations

from ...ir import dtypes
from ...lower.qgemm import QGemm
from .codegen import ExprPrinter, _store, c_dim, template

MR = 6
MC = 96              # rows per task: an A block of 96 x K int16 stays in L2
TASKS_WANTED = 16    # split the panels until there are this many tasks (load balance)
PARALLEL_MACS = 1 << 17

_B = {"b8": ("int8_t", "_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)({p})))"),
      "b16": ("int16_t", "_mm256_loadu_si256((const __m256i *)({p}))")}


def _ukr_avx(mr: int, bk: str) -> str:
    bt, loadb = _B[bk]
    z = "_mm256_setzero_si256()"
    acc = ", ".join(f"c{r}0 = {z}, c{r}1 = {z}" for r in range(mr))
    body = "\n".join(
        f"    {{ int32_t v; memcpy(&v, a + {r} * lda + 2 * p, 4); const __m256i av = _mm256_set1_epi32(v);\n"
        f"      c{r}0 = _mm256_add_epi32(c{r}0, _mm256_madd_epi16(av, b0)); "
        f"c{r}1 = _mm256_add_epi32(c{r}1, _mm256_madd_epi16(av, b1)); }}" for r in range(mr))
    store = "\n".join(f"  _mm256_storeu_si256((__m256i *)(c + {16 * r}), c{r}0); "
                      f"_mm256_storeu_si256((__m256i *)(c + {16 * r + 8}), c{r}1);" for r in range(mr))
    return f"""static inline void ember_q8ukr{mr}_{bk}(int64_t kp, const int16_t *restrict a, int64_t lda,
    const {bt} *restrict b, int32_t *restrict c) {{
  __m256i {acc};
  #pragma GCC unroll 2
  for (int64_t p = 0; p < kp; p++) {{
    const __m256i b0 = {loadb.format(p="b + 32 * p")}, b1 = {loadb.format(p="b + 32 * p + 16")};
{body}
  }}
{store}
}}
"""


def _ukr_portable(mr: int, bk: str) -> str:
    bt = _B[bk][0]
    return f"""static inline void ember_q8ukr{mr}_{bk}(int64_t kp, const int16_t *restrict a, int64_t lda,
    const {bt} *restrict b, int32_t *restrict c) {{
  int32_t t[{mr}][16] = {{{{0}}}};
  for (int64_t p = 0; p < kp; p++)
    for (int r = 0; r < {mr}; r++) {{
      const int32_t a0 = a[r * lda + 2 * p], a1 = a[r * lda + 2 * p + 1];
      for (int j = 0; j < 16; j++) t[r][j] += a0 * b[32 * p + 2 * j] + a1 * b[32 * p + 2 * j + 1];
    }}
  for (int r = 0; r < {mr}; r++) for (int j = 0; j < 16; j++) c[16 * r + j] = t[r][j];
}}
"""


def _dispatch(bk: str) -> str:
    bt = _B[bk][0]
    cases = "".join(f"    case {m}: ember_q8ukr{m}_{bk}(kp, a, lda, b, c); break;\n" for m in range(1, MR + 1))
    return (f"static __attribute__((noinline)) void ember_q8ukr_{bk}(int mr, int64_t kp, const int16_t *a, "
            f"int64_t lda, const {bt} *b, int32_t *c) {{\n  switch (mr) {{\n{cases}  }}\n}}\n")


def prelude() -> str:
    """C helpers shared by every int8 GEMM of a program (printed once)."""
    kinds = tuple(_B)
    avx = "".join(_ukr_avx(m, bk) for bk in kinds for m in range(1, MR + 1))
    portable = "".join(_ukr_portable(m, bk) for bk in kinds for m in range(1, MR + 1))
    return ("#if defined(__AVX2__)\n#include <immintrin.h>\n" + avx + "#else\n" + portable + "#endif\n" +
            "".join(_dispatch(bk) for bk in kinds))


@template(QGemm, prelude=prelude())
def print_qgemm(k: QGemm, params, printer) -> str:
    bk = {dtypes.i8: "b8", dtypes.i16: "b16"}[k.b.dtype]
    A, B, C = params[k.a], params[k.b], params[k.out]
    L = [f"  const int64_t M = {c_dim(k.M)}, N = {k.N}, K2 = {k.K2}, kp = K2 / 2;",
         "  if (M == 0) return;",
         "  const int64_t npan = (N + 15) / 16;",
         f"  const int64_t mc = M < {MC} ? M : {MC}, mt = (M + mc - 1) / mc;",
         "  int64_t pc = npan;  /* panels per task */",
         f"  while (mt * ((npan + pc - 1) / pc) < {TASKS_WANTED} && pc > 1) pc = (pc + 1) / 2;",
         "  const int64_t nt = (npan + pc - 1) / pc;",
         f"  #pragma omp parallel for schedule(dynamic, 1) if(M * N * K2 > {PARALLEL_MACS})",
         "  for (int64_t t = 0; t < mt * nt; t++) {",
         "    const int64_t m0 = (t / nt) * mc, m1 = ember_min64(M, m0 + mc);",
         "    const int64_t jb0 = (t % nt) * pc, jb1 = ember_min64(npan, jb0 + pc);",
         "    int32_t tile[6 * 16] __attribute__((aligned(64)));",
         # rows outside: MR rows of A stay in L1 while the task's panels stream from L2
         f"    for (int64_t i = m0; i < m1; i += {MR}) {{",
         f"      const int mr = (int)ember_min64({MR}, m1 - i);",
         "      for (int64_t jp = jb0; jp < jb1; jp++) {",
         f"        ember_q8ukr_{bk}(mr, kp, {A} + i * K2, K2, {B} + jp * kp * 32, tile);",
         "        const int64_t j0 = jp * 16, nr = ember_min64(16, N - j0);",
         "        for (int r = 0; r < mr; r++)",
         "          for (int64_t c = 0; c < nr; c++) {"]
    ind = "            "
    index = "(i + r) * N + j0 + c"
    if k.epilogue is None:
        L.append(ind + _store(C, k.out.dtype, index, "tile[r * 16 + c]"))
    else:
        L.append(f"{ind}const int64_t i0 = i + r, i1 = j0 + c; const int32_t acc = tile[r * 16 + c];")
        lines: list = []
        pr = ExprPrinter(params, lines, ind)
        pr.count_uses(k.epilogue)
        v = pr(k.epilogue)
        L += lines
        L.append(ind + _store(C, k.out.dtype, index, v))
    L += ["          }", "      }", "    }", "  }"]
    return "\n".join(L) + "\n"
