"""The saved artifact: round trip, integrity, CPU features, versions, rebuild, no torch."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import numpy as np
import pytest

import ember
from ember.errors import ArtifactError
from ember.ir import Graph, TensorType, dtypes, interpret, sym
from ember.runtime import artifact, safetensors_io

REPO = Path(__file__).resolve().parents[2]
F32 = dtypes.f32


def mlp_graph(seed=0, out=8):
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.add_input("x", TensorType(F32, (sym("batch"), 16)))
    w1 = g.add_const(rng.standard_normal((32, 16)).astype(np.float32), "w1")
    b1 = g.add_const(rng.standard_normal(32).astype(np.float32), "b1")
    h = g.op("gelu", [g.op("linear", [x, w1, b1])])
    g.outputs = [g.op("linear", [h, g.add_const(rng.standard_normal((out, 32)).astype(np.float32), "w2")])]
    g.output_names = ["y"]
    g.sym_ranges = {"batch": (1, 256)}
    return g


@pytest.fixture(scope="module")
def compiled():
    return ember.compile(mlp_graph())


@pytest.fixture
def saved(compiled, tmp_path):
    return compiled.save(tmp_path / "mlp.ember") or tmp_path / "mlp.ember"


def x_of(n, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def edit_manifest(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_round_trip_gives_identical_outputs(compiled, saved):
    loaded = ember.load(saved)
    for n in (1, 5, 256):
        np.testing.assert_array_equal(loaded(x_of(n)), compiled(x_of(n)))
    assert loaded.input_names == ["x"] and loaded.output_names == ["y"]
    with pytest.raises(ember.InputError, match="outside the compiled range"):
        loaded(x_of(257))


def test_manifest_describes_everything(saved):
    m = artifact.read_manifest(saved)
    assert m["ember_version"] == ember.__version__
    assert m["inputs"] == [{"name": "x", "dtype": "f32", "shape": ["batch", 16]}]
    assert m["outputs"] == [{"name": "y", "dtype": "f32", "shape": ["batch", 8]}]
    assert m["dims"] == {"batch": [1, 256]}
    assert m["target"]["march"] == "native" and isinstance(m["target"]["features"], list)
    names = {p.name for p in saved.iterdir()}
    assert names == {"manifest.json", "model.so", "weights.safetensors", "model.ir", "model.c", "model.h"}
    assert set(m["files"]) == names - {"manifest.json"}
    for name, info in m["files"].items():
        assert len(info["sha256"]) == 64 and info["size"] == (saved / name).stat().st_size
    assert "linear(%x, %w1, %b1)" in (saved / "model.ir").read_text()


def test_each_weight_is_stored_once(compiled, saved, tmp_path):
    """Packed GEMM weights are stored once: the IR's copies are recomputed at load, bit for
    bit, and constants the library never reads are not stored at all."""
    m = artifact.read_manifest(saved)
    weights = sum(c.data.nbytes for c in compiled.graph.constants)
    size = (saved / "weights.safetensors").stat().st_size
    assert weights <= size < weights * 1.2 + 4096   # packing pads N to 16 columns, nothing more
    assert set(m["derived"]) >= {"w1", "w2"}
    assert any(c["tensor"] is None for c in m["consts"])
    loaded = ember.load(saved)
    for a, b in zip(compiled.graph.constants, loaded.graph.constants):
        assert a.name == b.name and a.data.dtype == b.data.dtype and np.array_equal(a.data, b.data)
    x = np.random.default_rng(2).standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_array_equal(ember.load(saved, rebuild=True)(x), compiled(x))
    artifact.save_model(compiled, tmp_path / "noir.ember", include_ir=False)
    assert (tmp_path / "noir.ember" / "weights.safetensors").stat().st_size <= size
    np.testing.assert_array_equal(ember.load(tmp_path / "noir.ember")(x), compiled(x))


def test_no_pickle_in_the_format(saved):
    for f in saved.iterdir():
        data = f.read_bytes()
        assert not data.startswith(b"\x80"), f"{f.name} looks like a pickle"
    src = "".join(p.read_text() for p in (REPO / "ember" / "runtime").glob("*.py"))
    assert "import pickle" not in src and "np.load(" not in src


@pytest.mark.parametrize("name", ["model.so", "weights.safetensors", "model.ir", "model.h"])
def test_a_changed_byte_is_refused(saved, name):
    f = saved / name
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{name} was changed or corrupted"):
        ember.load(saved)
    if name == "model.so":  # the library alone can be rebuilt from the IR
        np.testing.assert_allclose(ember.load(saved, rebuild=True)(x_of(3)),
                                   interpret(mlp_graph(), [x_of(3)])[0], rtol=1e-5, atol=1e-5)
    else:
        with pytest.raises(ArtifactError, match="changed or corrupted"):
            ember.load(saved, rebuild=True)


def test_missing_cpu_features_are_refused_then_rebuilt(compiled, saved):
    edit_manifest(saved, lambda m: m["target"]["features"].extend(["avx9000", "amx_fp64"]))
    with pytest.raises(ArtifactError, match=r"CPU with avx9000, amx_fp64 .*rebuild=True"):
        ember.load(saved)
    np.testing.assert_allclose(ember.load(saved, rebuild=True)(x_of(4)), compiled(x_of(4)),
                               rtol=1e-6, atol=1e-6)


def test_other_ember_version_is_refused_then_rebuilt(compiled, saved):
    edit_manifest(saved, lambda m: m.update(ember_version="0.0.1"))
    with pytest.raises(ArtifactError, match=r"built by Ember 0\.0\.1.*rebuild=True"):
        ember.load(saved)
    np.testing.assert_allclose(ember.load(saved, rebuild=True)(x_of(2)), compiled(x_of(2)),
                               rtol=1e-6, atol=1e-6)


def test_newer_format_and_junk_are_clear_errors(saved, tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        ember.load(tmp_path / "nope.ember")
    (tmp_path / "file.ember").write_text("hello")
    with pytest.raises(ArtifactError, match="not an Ember artifact"):
        ember.load(tmp_path / "file.ember")
    manifest = (saved / "manifest.json").read_text()
    (saved / "manifest.json").write_text(manifest[:-20])
    with pytest.raises(ArtifactError, match="not valid JSON"):
        ember.load(saved)
    (saved / "manifest.json").write_text(manifest)
    edit_manifest(saved, lambda m: m.update(format_version=99))
    with pytest.raises(ArtifactError, match="newer than"):
        ember.load(saved)


def test_without_ir_it_loads_but_cannot_rebuild(compiled, tmp_path):
    path = artifact.save_model(compiled, tmp_path / "noir.ember", include_ir=False)
    assert not (path / "model.ir").exists()
    np.testing.assert_array_equal(ember.load(path)(x_of(3)), compiled(x_of(3)))
    with pytest.raises(ArtifactError, match="no IR"):
        ember.load(path, rebuild=True)


def test_saving_over_an_artifact_replaces_it(tmp_path):
    path = tmp_path / "m.ember"
    a, b = ember.compile(mlp_graph(seed=1, out=3)), ember.compile(mlp_graph(seed=2, out=5))
    a.save(path)
    assert ember.load(path)(x_of(2)).shape == (2, 3)
    b.save(path)  # same folder, new library: the loader must not hand back the old one
    np.testing.assert_array_equal(ember.load(path)(x_of(2)), b(x_of(2)))
    (tmp_path / "precious.txt").write_text("x")
    with pytest.raises(ArtifactError, match="not an Ember artifact"):
        a.save(tmp_path / "precious.txt")


def test_weights_interoperate_with_the_safetensors_package(saved, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    theirs = st.load_file(str(saved / "weights.safetensors"))
    ours = safetensors_io.load(saved / "weights.safetensors")
    assert theirs.keys() == ours.keys()
    for k in ours:
        np.testing.assert_array_equal(theirs[k], ours[k])
    arrays = {"f": np.arange(6, dtype=np.float16).reshape(2, 3), "i": np.arange(5, dtype=np.int64),
              "b": np.array([True, False]), "u": np.arange(3, dtype=np.uint8), "s": np.float64(2.5)}
    st.save_file({k: np.asarray(v) for k, v in arrays.items()}, str(tmp_path / "theirs.safetensors"))
    back = safetensors_io.load(tmp_path / "theirs.safetensors")
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].dtype == np.asarray(v).dtype
    safetensors_io.save(arrays, tmp_path / "ours.safetensors")
    for k, v in st.load_file(str(tmp_path / "ours.safetensors")).items():
        np.testing.assert_array_equal(v, arrays[k])


def test_cli_compile_then_load(tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "mymodels.py").write_text(textwrap.dedent("""
        import torch
        def mlp():
            torch.manual_seed(0)
            m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
            return m.eval(), (torch.randn(2, 16),)
    """))
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
    out = tmp_path / "mlp.ember"
    r = subprocess.run([sys.executable, "-m", "ember.cli", "compile", "mymodels:mlp", "-o", str(out),
                        "--dynamic", "input:0=batch:1:64", "--emit-c-header", str(tmp_path / "m.h")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "#define EMBER_DIM_BATCH 0  /* batch: 1 .. 64 */" in (tmp_path / "m.h").read_text()
    sys.path.insert(0, str(tmp_path))
    try:
        import mymodels
        import torch
        model, _ = mymodels.mlp()
        x = torch.randn(7, 16)
        with torch.no_grad():
            want = model(x).numpy()
    finally:
        sys.path.remove(str(tmp_path))
    np.testing.assert_allclose(ember.load(out)(x.numpy()), want, rtol=1e-5, atol=1e-5)
    r = subprocess.run([sys.executable, "-m", "ember.cli", "compile", str(out)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "already compiled" in r.stderr


def _numpy_pin() -> str:
    for line in (REPO / "requirements-dev.txt").read_text().splitlines():
        if line.strip().startswith("numpy=="):
            return line.strip()
    return "numpy"


@pytest.fixture(scope="session")
def numpy_only_python(tmp_path_factory):
    """A fresh virtual environment with numpy and nothing else (no torch)."""
    env_dir = tmp_path_factory.mktemp("numpy-only-venv")
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"cannot create a virtual environment here: {e}")
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        _numpy_pin()], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:  # pragma: no cover - no registry and no pip cache
        pytest.skip(f"cannot install numpy into a fresh venv: {r.stderr[-500:]}")
    return py


def test_load_and_run_in_a_venv_without_torch(compiled, saved, tmp_path, numpy_only_python):
    x = x_of(6)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", compiled(x))
    script = textwrap.dedent(f"""
        import importlib.util, sys
        import numpy as np
        assert importlib.util.find_spec("torch") is None, "torch is installed here"
        import ember
        model = ember.load({str(saved)!r})
        y = model(np.load({str(tmp_path / 'x.npy')!r}))
        np.testing.assert_array_equal(y, np.load({str(tmp_path / 'want.npy')!r}))
        assert "torch" not in sys.modules
        print("OK", y.shape)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([str(numpy_only_python), "-c", script], capture_output=True, text=True,
                       env=env, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "OK (6, 8)"


def test_load_in_python_with_torch_blocked(saved, tmp_path):
    """Same promise in this venv: loading imports neither torch nor anything that does."""
    script = textwrap.dedent(f"""
        import sys, numpy as np
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "onnx"):
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        import ember
        print(ember.load({str(saved)!r})(np.ones((2, 16), np.float32)).shape)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(2, 8)"
    shutil.rmtree(saved)


def test_the_module_keeps_only_the_constants_its_library_reads(compiled):
    """The GEMM reads its weights packed: the unpacked copies the lowering also made are
    not held by the native module (a one-byte placeholder stands in), and the module still
    computes the graph's result."""
    used = artifact.used_consts(compiled.source)
    consts = compiled.native.consts
    assert used and len(used) < len(consts)
    for k, a in enumerate(consts):
        assert (a.nbytes > 1) == (k in used), k
    held = sum(a.nbytes for a in consts)
    # packed panels pad w2's 8 columns to 16; unpacked and packed copies both would be more
    assert held < 1.5 * sum(c.data.nbytes for c in compiled.graph.constants)
    x = x_of(7)
    ref = interpret(compiled.graph, {"x": x})[0]
    np.testing.assert_allclose(compiled(x), ref, rtol=1e-5, atol=1e-5)
