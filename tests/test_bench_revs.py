"""bench_revs.py --paired: artifacts of two builds timed call by call in one process."""
import json
import sys
from pathlib import Path

import numpy as np

import ember
from ember.ir import Graph, TensorType, dtypes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_revs  # noqa: E402


def test_paired_reports_ratios_against_the_first_revision(tmp_path):
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (3, 7)))
    g.outputs = [g.op("linear", [x, g.add_const(rng.standard_normal((5, 7)).astype(np.float32), "w")])]
    feed = rng.standard_normal((3, 7)).astype(np.float32)
    dirs = {}
    for rev in ("old", "new"):
        d = tmp_path / rev
        d.mkdir()
        ember.compile(g, (feed,)).save(str(d / "0.ember"))
        np.savez(d / "0.npz", feed)
        (d / "names.json").write_text(json.dumps(["tiny linear"]))
        dirs[rev] = str(d)
    rows = bench_revs.paired(["old", "new"], dirs, seconds=0.05)
    assert len(rows) == 1 and rows[0].startswith("| tiny linear | ")
    cells = rows[0].strip("| \n").split(" | ")[1:]
    assert "x1.000 (1.000-1.000)" in cells[0]          # the baseline against itself
    ratio = float(cells[1].split(", x")[1].split(" ")[0])
    assert 0.2 < ratio < 5
