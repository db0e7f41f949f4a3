"""A tiny pattern matcher over graph values, and a driver that applies rewrite rules.

A pattern is built from ``Op(name, *args, **attr_tests)``, ``Var(name)`` (binds any value;
the same name must bind the same value), and ``Const(name, test)`` (a constant whose data
passes ``test``). A rule is ``(name, pattern, build)``: when ``pattern`` matches a value,
``build(g, m)`` returns its replacement (or None to decline); ``m`` maps capture names to
values and ``m.root`` is the matched value.

    x_plus_zero = ("add-zero", Op("add", Var("x"), Const("c", is_zero)), lambda g, m: m["x"])
"""
from __future__ import annotations

from typing import Callable

import numpy as np

COMMUTATIVE = {"add", "mul", "maximum", "minimum", "eq", "ne", "logical_and", "logical_or"}


class Pattern:
    def match(self, v, m: "Match") -> bool:
        raise NotImplementedError


class Var(Pattern):
    def __init__(self, name: str, test: Callable | None = None):
        self.name, self.test = name, test

    def match(self, v, m):
        if self.test is not None and not self.test(v):
            return False
        if self.name in m.binds:
            return m.binds[self.name] is v
        m.binds[self.name] = v
        return True


class Const(Pattern):
    """A constant value; ``test(array)`` may restrict it (e.g. all elements 0)."""

    def __init__(self, name: str | None = None, test: Callable | None = None):
        self.name, self.test = name, test

    def match(self, v, m):
        if v.kind != "const" or v.data is None:
            return False
        if self.test is not None and not self.test(v.data):
            return False
        if self.name:
            if self.name in m.binds:
                return m.binds[self.name] is v
            m.binds[self.name] = v
        return True


class Op(Pattern):
    """A node ``op`` whose inputs match ``args``; ``attrs`` are equality or predicate tests."""

    def __init__(self, op: str, *args: Pattern, name: str | None = None, **attrs):
        self.op, self.args, self.name, self.attrs = op, args, name, attrs

    def match(self, v, m):
        n = v.producer
        if n is None or n.op != self.op or len(n.inputs) != len(self.args):
            return False
        for k, test in self.attrs.items():
            have = n.attrs.get(k)
            if not (test(have) if callable(test) else have == test):
                return False
        orders = [self.args]
        if self.op in COMMUTATIVE and len(self.args) == 2:
            orders.append(self.args[::-1])
        for args in orders:
            saved = dict(m.binds)
            if all(p.match(i, m) for p, i in zip(args, n.inputs)):
                if self.name:
                    m.binds[self.name] = v
                return True
            m.binds = saved
        return False


class Match:
    def __init__(self, root):
        self.root, self.binds = root, {}

    def __getitem__(self, k):
        return self.binds[k]

    def __contains__(self, k):
        return k in self.binds

    def node(self, k):
        return self.binds[k].producer


def scalar(test: Callable[[float], bool]) -> Callable:
    """A Const test for a tensor whose elements are all equal and pass ``test``."""
    def check(a: np.ndarray) -> bool:
        if a.size == 0:
            return False
        flat = a.reshape(-1)
        return bool(np.all(flat == flat[0])) and bool(test(flat[0].item()))
    return check


def near(x: float, rel: float = 1e-4) -> Callable:
    return scalar(lambda v: abs(v - x) <= rel * max(abs(x), 1e-12))


def apply_rules(g, rules, max_rounds: int = 8, log: list | None = None):
    """Rewrite ``g`` with ``rules`` until nothing changes (or ``max_rounds``), then drop dead nodes."""
    from .dce import eliminate_dead_code
    for _ in range(max_rounds):
        changed = False
        k = 0
        while k < len(g.nodes):
            node = g.nodes[k]
            if len(node.outputs) != 1:
                k += 1
                continue
            out = node.outputs[0]
            for name, pat, build in rules:
                m = Match(out)
                if not pat.match(out, m):
                    continue
                before = len(g.nodes)
                new = build(g, m)
                if new is None or new is out:
                    del g.nodes[before:]
                    continue
                if new.type != out.type:
                    raise AssertionError(f"rule {name} changed the type of %{out.name}: "
                                         f"{out.type} -> {new.type}")
                # nodes the rule built go right before the node they replace
                added = g.nodes[before:]
                del g.nodes[before:]
                g.nodes[k:k] = added
                k += len(added)
                g.replace_uses(out, new)
                if log is not None:
                    log.append(f"{name}: %{out.name}")
                changed = True
                break
            k += 1
        eliminate_dead_code(g)
        if not changed:
            break
    return g
