"""The ops of ember/ir/ops/extra.py compiled to C against their numpy reference, at odd and
symbolic sizes (one compilation serves every size)."""
import numpy as np
import pytest

from ember.errors import DTypeError, IRError
from ember.ir import Graph, TensorType, dtypes, sym
from ember.testing import check_against_reference

rng = np.random.default_rng(0)
N = sym("n")
SIZES = [1, 3, 7, 127]
INTS = [(dtypes.i8, np.int8), (dtypes.u8, np.uint8), (dtypes.i16, np.int16),
        (dtypes.i32, np.int32), (dtypes.i64, np.int64)]


def full_range(shape, np_dt):
    info = np.iinfo(np_dt)
    v = rng.integers(info.min, info.max, size=shape, dtype=np_dt, endpoint=True)
    v.reshape(-1)[:2] = [info.min, info.max][:v.size]  # the extremes, where signs bite
    return v


def graph_of(op, types, attrs):
    g = Graph()
    ins = [g.add_input(f"x{k}", t) for k, t in enumerate(types)]
    g.outputs = [g.op(op, ins, attrs)]
    return g


@pytest.mark.parametrize("dt,np_dt", INTS)
@pytest.mark.parametrize("op", ["and", "or", "xor"])
def test_bitwise_binary_broadcast(op, dt, np_dt):
    g = graph_of("bitwise", [TensorType(dt, (N, 5)), TensorType(dt, (5,))], {"op": op})
    check_against_reference(g, [[full_range((n, 5), np_dt), full_range((5,), np_dt)] for n in SIZES])


@pytest.mark.parametrize("dt,np_dt", INTS)
def test_bitwise_not(dt, np_dt):
    g = graph_of("bitwise", [TensorType(dt, (N,))], {"op": "not"})
    check_against_reference(g, [[full_range((n,), np_dt)] for n in SIZES])


@pytest.mark.parametrize("dt,np_dt", INTS)
@pytest.mark.parametrize("op", ["shl", "shr"])
def test_shifts_with_counts_out_of_range(op, dt, np_dt):
    width = np.dtype(np_dt).itemsize * 8
    g = graph_of("bitwise", [TensorType(dt, (N,)), TensorType(dt, (N,))], {"op": op})
    sets = []
    for n in SIZES:
        lo = -3 if np.dtype(np_dt).kind == "i" else 0
        counts = rng.integers(lo, width + 3, size=n).astype(np_dt)
        sets.append([full_range((n,), np_dt), counts])
    check_against_reference(g, sets)


def test_shift_reference_semantics():
    # ONNX BitShift: arithmetic right shift; counts outside [0, width) leave the sign fill
    from ember.ir.ops import get
    ref = get("bitwise").ref
    x = np.array([-8, 8, -1, 64], np.int8)
    assert ref([x, np.array([1, 1, 9, -1], np.int8)], {"op": "shr"}).tolist() == [-4, 4, -1, 0]
    assert ref([x, np.array([1, 8, 0, 1], np.int8)], {"op": "shl"}).tolist() == [-16, 0, -1, -128]


def test_bitwise_rejects_floats_and_bad_ops():
    with pytest.raises(DTypeError, match="integer"):
        graph_of("bitwise", [TensorType(dtypes.f32, (3,))] * 2, {"op": "and"})
    with pytest.raises(IRError, match="op must be"):
        graph_of("bitwise", [TensorType(dtypes.i32, (3,))] * 2, {"op": "nand"})
    with pytest.raises(IRError, match="takes 1"):
        graph_of("bitwise", [TensorType(dtypes.i32, (3,))] * 2, {"op": "not"})


def special_floats(n, np_dt):
    info = np.finfo(np_dt)
    with np.errstate(over="ignore"):
        v = (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)).astype(np_dt)
    v[v == 0] = 0.0  # underflow may have left -0.0
    # not -0.0 nor signed NaNs: the compiled form gives +0.0's bits and the quiet NaN (the
    # op's documented limits)
    edge = np.array([0.0, 1.0, -2.5, np.inf, -np.inf, np.nan, info.tiny, info.tiny / 8,
                     -info.tiny / 3, info.max, -info.max, info.smallest_subnormal], np_dt)
    v[:min(n, edge.size)] = edge[:n]
    return v


@pytest.mark.parametrize("src,dst,np_src", [
    (dtypes.f32, dtypes.i32, np.float32), (dtypes.f64, dtypes.i64, np.float64),
    (dtypes.f16, dtypes.i16, np.float16)])
def test_bitcast_float_to_int_and_back(src, dst, np_src):
    g = graph_of("bitcast", [TensorType(src, (N,))], {"dtype": dst})
    check_against_reference(g, [[special_floats(n, np_src)] for n in (1, 3, 13, 127)])
    back = graph_of("bitcast", [TensorType(dst, (N,))], {"dtype": src})
    bits = [special_floats(n, np_src).view(dst.np) for n in (1, 3, 13, 127)]
    bits.append(np.array([-1, 1], dst.np))  # a negative pattern with zero exponent: -subnormal
    check_against_reference(back, [[b] for b in bits])


def test_bitcast_integers_wrap():
    g = graph_of("bitcast", [TensorType(dtypes.i8, (N,))], {"dtype": dtypes.u8})
    check_against_reference(g, [[full_range((n,), np.int8)] for n in SIZES])
    g = graph_of("bitcast", [TensorType(dtypes.u8, (N,))], {"dtype": dtypes.i8})
    check_against_reference(g, [[full_range((n,), np.uint8)] for n in SIZES])


def test_bitcast_needs_equal_widths():
    with pytest.raises(DTypeError, match="width"):
        graph_of("bitcast", [TensorType(dtypes.f32, (3,))], {"dtype": dtypes.i64})


def test_extra_ops_round_trip_through_text():
    from ember.ir import parse, print_graph
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (N, 3)))
    y = g.add_input("y", TensorType(dtypes.i32, (3,)))
    g.outputs = [g.op("bitwise", [g.op("bitcast", [x], {"dtype": dtypes.i32}), y], {"op": "xor"})]
    text = print_graph(g)
    assert 'bitwise(%0, %y) {op="xor"}' in text
    assert print_graph(parse(text)) == text
