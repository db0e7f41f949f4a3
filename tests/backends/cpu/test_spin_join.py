"""ember_spin_join: a thread done with its share of a parallel region spins (bounded) until
the team has arrived, so that libgomp's closing barrier does not put it to sleep."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

import ember
from ember.backends.cpu import codegen, toolchain
from ember.ir import Graph, TensorType, dtypes, sym

# thread 1 arrives late at each join point (20 us at the first TRIALS, 50 ms at the last); both
# record on OpenMP's wall clock when thread 0 came, when thread 1 came and when thread 0 went
# on: times, not waits, since a loaded machine may deschedule either thread
TRIALS = 20
PROGRAM = codegen.JOIN_C + r"""
#include <stdio.h>
#define TRIALS %d
int main(void) {
  int joined = 0, passes = 0;
  static double came0[TRIALS + 1], came1[TRIALS + 1], left0[TRIALS + 1];
  #pragma omp parallel num_threads(2)
  {
    const int me = omp_get_thread_num();
    for (int g = 0; g <= TRIALS; g++) {
      if (me == 1) {
        /* busy: nanosleep's timer slack (50 us) would blur a 20 us delay */
        const double until = omp_get_wtime() + (g < TRIALS ? 20e-6 : 50e-3);
        while (omp_get_wtime() < until) ember_pause();
        came1[g] = omp_get_wtime();
      } else {
        came0[g] = omp_get_wtime();
      }
      ember_spin_join(&joined);
      if (me == 0) left0[g] = omp_get_wtime();
      #pragma omp atomic
      passes++;
      #pragma omp barrier
    }
  }
  printf("%%d %%d\n", joined, passes);
  for (int g = 0; g <= TRIALS; g++) printf("%%.9f %%.9f %%.9f\n", came0[g], came1[g], left0[g]);
  return 0;
}
""" % TRIALS


def test_join_waits_for_the_team_and_gives_up_after_its_spin(tmp_path):
    src, exe = tmp_path / "join.c", tmp_path / "join"
    src.write_text(PROGRAM)
    r = subprocess.run([toolchain.find_compiler(), "-O2", "-fopenmp", str(src), "-o", str(exe)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, env={"OMP_NUM_THREADS": "2"}, timeout=60)
    head, *rows = out.stdout.splitlines()
    assert head.split() == [str(2 * (TRIALS + 1))] * 2   # every join point: both threads, once each
    times = np.array([[float(x) for x in row.split()] for row in rows])
    came0, came1, left0 = times.T
    # where thread 1 came well within the spin (not descheduled on the way), thread 0 went on
    # only after it came
    inside = (came1[:TRIALS] - came0[:TRIALS]) < 0.8e-6 * codegen.JOIN_SPIN_US
    assert inside.any(), times
    assert np.all(left0[:TRIALS][inside] >= came1[:TRIALS][inside]), times
    # 50 ms late: thread 0 gave up after JOIN_SPIN_US and went on to the OpenMP barrier first
    assert left0[TRIALS] < came1[TRIALS]


def test_parallel_for_regions_become_joined_regions():
    body = ("  const int64_t n = 5;\n"
            "  #pragma omp parallel for collapse(2) if(n * 9 > 32768)\n"
            "  for (int64_t i0 = 0; i0 < n; i0++)\n"
            "    for (int64_t i1 = 0; i1 < 9; i1++) {\n"
            "      p0[i0 * 9 + i1] = (float){1};\n"
            "    }\n"
            "  p0[0] = 2;\n")
    out = codegen.spin_joined(body)
    assert "#pragma omp parallel for" not in out
    assert "  #pragma omp parallel if(n * 9 > 32768)\n  {\n  #pragma omp for collapse(2) nowait\n" in out
    # the join comes right after the loop statement, and the code after it stays outside
    assert out.index("ember_spin_join(&joined);") > out.index("(float){1};")
    assert out.rstrip().endswith("} }\n  p0[0] = 2;")
    assert codegen.spin_joined("  #pragma omp parallel for simd\n  for (int i = 0; i < 3; i++) {\n  }\n") \
        .count("#pragma omp for simd nowait") == 1


@pytest.mark.parametrize("n", [1, 3, 127, 4099])
def test_joined_kernels_compute_what_numpy_does(n):
    # elementwise, a row reduction and a GEMM: each a joined region when large enough
    rng = np.random.default_rng(n)
    w = rng.standard_normal((64, 48)).astype(np.float32)
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (sym("n"), 64)))
    h = g.op("relu", [g.op("matmul", [x, g.add_const(w, "w")])])
    g.outputs = [g.op("softmax", [h], {"axis": -1}), g.op("exp", [x])]
    cm = ember.compile(g)
    assert "ember_spin_join(&joined);" in cm.source and "#pragma omp parallel for" not in cm.source
    xv = rng.standard_normal((n, 64)).astype(np.float32)
    sm, ex = cm.run_numpy([xv])
    hv = np.maximum(xv.astype(np.float64) @ w, 0)
    e = np.exp(hv - hv.max(-1, keepdims=True))
    np.testing.assert_allclose(sm, e / e.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ex, np.exp(xv.astype(np.float64)), rtol=1e-5)
