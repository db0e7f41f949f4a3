"""The pass manager: levels, dumps, timing, verify mode; the -O2 pipeline on random graphs."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ember
from ember.errors import VerificationError
from ember.ir import Graph, TensorType, dtypes, interpret, sym
from ember.passes import PassManager, default_pipeline
from ember.passes.manager import random_inputs


def small_graph():
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (sym("n"), 4)))
    two = g.add_const(np.array([2.0], np.float32), "two")
    y = g.op("div", [g.op("tanh", [x]), two])
    g.outputs = [g.op("add", [y, g.op("mul", [x, g.add_const(np.ones(4, np.float32), "one")])])]
    return g


def test_levels_dumps_and_timing():
    pm = default_pipeline(2, dump_after=["simplify"])
    g = pm.run(small_graph())
    assert "simplify" in pm.dumps and "div" not in pm.dumps["simplify"]
    assert [r.name for r in pm.records][:2] == ["fold_constants", "simplify"]
    assert all(r.seconds >= 0 for r in pm.records)
    assert any("div-const" in line for r in pm.records for line in r.rewrites)
    assert "nodes" in pm.report()
    assert default_pipeline(0).passes == []
    assert len(g.nodes) == 3


def test_verify_mode_names_the_pass_that_breaks_results():
    def broken(g):  # a "pass" that swaps tanh for sigmoid
        for n in g.nodes:
            if n.op == "tanh":
                n.op = "sigmoid"
        return g
    pm = PassManager([("fine", lambda g: g), ("broken", broken)], verify=True)
    with pytest.raises(VerificationError, match="pass 'broken' changed output 0"):
        pm.run(small_graph())


def test_verify_mode_from_environment(monkeypatch):
    monkeypatch.setenv("EMBER_VERIFY", "1")
    pm = default_pipeline(2)
    pm.run(small_graph())
    assert all(r.max_error is not None and r.max_error < 1e-5 for r in pm.records)


def test_compile_levels_agree():
    g = small_graph()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    want = interpret(g, [x])[0]
    for level in (0, 1, 2):
        np.testing.assert_allclose(ember.compile(g, opt_level=level, verify=True)(x), want, rtol=1e-6, atol=1e-6)


# -- property: random graphs from registered ops keep their meaning through -O2

UNARY = ["neg", "tanh", "relu", "sigmoid", "exp", "abs", "silu", "gelu"]
BINARY = ["add", "sub", "mul", "maximum", "minimum"]


@st.composite
def random_graphs(draw):
    g = Graph()
    n = sym("n")
    vals = [g.add_input("x", TensorType(dtypes.f32, (n, 6))), g.add_input("y", TensorType(dtypes.f32, (n, 6)))]
    for _ in range(draw(st.integers(2, 10))):
        kind = draw(st.sampled_from(["u", "b", "c", "r", "s", "v"]))
        a = draw(st.sampled_from(vals))
        if kind == "u":
            v = g.op(draw(st.sampled_from(UNARY)), [g.op("clamp", [a], {"min": -4.0, "max": 4.0})])
        elif kind == "b":
            v = g.op(draw(st.sampled_from(BINARY)), [a, draw(st.sampled_from(vals))])
        elif kind == "c":
            c = draw(st.sampled_from([0.0, 1.0, 2.0, 0.5]))
            v = g.op(draw(st.sampled_from(["add", "mul", "div", "sub"])),
                     [a, g.add_const(np.full((6,), c if c else 1.0, np.float32))])
        elif kind == "r":
            v = g.op("mean", [a], {"axes": (1,), "keepdims": True})
            v = g.op("sub", [a, v])
        elif kind == "s":
            v = g.op("softmax", [a], {"axis": 1})
        else:
            v = g.op("reshape", [g.op("permute", [g.op("reshape", [a], {"shape": (n, 2, 3)})],
                                      {"perm": (0, 2, 1)})], {"shape": (n, 6)})
        vals.append(v)
    g.outputs = [vals[-1], vals[len(vals) // 2]]
    return g


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=random_graphs())
def test_o2_pipeline_preserves_random_graphs(g):
    inputs = random_inputs(g, size=5)
    want = interpret(g, inputs)
    pm = default_pipeline(2, verify=True, example_inputs=inputs)
    out = pm.run(g.clone())
    for w, o in zip(want, interpret(out, inputs)):
        np.testing.assert_allclose(o, w, rtol=1e-4, atol=1e-5)
