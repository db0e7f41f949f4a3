"""The C API: a C program built with gcc against an artifact's header and library loads the
weights, runs the model and prints what Python computes."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ember
from ember.ir import Graph, TensorType, dtypes, sym

MAIN_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include "model.h"

int main(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: %s WEIGHTS BATCH\n", argv[0]); return 2; }
  if (ember_abi_version() != EMBER_ABI_VERSION) { fprintf(stderr, "ABI mismatch\n"); return 1; }
  void *consts[EMBER_NUM_CONSTS > 0 ? EMBER_NUM_CONSTS : 1];
  void *weights = ember_load_weights(argv[1], consts);
  if (!weights) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
  int64_t dims[EMBER_NUM_SYMBOLS];
  dims[EMBER_DIM_BATCH] = atoll(argv[2]);
  int64_t n_in = ember_input_numel(EMBER_INPUT_X, dims), n_out = ember_output_numel(EMBER_OUTPUT_Y, dims);
  float *x = malloc(n_in * sizeof(float)), *y = malloc(n_out * sizeof(float));
  for (int64_t i = 0; i < n_in; i++) x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
  char *ws = aligned_alloc(64, (ember_workspace_size(dims) + 63) / 64 * 64 + 64);
  void *in[] = {x}, *out[] = {y};
  int rc = ember_main(dims, in, out, consts, ws);
  if (rc != 0) { fprintf(stderr, "ember_main returned %d\n", rc); return 1; }
  for (int64_t i = 0; i < n_out; i++) printf("%.9g\n", y[i]);
  /* time each kernel of a second call: one line per kernel on stderr */
  const int nk = ember_profile_count();
  double *sec = calloc(nk, sizeof(double)), *flops = calloc(nk, sizeof(double));
  ember_profile_flops(dims, flops);
  ember_set_profile(sec);
  ember_main(dims, in, out, consts, ws);
  ember_set_profile(NULL);
  for (int i = 0; i < nk; i++) fprintf(stderr, "%s|%.9g|%.0f\n", ember_profile_label(i), sec[i], flops[i]);
  free(sec); free(flops);
  free(ws); free(x); free(y); free(weights);
  return 0;
}
"""


def model_graph():
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (sym("batch"), 12)))
    w1 = g.add_const(rng.standard_normal((24, 12)).astype(np.float32), "w1")
    b1 = g.add_const(rng.standard_normal(24).astype(np.float32), "b1")
    h = g.op("tanh", [g.op("linear", [x, w1, b1])])
    g.outputs = [g.op("softmax", [g.op("linear", [h, g.add_const(
        rng.standard_normal((5, 24)).astype(np.float32), "w2")])], {"axis": -1})]
    g.output_names = ["y"]
    return g


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_c_program_matches_python(tmp_path):
    compiled = ember.compile(model_graph())
    art = tmp_path / "model.ember"
    compiled.save(art)
    # The header as a C user gets it: from the command line.
    r = subprocess.run([sys.executable, "-m", "ember.cli", "compile", str(art),
                        "--emit-c-header", str(tmp_path / "model.h")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "model.h").read_text() == (art / "model.h").read_text()
    (tmp_path / "main.c").write_text(MAIN_C)
    lib = (art / "model.so").resolve()
    r = subprocess.run(["gcc", "-std=c11", "-Wall", "-Werror", "-O1", "-I", str(tmp_path),
                        str(tmp_path / "main.c"), str(lib), f"-Wl,-rpath,{lib.parent}",
                        "-o", str(tmp_path / "main")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    batch = 3
    r = subprocess.run([str(tmp_path / "main"), str(art / "weights.safetensors"), str(batch)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = np.array([float(v) for v in r.stdout.split()], dtype=np.float32).reshape(batch, 5)
    i = np.arange(batch * 12)
    x = (((i * 37) % 101).astype(np.float32) / np.float32(50.0) - np.float32(1.0)).reshape(batch, 12)
    np.testing.assert_allclose(got, ember.load(art)(x), rtol=1e-6, atol=1e-7)
    # the per-kernel timing, as C sees it: the labels the Python profile shows, times, GEMM flops
    prof = [ln.split("|") for ln in r.stderr.splitlines()]
    assert [p[0] for p in prof] == [k.label for k in compiled.profile(x, runs=1).kernels]
    assert all(float(p[1]) > 0 for p in prof)
    assert [float(p[2]) for p in prof if " gemm " in p[0]] == [2 * batch * 24 * 12, 2 * batch * 5 * 24]
    # A weights file that does not belong to this header is refused, not misread.
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((art / "weights.safetensors").read_bytes()[:-4])
    r = subprocess.run([str(tmp_path / "main"), str(bad), "1"], capture_output=True, text=True)
    assert r.returncode == 1 and "cannot load" in r.stderr


def test_header_describes_inputs_and_outputs(tmp_path):
    compiled = ember.compile(model_graph())
    path = tmp_path / "m.ember"
    compiled.save(path)
    h = Path(path / "model.h").read_text()
    assert "/* input 0: x: f32[batch, 12] as float */" in h
    assert "/* output 0: y: f32[batch, 5] as float */" in h
    assert "int ember_main(const int64_t *dims" in h and "#define EMBER_NUM_INPUTS 1" in h
