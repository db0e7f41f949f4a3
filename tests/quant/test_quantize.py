"""ember.compile(..., quantize=...): dynamic and static int8, skip lists, the accuracy guard,
the speed check, the report and the errors for bad requests."""
import warnings

import numpy as np
import pytest
import torch

import ember
import ember.quant
from ember.errors import CalibrationError, QuantizationError
from ember.quant import QuantizationWarning

torch.manual_seed(0)


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64),
                               torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()


X = torch.randn(16, 32)
CALIB = [torch.randn(16, 32) for _ in range(4)]


def cos_rows(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_dynamic_mlp_runs_int8_and_reports():
    m = mlp()
    q = ember.compile(m, (X,), dynamic={"input": {0: "batch"}}, quantize=ember.quant.dynamic(check_speed=False))
    ops = q.graph.stats()
    assert ops.get("quant_linear") == 3 and "linear" not in ops and ops.get("dynamic_quantize") == 3
    # 7-bit activation codes by default, so every layer takes the int8 GEMM's u8 x s8 route
    assert all(n.attrs["reduce_range"] for n in q.graph.nodes if n.op == "dynamic_quantize")
    assert q.source.count("int8 GEMM, route u7") == 3
    rep = q.quant_report
    assert rep.quantized and len(rep.int8_layers) == 3
    assert rep.int8_bytes < 0.35 * rep.fp32_bytes
    for lr in rep.layers:
        assert lr.cosine > 0.999 and lr.sqnr_db > 25 and lr.weight_scale[0] > 0
    assert rep.output_cosine > 0.999
    text = str(rep)
    assert "3/3 layers int8" in text and "MB" in text
    for n in (1, 5, 40):  # dynamic batch: one build serves all sizes
        x = torch.randn(n, 32)
        assert cos_rows(q(x.numpy()), m(x).detach().numpy()).min() > 0.999


def test_dynamic_string_and_per_tensor_i8():
    m = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantizationWarning)  # the speed verdict may go either way
        q = ember.compile(m, (X,), quantize="dynamic")
    assert q.quant_report.mode == "dynamic" and q.quant_report.fp32_ms is not None
    q = ember.compile(m, (X,), quantize=ember.quant.dynamic(per_row=False, activation_dtype="i8",
                                                             check_speed=False))
    assert cos_rows(q(X.numpy()), m(X).detach().numpy()).min() > 0.995
    assert "per tensor i8" in q.quant_report.layers[0].activation


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse", "entropy"])
def test_static_observers(observer):
    m = mlp()
    q = ember.compile(m, (X,), quantize=ember.quant.static(CALIB, observer=observer, check_speed=False))
    rep = q.quant_report
    assert rep.observer == observer and len(rep.int8_layers) == 3
    assert all(lr.act_scale > 0 and 0 <= lr.act_zero_point <= 255 for lr in rep.layers)
    assert q.graph.stats().get("quantize_linear") == 3
    assert cos_rows(q(X.numpy()), m(X).detach().numpy()).mean() > 0.995


def test_static_relu_input_gets_zero_point_zero():
    m = mlp()
    q = ember.compile(m, (X,), quantize=ember.quant.static(CALIB, check_speed=False))
    last = q.quant_report.layers[-1]   # its input is a ReLU output: [0, max] uses the whole u8 range
    assert last.act_zero_point == 0


def test_skip_lists():
    m = mlp()
    names = [lr.name for lr in ember.compile(m, (X,), quantize=ember.quant.dynamic(check_speed=False))
             .quant_report.layers]
    q = ember.compile(m, (X,), quantize=ember.quant.dynamic(skip_nodes=[names[0]], check_speed=False))
    st = {lr.name: (lr.status, lr.reason) for lr in q.quant_report.layers}
    assert st[names[0]] == ("fp32", "node name skipped") and st[names[1]][0] == "int8"
    assert q.graph.stats().get("linear") == 1
    with pytest.warns(QuantizationWarning, match="nothing to quantize"):
        q = ember.compile(m, (X,), quantize=ember.quant.dynamic(skip_ops=["linear"], check_speed=False))
    assert "quant_linear" not in q.graph.stats()
    assert all(lr.reason == "op type linear skipped" for lr in q.quant_report.layers)


def test_accuracy_guard_keeps_sensitive_layers_fp32():
    m = mlp()
    with torch.no_grad():  # make the middle layer's input badly conditioned for per-tensor u8
        m[0].weight[:4] *= 60.0
    cfg = {"activation_dtype": "u8", "check_speed": False}
    plain = ember.compile(m, (X,), quantize=ember.quant.static(CALIB, **cfg)).quant_report
    budget = (plain.output_cosine + 1.0) / 2  # between all-int8 and fp32: something must go back
    q = ember.compile(m, (X,), quantize=ember.quant.static(CALIB, min_cosine=budget, **cfg))
    rep = q.quant_report
    assert rep.output_cosine >= budget and rep.budget == budget
    back = [lr for lr in rep.layers if lr.status == "fp32"]
    assert back and all("accuracy guard" in lr.reason and lr.sensitivity is not None for lr in back)
    assert any("accuracy guard" in n for n in rep.notes)
    assert q.graph.stats().get("linear") == len(back)


def test_guard_that_cannot_be_met_compiles_fp32():
    with pytest.warns(QuantizationWarning, match="budget"):
        q = ember.compile(mlp(), (X,), quantize=ember.quant.static(CALIB, min_cosine=1.0, check_speed=False))
    assert not q.quant_report.quantized and "quant_linear" not in q.graph.stats()


def test_slower_int8_is_refused_unless_forced(monkeypatch):
    import ember.timing

    def fake_measure(contenders, **kw):
        for fn in contenders.values():
            fn()
        return {"fp32": {"median": 1e-3}, "int8": {"median": 2e-3}}
    monkeypatch.setattr(ember.timing, "measure", fake_measure)
    m = mlp()
    with pytest.warns(QuantizationWarning, match="slower than fp32.*compiling in fp32"):
        q = ember.compile(m, (X,), quantize="dynamic")
    rep = q.quant_report
    assert not rep.quantized and rep.int8_ms == 2.0 and "linear" in q.graph.stats()
    assert all(lr.status == "fp32" and "slower" in lr.reason for lr in rep.layers)
    with pytest.warns(QuantizationWarning, match="keeping int8 because force=True"):
        q = ember.compile(m, (X,), quantize=ember.quant.dynamic(force=True))
    assert q.quant_report.quantized and "quant_linear" in q.graph.stats()


def test_calibration_errors():
    m = mlp()
    with pytest.raises(CalibrationError, match="empty"):
        ember.quant.static([])
    with pytest.raises(CalibrationError, match="needs calibration"):
        ember.quant.static(None)
    with pytest.raises(CalibrationError, match="batch 1: input 'input' has shape"):
        ember.compile(m, (X,), quantize=ember.quant.static([torch.randn(16, 32), torch.randn(16, 31, 2)]))
    with pytest.raises(CalibrationError, match=r"batch 0: .*expected shape"):
        ember.compile(m, (X,), quantize=ember.quant.static([torch.randn(16, 31)]))
    with pytest.raises(CalibrationError, match="2 input"):
        ember.compile(m, (X,), quantize=ember.quant.static([(torch.randn(16, 32), torch.randn(16, 32))]))
    with pytest.raises(CalibrationError, match="missing input"):
        ember.compile(m, (X,), quantize=ember.quant.static([{"x": torch.randn(4, 32)}]))
    with pytest.raises(CalibrationError, match="quantize='static' needs calibration data"):
        ember.compile(m, (X,), quantize="static")
    assert issubclass(CalibrationError, ember.EmberError)


def test_bad_options():
    with pytest.raises(QuantizationError, match="unknown observer"):
        ember.quant.static(CALIB, observer="histogram")
    with pytest.raises(QuantizationError, match="cannot quantize op"):
        ember.quant.dynamic(ops=["softmax"])
    with pytest.raises(QuantizationError, match="min_cosine"):
        ember.quant.dynamic(min_cosine=1.5)
    with pytest.raises(QuantizationError, match="quantize must be"):
        ember.compile(mlp(), (X,), quantize="int4")
    with pytest.raises(QuantizationError, match="needs data"):
        ember.compile(torch.nn.Linear(4, 4), (torch.randn(2, 4),),
                      quantize=ember.quant.dynamic(min_cosine=0.9, eval_data=[]))


def test_nothing_to_quantize_warns():
    m = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Softmax(-1)).eval()
    with pytest.warns(QuantizationWarning, match="nothing to quantize.*no linear"):
        q = ember.compile(m, (X,), quantize="dynamic")
    assert not q.quant_report.quantized and q.quant_report.layers == []
    np.testing.assert_allclose(q(X.numpy()), m(X).numpy(), rtol=1e-5, atol=1e-6)


def test_matmul_with_weight_and_artifact_roundtrip(tmp_path):
    class MM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(32, 24))

        def forward(self, x):
            return torch.relu(x @ self.w) @ self.w.T[:, :8]
    m = MM().eval()
    q = ember.compile(m, (X,), quantize=ember.quant.dynamic(check_speed=False))
    assert q.graph.stats().get("quant_linear") == 2
    want = m(X).detach().numpy()
    assert cos_rows(q(X.numpy()), want).min() > 0.999
    q.save(tmp_path / "m.ember")
    loaded = ember.load(tmp_path / "m.ember")
    np.testing.assert_array_equal(loaded(X.numpy()), q(X.numpy()))
