import os
import threading

import numpy as np
import pytest

import ember
from ember.backends.cpu import toolchain
from ember.errors import CompilerNotFoundError, DTypeError, EmberError, InputError
from ember.ir import Graph, TensorType, dtypes, interpret, sym

F32 = dtypes.f32


def mlp_graph(seed=0):
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("batch"), 16)))
    h = g.op("relu", [g.op("linear", [x, g.add_const(rng.standard_normal((32, 16)).astype(np.float32), "w1"),
                                      g.add_const(rng.standard_normal(32).astype(np.float32), "b1")])])
    g.outputs = [g.op("linear", [h, g.add_const(rng.standard_normal((8, 32)).astype(np.float32), "w2")])]
    return g


def test_eight_threads_share_one_model():
    g = mlp_graph()
    cm = ember.compile(g)
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((n, 16)).astype(np.float32) for n in (1, 3, 7, 64, 5, 2, 127, 9)]
    want = [interpret(g, [x])[0] for x in inputs]
    errors = []

    def worker(k):
        try:
            for _ in range(50):
                np.testing.assert_allclose(cm(inputs[k]), want[k], rtol=1e-5, atol=1e-5)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_one_compilation_serves_every_batch_size():
    g = mlp_graph(3)
    before = toolchain.stats["compiles"] + toolchain.stats["cache_hits"]
    cm = ember.compile(g)
    assert toolchain.stats["compiles"] + toolchain.stats["cache_hits"] == before + 1
    for n in (1, 3, 17, 64, 511):
        x = np.random.default_rng(n).standard_normal((n, 16)).astype(np.float32)
        np.testing.assert_allclose(cm(x), interpret(g, [x])[0], rtol=1e-5, atol=1e-5)
    assert toolchain.stats["compiles"] + toolchain.stats["cache_hits"] == before + 1


def test_bad_inputs_get_clear_errors():
    cm = ember.compile(mlp_graph())
    with pytest.raises(InputError, match=r"input 'x': dim 1 must be 16, got 5"):
        cm(np.zeros((2, 5), np.float32))
    with pytest.raises(InputError, match="expected rank 2"):
        cm(np.zeros((16,), np.float32))
    with pytest.raises(DTypeError, match=r"input 'x': expected dtype f32 .*got float64"):
        cm(np.zeros((2, 16)))
    with pytest.raises(InputError, match="takes 1 inputs"):
        cm.run_numpy([np.zeros((2, 16), np.float32)] * 2)
    with pytest.raises(InputError, match="unknown input 'y'"):
        cm(y=np.zeros((2, 16), np.float32))
    for err in (InputError, DTypeError, CompilerNotFoundError):
        assert issubclass(err, EmberError)


def test_inconsistent_symbolic_dims_are_named():
    g = Graph()
    n = sym("n")
    a, b = g.add_input("a", TensorType(F32, (n,))), g.add_input("b", TensorType(F32, (n,)))
    g.outputs = [g.op("add", [a, b])]
    cm = ember.compile(g)
    with pytest.raises(InputError, match=r"input 'b' dim 0 \(n\) is 4, but n is 3"):
        cm(np.zeros(3, np.float32), np.zeros(4, np.float32))


def test_symbol_ranges_are_enforced():
    g = mlp_graph()
    g.sym_ranges["batch"] = (1, 8)
    cm = ember.compile(g)
    cm(np.zeros((8, 16), np.float32))
    with pytest.raises(InputError, match=r"input .x. dim 0 \(batch\) is 9, outside the compiled range \[1, 8\]"):
        cm(np.zeros((9, 16), np.float32))


def test_missing_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))      # a PATH with no compiler on it
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(CompilerNotFoundError, match="no C compiler found.*install gcc"):
        ember.compile(mlp_graph(7))


def test_cache_is_keyed_and_atomic(monkeypatch, tmp_path):
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path))
    c0 = toolchain.stats["compiles"]
    ember.compile(mlp_graph(11))
    assert toolchain.stats["compiles"] == c0 + 1
    hits = toolchain.stats["cache_hits"]
    ember.compile(mlp_graph(11))          # same code (weights are arguments, not code)
    assert toolchain.stats["cache_hits"] == hits + 1 and toolchain.stats["compiles"] == c0 + 1
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".so" for p in files) and any(p.suffix == ".c" for p in files)
    assert not [p for p in files if p.name.startswith(".tmp-")]
    # what the generated code means is in the key: another model is another entry
    g = mlp_graph(11)
    g.outputs = [g.op("tanh", [g.outputs[0]])]
    ember.compile(g)
    assert toolchain.stats["compiles"] == c0 + 2


def test_weights_are_not_copied_per_call():
    cm = ember.compile(mlp_graph())
    ptrs = [c.ctypes.data for c in cm.native.consts]
    cm(np.ones((2, 16), np.float32))
    assert [c.ctypes.data for c in cm.native.consts] == ptrs


def test_generated_code_is_one_entry_point_with_omp():
    cm = ember.compile(mlp_graph())
    assert cm.source.count("int ember_main(") == 1
    assert "#pragma omp parallel" in cm.source and "ember_spin_join(&joined);" in cm.source
    assert os.path.exists(cm.native.lib_path)


def test_loading_a_model_keeps_denormals():
    # a library linked with -ffast-math would switch the whole process to flush-to-zero
    import subprocess
    import sys
    code = ("import numpy as np, ember\n"
            "from ember.ir import Graph, TensorType, dtypes, sym\n"
            "g = Graph(); x = g.add_input('x', TensorType(dtypes.f32, (sym('n'),)))\n"
            "g.outputs = [g.op('exp', [x])]\n"
            "cm = ember.compile(g); cm(np.zeros(3, np.float32))\n"
            "print(np.float64(5e-320) * 1.0 > 0, np.float32(1e-40) * np.float32(1.0) > 0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_a_program_builds_as_one_translation_unit_or_one_per_core(cores, monkeypatch, tmp_path):
    # toolchain.build deals the kernels out to one translation unit per core (compiled in
    # parallel, kernels hidden rather than static); any split gives the same results
    import re
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(toolchain, "_cores", lambda: cores)
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("batch"), 16)))
    w = np.random.default_rng(2).standard_normal((8, 16)).astype(np.float32)
    h = g.op("gelu", [g.op("linear", [x, g.add_const(w, "w")])])
    y = g.op("softmax", [h], {"axis": -1})
    g.outputs = [g.op("add", [y, g.op("mean", [x], {"axes": [-1], "keepdims": True})])]
    cm = ember.compile(g, opt_level=0)
    units = toolchain.split_units(cm.source, cores)
    assert cm.kernels >= 3 and len(units) == min(cores, cm.kernels)
    for k in range(cm.kernels):   # each kernel is defined in exactly one unit
        assert sum(len(re.findall(rf"^EMBER_KERNEL void kernel{k}\(.*\{{$", u, re.M)) for u in units) == 1
    xs = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_allclose(cm(xs), interpret(g, [xs])[0], rtol=1e-5, atol=1e-5)


def test_generated_code_the_compiler_rejects_is_a_clear_error_and_kept(monkeypatch, tmp_path):
    # one of two translation units fails: the error names the kept source, gcc's message
    # follows, and nothing broken lands in the cache
    from ember.backends.cpu.codegen import UNIT
    from ember.errors import CompileError
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(toolchain, "_cores", lambda: 2)
    source = f"#define EMBER_OK 1\n{UNIT}\nint fine(void) {{ return 1; }}\n{UNIT}\nint broken(void) {{ return }}\n{UNIT}\n"
    assert len(toolchain.split_units(source, 2)) == 2
    with pytest.raises(CompileError, match=r"rejected generated code.*\.failed\.c(.|\n)*error"):
        toolchain.build(source)
    assert list(tmp_path.glob("*/*.failed.c")) and not list(tmp_path.glob("*/*.so"))
