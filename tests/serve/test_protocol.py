"""The v2 wire format and the batching helpers, without a server."""
import json

import numpy as np
import pytest

from ember.runtime.executable import TensorSpec
from ember.serve import protocol
from ember.serve.batching import batch_symbol, run_batch
from ember.serve.protocol import RequestError, encode_infer, parse_infer


def test_json_and_binary_inputs_decode_alike():
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    body = json.dumps({"inputs": [{"name": "ids", "shape": [2, 3], "datatype": "INT64",
                                   "data": x.tolist()}]}).encode()
    np.testing.assert_array_equal(parse_infer(body).inputs["ids"], x)
    head = json.dumps({"inputs": [{"name": "ids", "shape": [2, 3], "datatype": "INT64",
                                   "parameters": {"binary_data_size": 48}}],
                       "parameters": {"binary_data_output": True}}).encode()
    req = parse_infer(head + x.tobytes(), len(head))
    np.testing.assert_array_equal(req.inputs["ids"], x)
    assert req.binary_outputs == {"*"}


@pytest.mark.parametrize("entry,message", [
    ({"name": "a", "shape": [2], "datatype": "INT32", "data": [1.5, 2]}, "float64 values"),
    ({"name": "a", "shape": [2], "datatype": "INT8", "data": [1, 300]}, "out of range for INT8"),
    ({"name": "a", "shape": [2], "datatype": "BOOL", "data": [1, 0]}, "BOOL cannot take"),
    ({"name": "a", "shape": [2], "datatype": "FP32", "data": [[1], [2, 3]]}, "not a regular array"),
    ({"name": "a", "shape": [2], "datatype": "FP32"}, "no \"data\""),
    ({"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}},
     "does not match shape"),
])
def test_bad_tensors_name_the_input(entry, message):
    with pytest.raises(RequestError, match=message) as e:
        parse_infer(json.dumps({"inputs": [entry]}).encode())
    assert "'a'" in str(e.value) and e.value.status == 400


def test_binary_lengths_must_add_up():
    head = json.dumps({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 4}}]}).encode()
    with pytest.raises(RequestError, match="belong to no input"):
        parse_infer(head + b"\0" * 8, len(head))
    with pytest.raises(RequestError, match="ends early"):
        parse_infer(head + b"\0" * 2, len(head))
    with pytest.raises(RequestError, match="exceeds the body"):
        parse_infer(head, len(head) + 1)


def test_encode_json_and_binary():
    y = np.array([[1.5, -2.0]], np.float32)
    body, headers = encode_infer("m", protocol.InferRequest({}, id="7"), [("y", y)])
    assert json.loads(body) == {"model_name": "m", "model_version": "1", "id": "7", "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2.0]}]}
    body, headers = encode_infer("m", protocol.InferRequest({}, binary_outputs={"y"}), [("y", y)])
    n = int(headers[protocol.HEADER_LENGTH])
    assert np.frombuffer(body[n:], "<f4").tolist() == [1.5, -2.0]


def test_batch_symbol_and_run_batch():
    spec = lambda *shape: TensorSpec("t", "f32", list(shape))  # noqa: E731
    assert batch_symbol([spec("batch", 8)], [spec("batch", 4)], {"batch": (1, 64)}) == ("batch", 64)
    assert batch_symbol([spec("batch", 8)], [spec(4)]) == (None, None)
    assert batch_symbol([spec("n", "n")], [spec("n")]) == (None, None)

    class Double:
        def run_numpy(self, arrays):
            return [arrays[0] * 2, arrays[0].sum(1)]
    outs = run_batch(Double(), [[np.ones((1, 3))], [np.full((2, 3), 2.0)]])
    assert [o[0].shape for o in outs] == [(1, 3), (2, 3)]
    assert outs[1][1].tolist() == [6.0, 6.0]
