"""The CPU int8 GEMM: exact int32 accumulation, register-blocked AVX2, OpenMP over tiles.

``out[i, j] = epilogue(sum_k A[i, k] * W[j, k])`` for the ``lower.qgemm.QGemm`` kernel, W a
constant weight packed at compile time (``lower/packing_int8.py``: panels of 16 columns, K
walked in groups of 4 or 2). Exact by construction, never a saturating instruction on a
value that could saturate. Two routes:

* ``u7`` (the fast one): ``vpmaddubsw`` multiplies u8 A by s8 W and adds adjacent pairs into
  s16, ``vpmaddwd`` with a vector of ones adds those pairs into s32, ``vpaddd`` accumulates:
  32 multiply-adds in 3 uops. ``vpmaddubsw`` saturates once a pair sum passes 32767, which
  full-range u8 x s8 reaches (2 * 255 * 127 = 64770). So this route takes only activations
  whose codes are provably in [0, 127] (``dynamic_quantize(reduce_range=True)``, FBGEMM's
  AVX2 choice): 2 * 127 * 128 = 32512 cannot saturate, for any s8 weight. Two ``vpmaddubsw``
  results are *not* summed in s16 before ``vpmaddwd`` (4 * 127 * 127 > 32767 would wrap).
  A's zero point is subtracted in the epilogue, ``acc - zp[i] * colsum(W)[j]``, with the
  column sums computed at compile time; A is read in place (no packing pass).
* ``s16``: for any 8-bit A (full-range u8, s8, ONNX MatMulInteger's operands), a pointwise
  loop writes ``A - zp`` as int16 and ``vpmaddwd`` multiplies int16 pairs into s32, exact for
  |values| <= 255. Two ``vpmaddwd`` + two ``vpaddd`` per 32 multiply-adds: on this Zen 3 the
  micro-kernel peaks near 70 GMAC/s per core against about 93 for u7 (and about 23 for the
  fp32 FMA kernel), which is why dynamic quantization uses 7-bit activations.

The int32 sum of K products is exact while it provably fits (the lowering checks K against
the operands' bounds and otherwise falls back to a reduction with an int64 accumulator).

Micro-kernel: an MR x 16 tile of int32 in 2 * MR ymm accumulators; each k group broadcasts
MR 32-bit groups of A and loads one 16-column slice of the panel (int8 weights are widened
with ``vpmovsxbw`` as they are loaded on the s16 route, so they stay one byte in memory). K
is not blocked: partial sums never leave the registers, the tile is final when the
micro-kernel returns, and the epilogue (zero point, scales, bias, fused pointwise work: an
``Expr`` of ``acc``, i0, i1) is printed into the store of the tile. Tasks are (row block, run
of panels), scheduled dynamically over OpenMP threads; a GEMV (M = 1) is one row block split
over panels, so the weight streams once, one byte per value, on every core. Without AVX2 a
portable C micro-kernel reads the same packed layout.

With AVX-512 VNNI (``EMBER_Q8MR`` = 12 rows of one zmm): ``vpdpbusd`` (u7) and ``vpdpwssd``
(s16) take a whole 16-column group of the panel per instruction, 64 or 32 multiply-adds
where the AVX2 route needs three instructions for 32; same packed weights, same results.
"""
from __future__ import annotations

from ...ir import dtypes
from ...lower.qgemm import GROUP, QGemm
from .codegen import c_dim, epilogue_store, template

MR = 4               # rows per micro-tile: 8 accumulators + operands fit the 16 ymm registers
MC = 96              # rows per task: an A block of 96 x KC stays in L2
KC = 512             # K block (values): a KC x 16 block of the panel, 8 KiB of int8, stays in L1
TASKS_WANTED = 16    # split the panels until there are this many tasks (load balance)
PARALLEL_MACS = 1 << 17

# variant -> (A type, B type, k per group, AVX2 code of one k group for row r)
_BT = {"u7": ("uint8_t", "int8_t"), "b8": ("int16_t", "int8_t"), "b16": ("int16_t", "int16_t")}
_LOADB = {"u7": "_mm256_loadu_si256((const __m256i *)({p}))",
          "b8": "_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)({p})))",
          "b16": "_mm256_loadu_si256((const __m256i *)({p}))"}


def _group(v: str) -> int:
    return GROUP["u7"] if v == "u7" else GROUP["s16"]


def _ukr_avx(mr: int, v: str) -> str:
    at, bt = _BT[v]
    g = _group(v)
    z = "_mm256_setzero_si256()"
    acc = ", ".join(f"c{r}0 = {z}, c{r}1 = {z}" for r in range(mr))
    if v == "u7":
        mul = lambda b: f"_mm256_madd_epi16(_mm256_maddubs_epi16(av, {b}), ones)"
    else:
        mul = lambda b: f"_mm256_madd_epi16(av, {b})"
    body = "\n".join(
        f"    {{ int32_t v; memcpy(&v, a + {r} * lda + {g} * q, 4); const __m256i av = _mm256_set1_epi32(v);\n"
        f"      c{r}0 = _mm256_add_epi32(c{r}0, {mul('b0')}); c{r}1 = _mm256_add_epi32(c{r}1, {mul('b1')}); }}"
        for r in range(mr))
    store = "\n".join(f"  _mm256_storeu_si256((__m256i *)(c + {16 * r}), c{r}0); "
                      f"_mm256_storeu_si256((__m256i *)(c + {16 * r + 8}), c{r}1);" for r in range(mr))
    step = 16 * g
    load = "\n".join(f"    c{r}0 = _mm256_loadu_si256((const __m256i *)(c + {16 * r})); "
                     f"c{r}1 = _mm256_loadu_si256((const __m256i *)(c + {16 * r + 8}));" for r in range(mr))
    return f"""static inline void ember_q8ukr{mr}_{v}(int64_t kg, const {at} *restrict a, int64_t lda,
    const {bt} *restrict b, int32_t *restrict c, int accumulate) {{
  const __m256i ones = _mm256_set1_epi16(1); (void)ones;
  __m256i {acc};
  if (accumulate) {{
{load}
  }}
  #pragma GCC unroll 2
  for (int64_t q = 0; q < kg; q++) {{
    const __m256i b0 = {_LOADB[v].format(p=f"b + {step} * q")}, b1 = {_LOADB[v].format(p=f"b + {step} * q + {step // 2}")};
{body}
  }}
{store}
}}
"""


MR_VNNI = 12         # rows with AVX-512 VNNI: 12 zmm accumulators of 16 int32 columns

# the AVX-512 VNNI load of one k group of a panel (16 columns; int8 k-pairs widen to int16)
_LOADB_VNNI = {"u7": "_mm512_loadu_si512((const void *)({p}))",
               "b8": "_mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)({p})))",
               "b16": "_mm512_loadu_si512((const void *)({p}))"}


def _ukr_vnni(mr: int, v: str) -> str:
    """AVX-512 VNNI: one instruction per row and k group, the whole 16-column panel at once.
    ``vpdpbusd`` sums four u8 x s8 products into int32 without the 16-bit intermediate that
    saturates ``vpmaddubsw``; ``vpdpwssd`` is ``vpmaddwd`` plus the add, the same exact
    int16-pair products. So every route gives the AVX2 kernel's results, bit for bit."""
    at, bt = _BT[v]
    g = _group(v)
    dp = "_mm512_dpbusd_epi32" if v == "u7" else "_mm512_dpwssd_epi32"
    z = "_mm512_setzero_si512()"
    acc = ", ".join(f"c{r} = accumulate ? _mm512_loadu_si512((const void *)(c + {16 * r})) : {z}" for r in range(mr))
    body = "\n".join(f"    {{ int32_t v; memcpy(&v, a + {r} * lda + {g} * q, 4); c{r} = {dp}(c{r}, _mm512_set1_epi32(v), b0); }}"
                     for r in range(mr))
    store = "\n".join(f"  _mm512_storeu_si512((void *)(c + {16 * r}), c{r});" for r in range(mr))
    return f"""static inline void ember_q8ukr{mr}_{v}(int64_t kg, const {at} *restrict a, int64_t lda,
    const {bt} *restrict b, int32_t *restrict c, int accumulate) {{
  __m512i {acc};
  #pragma GCC unroll 2
  for (int64_t q = 0; q < kg; q++) {{
    const __m512i b0 = {_LOADB_VNNI[v].format(p=f"b + {16 * g} * q")};
{body}
  }}
{store}
}}
"""


def _ukr_portable(mr: int, v: str) -> str:
    at, bt = _BT[v]
    g = _group(v)
    return f"""static inline void ember_q8ukr{mr}_{v}(int64_t kg, const {at} *restrict a, int64_t lda,
    const {bt} *restrict b, int32_t *restrict c, int accumulate) {{
  int32_t t[{mr}][16];
  for (int r = 0; r < {mr}; r++) for (int j = 0; j < 16; j++) t[r][j] = accumulate ? c[16 * r + j] : 0;
  for (int64_t q = 0; q < kg; q++)
    for (int r = 0; r < {mr}; r++)
      for (int j = 0; j < 16; j++)
        for (int u = 0; u < {g}; u++) t[r][j] += (int32_t)a[r * lda + {g} * q + u] * b[{16 * g} * q + {g} * j + u];
  for (int r = 0; r < {mr}; r++) for (int j = 0; j < 16; j++) c[16 * r + j] = t[r][j];
}}
"""


def _dispatch(v: str, mr: int) -> str:
    at, bt = _BT[v]
    cases = "".join(f"    case {m}: ember_q8ukr{m}_{v}(kg, a, lda, b, c, accumulate); break;\n" for m in range(1, mr + 1))
    return (f"static __attribute__((noinline)) void ember_q8ukr_{v}(int mr, int64_t kg, const {at} *a, "
            f"int64_t lda, const {bt} *b, int32_t *c, int accumulate) {{\n  switch (mr) {{\n{cases}  }}\n}}\n")


def prelude() -> str:
    """C helpers shared by every int8 GEMM of a program (printed once)."""
    def family(ukr, mr):
        return "".join(ukr(m, v) for v in _BT for m in range(1, mr + 1)) + "".join(_dispatch(v, mr) for v in _BT)
    return ("#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)\n#include <immintrin.h>\n"
            f"#define EMBER_Q8MR {MR_VNNI}\n" + family(_ukr_vnni, MR_VNNI) +
            f"#elif defined(__AVX2__)\n#include <immintrin.h>\n#define EMBER_Q8MR {MR}\n" + family(_ukr_avx, MR) +
            f"#else\n#define EMBER_Q8MR {MR}\n" + family(_ukr_portable, MR) + "#endif\n")


def variant(k: QGemm) -> str:
    if k.route == "u7":
        return "u7"
    return {dtypes.i8: "b8", dtypes.i16: "b16"}[k.b.dtype]


@template(QGemm, prelude=prelude())
def print_qgemm(k: QGemm, params, printer) -> str:
    v = variant(k)
    g = _group(v)
    A, B, C = params[k.a], params[k.b], params[k.out]
    L = [f"  /* int8 GEMM, route {v} */",
         f"  const int64_t M = {c_dim(k.M)}, N = {k.N}, kg = {k.K // g}, lda = {c_dim(k.lda)};",
         "  if (M == 0) return;",
         "  const int64_t npan = (N + 15) / 16;",
         f"  const int64_t mc = M < {MC} ? M : {MC}, mt = (M + mc - 1) / mc;",
         "  int64_t pc = npan;  /* panels per task */",
         f"  while (mt * ((npan + pc - 1) / pc) < {TASKS_WANTED} && pc > 1) pc = (pc + 1) / 2;",
         "  const int64_t nt = (npan + pc - 1) / pc;",
         f"  #pragma omp parallel for schedule(dynamic, 1) if(M * N * kg > {PARALLEL_MACS // g})",
         "  for (int64_t t = 0; t < mt * nt; t++) {",
         "    const int64_t m0 = (t / nt) * mc, m1 = ember_min64(M, m0 + mc);",
         "    const int64_t jb0 = (t % nt) * pc, jb1 = ember_min64(npan, jb0 + pc);",
         f"    int32_t tile[{MC} * 16] __attribute__((aligned(64)));",
         # a KC x 16 block of the panel stays in L1 while the task's rows (in L2) stream past
         # it; int32 partial sums over K blocks live in the tile, never leave int32
         "    for (int64_t jp = jb0; jp < jb1; jp++) {",
         f"      const {_BT[v][1]} *bp = {B} + jp * kg * {16 * g};",
         f"      for (int64_t q0 = 0; q0 < kg; q0 += {KC // g}) {{",
         f"        const int64_t kc = ember_min64({KC // g}, kg - q0);",
         "        for (int64_t i = m0; i < m1; i += EMBER_Q8MR)",
         f"          ember_q8ukr_{v}((int)ember_min64(EMBER_Q8MR, m1 - i), kc, {A} + i * lda + q0 * {g}, lda, "
         f"bp + q0 * {16 * g}, tile + (i - m0) * 16, q0 > 0);",
         "      }",
         "      const int64_t j0 = jp * 16, nr = ember_min64(16, N - j0);",
         "      for (int64_t i = m0; i < m1; i++)",
         "        for (int64_t c = 0; c < nr; c++) {"]
    L += epilogue_store(params, "          ", k.epilogue, C, k.out.dtype, "i * N + j0 + c", "tile[(i - m0) * 16 + c]",
                        "const int64_t i0 = i, i1 = j0 + c; const int32_t acc = tile[(i - m0) * 16 + c];")
    L += ["        }", "    }", "  }"]
    return "\n".join(L) + "\n"
