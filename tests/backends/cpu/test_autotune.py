"""The GEMM autotuner (backends/cpu/autotune.py): correct results, a per-machine cache, forced
tiles, and untouched C when it is off."""
import json

import numpy as np
import pytest

import ember
from ember.backends.cpu import autotune, gemm
from ember.ir import Graph, TensorType, dtypes, sym
from ember.lower.loop_ir import Matmul
from ember.testing import check_against_reference

F32 = dtypes.f32
rng = np.random.default_rng(4)


def rand(shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


@pytest.fixture(autouse=True)
def fast_tuner(monkeypatch, tmp_path):
    # a private cache, few candidates (KC 32 < K = 70: several K blocks), short timing;
    # MIN_GAIN 0: the fastest candidate wins even by noise, so non-default tiles get exercised
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "KC_CHOICES", (32, gemm.KC_PACKED))
    monkeypatch.setattr(autotune, "MC_CHOICES", (12, 96))
    monkeypatch.setattr(autotune, "REPS", 3)
    monkeypatch.setattr(autotune, "BUDGET_S", 0.005)
    monkeypatch.setattr(autotune, "MIN_GAIN", 0.0)


def linear_graph(n=33, k=70, bias=True):
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("m"), k)))
    args = [x, g.add_const(rand((n, k)), "w")] + ([g.add_const(rand((n,)), "b")] if bias else [])
    g.outputs = [g.op("linear", args)]
    return g


def test_tuned_model_matches_reference_and_logs():
    g = linear_graph()
    compiled = ember.compile(g, (rand((65, 70)),), opt_level=2, autotune=True)
    check_against_reference(g, [[rand((m, 70))] for m in (1, 7, 65)], rtol=1e-4, atol=2e-4,
                            compiled=compiled)
    (rec,) = compiled.autotune_log
    assert rec["shape"] == {"M": 128, "N": 33, "K": 70, "batch": 1} and not rec["cached"]
    assert len(rec["candidates"]) == 4 and all(c["ok"] and c["median_s"] > 0 for c in rec["candidates"])
    best = min(rec["candidates"], key=lambda c: c["median_s"])["tile"]
    assert rec["tile"] == (None if best == autotune.default_tile() else best)


def test_cache_written_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_AUTOTUNE", "1")  # the environment switch
    g = linear_graph()
    before = autotune.stats["bench_runs"]
    c1 = ember.compile(g, (rand((7, 70)),))
    assert autotune.stats["bench_runs"] == before + 1
    data = json.loads((tmp_path / autotune.CACHE_FILE).read_text())
    assert len(data) == 1 and "m=8 n=33 k=70" in next(iter(data))
    c2 = ember.compile(g, (rand((5, 70)),))   # same M bucket (8): no benchmark this time
    assert autotune.stats["bench_runs"] == before + 1
    assert c2.autotune_log[0]["cached"] and c2.autotune_log[0]["tile"] == c1.autotune_log[0]["tile"]
    assert c2.source == c1.source
    x = rand((7, 70))
    np.testing.assert_allclose(c2(x), c1(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tile", [{"kc": 32, "mc": 12}, {"kc": 16, "mc": 6}, {"kc": 64, "mc": 200},
                                  {"kc": 384, "mc": 48, "tasks": 2, "mc_min": 6}])
def test_forced_tile(tile, monkeypatch):
    from ember import api
    real = api.fuse_rows

    def force(prog, fusions):  # runs after lowering and epilogue fusion
        real(prog, fusions)
        for k in prog.kernels:
            if isinstance(k, Matmul):
                k.tile = dict(tile)
    monkeypatch.setattr(api, "fuse_rows", force)
    g = linear_graph(n=33, k=70)
    compiled = check_against_reference(g, [[rand((m, 70))] for m in (1, 7, 65, 130)], rtol=1e-4,
                                       atol=2e-4, opt_level=2)
    assert f"K > {tile['kc']}" in compiled.source


def test_default_c_unchanged():
    """No autotune, or a tile equal to nothing: the C is byte for byte what it was."""
    g = linear_graph()
    c0 = ember.compile(g, opt_level=2)
    assert c0.autotune_log is None
    assert f"K > {gemm.KC_PACKED} ?" in c0.source and f"M < {gemm.MC_PACKED} ?" in c0.source
    from ember.backends.cpu.codegen import c_dim
    from ember.lower.lowering import lower
    (k,) = [k for k in lower(g).kernels if isinstance(k, Matmul)]
    params = {k.a.buf: "A", k.b.buf: "B", k.out: "C"}

    def epi(ind, acc, i, j, idx):
        return [f"{ind}C[{idx}] = {acc};"]
    plain = gemm.print_matmul(k, params, c_dim, epi)
    k.tile = {}
    assert gemm.print_matmul(k, params, c_dim, epi) == plain
    k.tile = {"kc": gemm.KC_PACKED, "mc": gemm.MC_PACKED, "tasks": gemm.TASKS_WANTED, "mc_min": gemm.MC_MIN}
    assert gemm.print_matmul(k, params, c_dim, epi) == plain


def test_gemv_only_model_is_not_tuned():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (1, 70)))
    g.outputs = [g.op("linear", [x, g.add_const(rand((33, 70)), "w")])]
    before = autotune.stats["bench_runs"]
    c = ember.compile(g, autotune=True)
    assert c.autotune_log == [] and autotune.stats["bench_runs"] == before
