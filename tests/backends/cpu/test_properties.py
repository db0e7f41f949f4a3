"""Property tests: random broadcast shapes and random pointwise chains against the reference."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ember
from ember.ir import Graph, TensorType, dtypes, interpret, sym

OPS = ["add", "sub", "mul", "maximum", "minimum"]
UNARY = ["tanh", "relu", "neg", "sigmoid", "abs", "exp"]


def chain_graph(ops):
    """x[n, 5] through a fixed chain of binary (with y[5]) and unary ops; one graph per chain."""
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (sym("n"), 5)))
    y = g.add_input("y", TensorType(dtypes.f32, (5,)))
    v = x
    for op in ops:
        v = g.op(op, [v, y]) if op in OPS else g.op(op, [g.op("clamp", [v], {"min": -5.0, "max": 5.0})])
    g.outputs = [v, g.op("sum", [v], {"axes": (1,)})]
    return g


_compiled = {}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.sampled_from(OPS + UNARY), min_size=1, max_size=4).map(tuple),
       n=st.sampled_from([1, 3, 7, 127]), seed=st.integers(0, 2**31 - 1))
def test_random_pointwise_chains(ops, n, seed):
    g = chain_graph(ops)
    cm = _compiled.get(ops) or _compiled.setdefault(ops, ember.compile(g))
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    for got, want in zip(cm.run_numpy([x, y]), interpret(cm.graph, [x, y])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
