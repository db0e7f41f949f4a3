"""FLOP counts of GEMM-like ops against hand counts (2 per multiply-add), symbolic sizes bound."""
import numpy as np

from ember.ir import Graph, TensorType, dtypes, sym
from ember.ir.cost import flops, node_flops

F32 = dtypes.f32


def test_linear_matmul_conv_attention():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("b"), 7, 64)))
    h = g.op("linear", [x, g.add_const(np.ones((48, 64), np.float32), "w")])          # [b, 7, 48]
    a = g.op("matmul", [h, g.add_const(np.ones((48, 5), np.float32), "m")])           # [b, 7, 5]
    img = g.add_input("img", TensorType(F32, (sym("b"), 6, 13, 13)))
    c = g.op("conv2d", [img, g.add_const(np.ones((4, 3, 3, 3), np.float32), "k")],
             {"stride": [2, 2], "padding": [1, 1], "dilation": [1, 1], "groups": 2})  # [b, 4, 7, 7]
    q = g.add_input("q", TensorType(F32, (sym("b"), 2, 9, 16)))
    kv = g.add_input("kv", TensorType(F32, (sym("b"), 2, 11, 16)))
    att = g.op("attention", [q, kv, kv], {"scale": 0.25})
    g.outputs = [a, c, att]
    env = {"b": 3}
    counts = [node_flops(n, env) for n in g.nodes]
    assert counts == [2 * 3 * 7 * 48 * 64, 2 * 3 * 7 * 5 * 48, 2 * 3 * 4 * 7 * 7 * 3 * 3 * 3,
                      2 * 3 * 2 * 9 * 11 * 16 * 2]
    assert flops(g, env) == sum(counts)


def test_elementwise_ops_cost_nothing():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (4, 4)))
    g.outputs = [g.op("relu", [g.op("add", [x, x])])]
    assert flops(g) == 0
