"""Vectorizable float32 exp, tanh and erf for generated C (part of the prelude).

gcc does not vectorize loops that call libm's expf/tanhf/erff, so GELU, softmax and
sigmoid ran one element at a time. These are branch-free (selects, not jumps) static
inline functions that gcc inlines and vectorizes; each is within 2 ulp of the correctly
rounded float32 result over the whole float range, inf and NaN included
(tests/backends/cpu/test_fastmath.py checks them against float64 numpy).

Written against -ffast-math: range reductions use explicit fused multiply-adds (which gcc's
reassociation leaves alone) and scaling by 2^n adds to the exponent bits instead of
multiplying by two powers of two that reassociation could merge into an overflow.

* exp: n = round(x / ln 2), r = x - n ln 2 (two-part ln 2), e^r by Cephes' degree-5
  polynomial, 2^n added to the exponent; results below FLT_MIN are built as integers.
* exp for softmax (``ember_expf_softmax``): the same for -87 <= x < 88 and 0 below -87
  (cheaper: no subnormal path; a softmax sum holds e^0 = 1).
* tanh: odd polynomial (Cephes) for |x| < 0.625, else 1 - 2 / (e^{2|x|} + 1).
* erf: x + x * P(x^2) (degree 6, fitted) for |x| < 1, else 1 - Q(|x| - 2.46875) (degree 15
  fit of erfc on [1, 3.9375]); 1 beyond, where float32 erf rounds to 1.
"""

C_SOURCE = r"""
#ifdef __FMA__
#define EMBER_FMA(a, b, c) __builtin_fmaf((a), (b), (c))
#else
#define EMBER_FMA(a, b, c) ((a) * (b) + (c))
#endif
static inline float ember_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t ember_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
/* e^r, r = x - n ln 2 (two-part ln 2), by Cephes' degree-5 polynomial: in [0.7, 1.42] */
static inline float ember_exp_reduced(float x, float n) {
  float r = EMBER_FMA(n, -0.693359375f, x);
  r = EMBER_FMA(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = EMBER_FMA(p, r, 1.3981999507e-3f);
  p = EMBER_FMA(p, r, 8.3334519073e-3f);
  p = EMBER_FMA(p, r, 4.1665795894e-2f);
  p = EMBER_FMA(p, r, 1.6666665459e-1f);
  p = EMBER_FMA(p, r, 5.0000001201e-1f);
  p = EMBER_FMA(p, r * r, r) + 1.0f;
  return p;
}
static inline float ember_expf(float x) {
  x = x < -104.0f ? -104.0f : x;          /* NaN passes both clamps */
  x = x > 89.0f ? 89.0f : x;
  float n = floorf(EMBER_FMA(x, 1.44269504088896341f, 0.5f));
  n = n == n ? n : 0.0f;
  const float p = ember_exp_reduced(x, n);
  const int32_t ni = (int32_t)n;
  const uint32_t pb = ember_f2u(p);
  const float big = ember_u2f(pb + ((uint32_t)ni << 23));
  /* below FLT_MIN the result's bits are built with integer ops, rounded to nearest: a float
     operation that underflows to a subnormal costs Intel cores a microcode assist (~100x an
     FMA) unless FTZ is set, and a shared library cannot set it for OpenMP's threads. A
     softmax over padding-masked keys hits this on most of its lanes. */
  const int32_t e = (int32_t)(pb >> 23) + ni;          /* the result's biased exponent */
  int32_t sh = 1 - e;
  sh = sh < 1 ? 1 : sh > 31 ? 31 : sh;
  const uint32_t m = (pb & 0x7fffffu) | 0x800000u;
  const float small = ember_u2f((m + (1u << (sh - 1))) >> sh);
  float y = e < 1 ? small : big;
  return x > 88.72283935546875f ? INFINITY : y;
}
/* e^x for a softmax's x = score - row max <= 0 (valid for any x < 88): 0 for x < -87 (e^-87
   is 1.6e-38, next to FLT_MIN), which cannot change a sum that holds e^0 = 1. Clamping x to
   -87 keeps every float operation normal: no integer subnormal path, no assist. */
static inline float ember_expf_softmax(float x) {
  const float xc = x < -87.0f ? -87.0f : x;   /* NaN passes, and stays NaN */
  float n = floorf(EMBER_FMA(xc, 1.44269504088896341f, 0.5f));
  n = n == n ? n : 0.0f;
  const float p = ember_exp_reduced(xc, n);
  /* zero below -87 by masking the bits: a select here is compiled to a branch in some loops */
  const uint32_t keep = -(uint32_t)!(x < -87.0f);
  return ember_u2f((ember_f2u(p) + ((uint32_t)(int32_t)n << 23)) & keep);
}
static inline float ember_tanhf(float x) {
  const float ax = fabsf(x), z = x * x;
  float p = -5.70498872745e-3f;
  p = EMBER_FMA(p, z, 2.06390887954e-2f);
  p = EMBER_FMA(p, z, -5.37397155531e-2f);
  p = EMBER_FMA(p, z, 1.33314422036e-1f);
  p = EMBER_FMA(p, z, -3.33332819422e-1f);
  const float small = EMBER_FMA(p * z, x, x);
  const float e = ember_expf(2.0f * ax);
  const float big = copysignf(1.0f - 2.0f / (e + 1.0f), x);
  return ax < 0.625f ? small : big;
}
static inline float ember_erff(float x) {
  const float ax = fabsf(x), z = x * x;
  float q = 7.971141895e-05f;
  q = EMBER_FMA(q, z, -8.043398848e-04f);
  q = EMBER_FMA(q, z, 5.191835575e-03f);
  q = EMBER_FMA(q, z, -2.685550973e-02f);
  q = EMBER_FMA(q, z, 1.128362194e-01f);
  q = EMBER_FMA(q, z, -3.761262894e-01f);
  q = EMBER_FMA(q, z, 1.283791661e-01f);
  const float small = EMBER_FMA(x, q, x);
  const float t = ax - 2.46875f;
  float p = 3.752802797e-07f;
  p = EMBER_FMA(p, t, -1.049763114e-06f);
  p = EMBER_FMA(p, t, -3.223656677e-06f);
  p = EMBER_FMA(p, t, 1.700453322e-05f);
  p = EMBER_FMA(p, t, -1.332714965e-05f);
  p = EMBER_FMA(p, t, -7.728307537e-05f);
  p = EMBER_FMA(p, t, 2.773375600e-04f);
  p = EMBER_FMA(p, t, -3.336781519e-04f);
  p = EMBER_FMA(p, t, -4.698908888e-04f);
  p = EMBER_FMA(p, t, 2.909043804e-03f);
  p = EMBER_FMA(p, t, -6.652145181e-03f);
  p = EMBER_FMA(p, t, 9.619825520e-03f);
  p = EMBER_FMA(p, t, -9.489434771e-03f);
  p = EMBER_FMA(p, t, 6.280955859e-03f);
  p = EMBER_FMA(p, t, -2.544183051e-03f);
  p = EMBER_FMA(p, t, 4.806047655e-04f);
  const float big = copysignf(ax >= 3.9375f ? 1.0f : 1.0f - p, x);
  return ax < 1.0f ? small : big;
}
static inline float ember_sigmoidf(float x) { return 1.0f / (1.0f + ember_expf(-x)); }
"""
