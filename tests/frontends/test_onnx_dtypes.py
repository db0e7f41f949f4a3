"""ONNX element types beyond the node suite's cases: bf16 constants and initializers keep
their type (ml_dtypes.bfloat16 arrays), and u64 values above 2**63 survive import and C."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ml_dtypes = pytest.importorskip("ml_dtypes")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import ember  # noqa: E402

BF16 = ml_dtypes.bfloat16


def _model(nodes, x_type, inits=()):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", x_type, [3])],
                          [helper.make_tensor_value_info("y", x_type, [3])], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_bf16_constant_and_initializer_stay_bf16():
    c = numpy_helper.from_array(np.array([1.5, 2.0, -3.0], BF16), "cv")
    w = numpy_helper.from_array(np.array([0.25, 0.5, 1.0], BF16), "w")
    m = _model([helper.make_node("Constant", [], ["c"], value=c), helper.make_node("Add", ["x", "c"], ["s"]),
                helper.make_node("Mul", ["s", "w"], ["y"])], TensorProto.BFLOAT16, [w])
    got = ember.compile(m)(np.ones(3, BF16))
    assert got.dtype == np.dtype(BF16)
    np.testing.assert_array_equal(got.astype(np.float32), [0.625, 1.5, -2.0])


def test_u64_above_int64_range():
    big = np.array([2**64 - 1, 2**63, 5], np.uint64)
    w = numpy_helper.from_array(np.array([2**63 + 7, 1, 2], np.uint64), "w")
    m = _model([helper.make_node("Max", ["x", "w"], ["m"]), helper.make_node("Div", ["m", "x"], ["y"])],
               TensorProto.UINT64, [w])
    got = ember.compile(m)(big)
    np.testing.assert_array_equal(got, np.maximum(big, np.array([2**63 + 7, 1, 2], np.uint64)) // big)
