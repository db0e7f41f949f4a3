import numpy as np
import pytest

from ember.errors import IRError, ParseError, ShapeError
from ember.ir import Graph, TensorType, dtypes, interpret, parse, print_graph, sym, verify
from ember.ir.graph import Node, Value

F32 = dtypes.f32


def small_graph():
    g = Graph()
    b = sym("batch")
    x = g.add_input("x", TensorType(F32, (b, 10)))
    w = g.add_const(np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32), "w")
    bias = g.add_const(np.arange(4, dtype=np.float32), "bias")
    y = g.op("linear", [x, w, bias], source='model.py:3 in forward: y = "fc"(x)')
    y = g.op("gelu", [y], {"approximate": "tanh"})
    r = g.op("reshape", [y], {"shape": (b * 2, 2)})
    s = g.op("softmax", [r], {"axis": -1})
    m = g.op("clamp", [s], {"min": None, "max": 0.75})
    c = g.op("cast", [m], {"dtype": dtypes.f64})
    g.outputs = [s, c]
    return g


def test_print_parse_round_trip():
    g = small_graph()
    text = print_graph(g)
    g2 = parse(text, {"w": g.constants[0].data})
    assert print_graph(g2) == text
    assert print_graph(parse(print_graph(g2), {"w": g.constants[0].data})) == text
    x = np.ones((3, 10), np.float32)
    for a, b in zip(interpret(g, [x]), interpret(g2, [x])):
        np.testing.assert_array_equal(a, b)


def test_text_form_reads_like_the_design():
    text = print_graph(small_graph())
    assert text.splitlines()[0] == "graph main(%x: f32[batch, 10]) -> (f32[2*batch, 2], f64[2*batch, 2]) {"
    assert "%bias = const [0.0, 1.0, 2.0, 3.0] : f32[4]" in text
    assert 'gelu(%0) {approximate="tanh"} : f32[batch, 4]' in text


def test_shape_inference_with_symbols():
    g = Graph()
    b, s = sym("b"), sym("s")
    x = g.add_input("x", TensorType(F32, (b, s, 12)))
    y = g.op("reshape", [x], {"shape": (b, s, 3, 4)})
    z = g.op("permute", [y], {"perm": (0, 2, 1, 3)})
    m = g.op("matmul", [z, g.op("permute", [z], {"perm": (0, 1, 3, 2)})])
    assert m.shape == (b, 3, s, s)
    c = g.op("concat", [x, x], {"axis": 1})
    assert c.shape == (b, 2 * s, 12)
    sl = g.op("slice", [c], {"axis": 1, "start": 1, "end": 2 * s, "step": 2})
    assert sl.shape[1] == s  # (2s - 1 + 1) // 2
    with pytest.raises(ShapeError, match="element counts differ"):
        g.op("reshape", [x], {"shape": (b, 12)})
    with pytest.raises(ShapeError, match="do not broadcast"):
        g.op("add", [x, g.add_input("y", TensorType(F32, (b, 5, 12)))])


def test_verifier_names_the_node():
    g = small_graph()
    g.nodes[1].outputs[0].type = TensorType(F32, (3, 3))
    with pytest.raises(IRError, match=r"node gelu.*typed f32\[3, 3\] but the op infers f32\[batch, 4\]"):
        verify(g)


def test_verifier_catches_order_and_dangling():
    g = small_graph()
    g.nodes[0], g.nodes[1] = g.nodes[1], g.nodes[0]
    with pytest.raises(IRError, match="not defined before use"):
        verify(g)
    g = small_graph()
    ghost = Value("ghost", TensorType(F32, (4,)))
    g.nodes.append(Node("relu", [ghost], {}, [Value("r", TensorType(F32, (4,)))], name="relu_x"))
    g.nodes[-1].outputs[0].producer = g.nodes[-1]
    with pytest.raises(IRError, match="node relu_x.*%ghost is not defined"):
        verify(g)


def test_verifier_catches_ssa_violation():
    g = small_graph()
    g.nodes[2].outputs = g.nodes[1].outputs
    with pytest.raises(IRError, match="defined twice|does not point back"):
        verify(g)


def test_parse_errors_name_the_line():
    with pytest.raises(ParseError, match="line 2"):
        parse("graph g(%x: f32[3]) -> (f32[3]) {\n  %1 = relu(%nope) : f32[3]\n  return %1\n}")
    with pytest.raises(ParseError, match="line 2.*infers"):
        parse("graph g(%x: f32[3]) -> (f32[3]) {\n  %1 = relu(%x) : f32[4]\n  return %1\n}")
    with pytest.raises(ParseError, match="unknown op"):
        parse("graph g(%x: f32[3]) -> (f32[3]) {\n  %1 = frobnicate(%x) : f32[3]\n  return %1\n}")


def test_every_op_has_reference_and_inference():
    from ember.ir.ops import all_ops
    ops = all_ops()
    assert len(ops) > 60
    for name, op in ops.items():
        assert callable(op.infer) and callable(op.ref), name
