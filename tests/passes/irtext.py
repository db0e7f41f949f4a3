"""Helpers for pass tests written as text IR in / text IR out."""
import re

import numpy as np

from ember.ir import interpret, parse, print_graph
from ember.passes.manager import random_inputs


def canonical(text: str) -> str:
    """Rename values %a, %b, ... in order of first appearance, so names do not matter."""
    names: dict[str, str] = {}

    def sub(m):
        return names.setdefault(m.group(1), f"%v{len(names)}")
    text = re.sub(r"%(\w+)", sub, text)
    return "\n".join(ln.strip() for ln in text.strip().splitlines())


def run_pass(fn, text: str, consts=None):
    """Parse, run the pass, check it preserved the result on random inputs; return new text."""
    g = parse(text, consts)
    before = g.clone()
    g = fn(g)
    inputs = random_inputs(before, size=3, seed=1)
    for want, got in zip(interpret(before, inputs), interpret(g, inputs)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    return print_graph(g)


def assert_pass(fn, before: str, after: str, consts=None):
    got = run_pass(fn, before, consts)
    assert canonical(got) == canonical(after), f"got:\n{got}"
