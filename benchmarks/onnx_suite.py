"""Run ONNX's backend node-test suite with Ember and with ONNX Runtime; write the counts.

    python benchmarks/onnx_suite.py                 # compiled Ember backend (gcc), ~2-4 min
    python benchmarks/onnx_suite.py --interpret     # Ember's numpy reference instead (fast)

Counts only the CPU variants of the node tests, with no exclusions: a test passes when the
backend's outputs match the suite's expected outputs. Writes benchmarks/results/onnx_suite.md.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
import unittest
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_suite(backend) -> tuple[int, int, set[str], float]:
    import onnx.backend.test
    bt = onnx.backend.test.BackendTest(backend, "onnx_suite")
    bt.include(r"_cpu$")
    cases = bt.test_cases["OnnxBackendNodeModelTest"]
    for name in [n for n in vars(cases) if n.startswith("test_") and not n.endswith("_cpu")]:
        delattr(cases, name)
    suite = unittest.TestLoader().loadTestsFromTestCase(cases)
    t0 = time.perf_counter()
    res = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
    failed = {tc.id().rsplit(".", 1)[-1] for tc, _ in res.failures + res.errors}
    return res.testsRun, res.testsRun - len(failed) - len(res.skipped), failed, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interpret", action="store_true", help="Ember's reference interpreter")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "onnx_suite.md"))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("EMBER_QUIET", "1")
    import onnx
    import onnxruntime
    import onnxruntime.backend as ort_backend

    from ember.frontends.onnx import EmberBackend
    EmberBackend.mode = "interpret" if args.interpret else "compile"
    onnxruntime.set_default_logger_severity(3)
    n_ort, p_ort, f_ort, t_ort = run_suite(ort_backend)
    n_em, p_em, f_em, t_em = run_suite(EmberBackend)
    mode = "reference interpreter" if args.interpret else "compiled C (gcc)"
    lines = [
        "# ONNX backend node-test suite: Ember vs ONNX Runtime",
        "",
        f"onnx {onnx.__version__} (node tests up to opset {onnx.defs.onnx_opset_version()}), "
        f"onnxruntime {onnxruntime.__version__}, {platform.machine()}, {os.cpu_count()} cores. "
        f"CPU variants only, no exclusions.",
        "",
        "| backend | passed | of | seconds |",
        "|---|---:|---:|---:|",
        f"| ONNX Runtime | {p_ort} | {n_ort} | {t_ort:.0f} |",
        f"| Ember ({mode}) | {p_em} | {n_em} | {t_em:.0f} |",
        "",
        f"Passed by ONNX Runtime but not Ember: {len(f_em - f_ort)}. "
        f"Passed by Ember but not ONNX Runtime: {len(f_ort - f_em)}.",
        "",
        "Command: `python benchmarks/onnx_suite.py" + (" --interpret" if args.interpret else "") + "`",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
