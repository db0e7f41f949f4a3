"""The pass manager: an ordered list of named graph passes, timed, optionally dumped.

A pass is a function ``Graph -> Graph`` (it may change the graph in place and return it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from ..ir import verify

Pass = Callable


@dataclass
class PassRecord:
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int


@dataclass
class PassManager:
    passes: list[tuple[str, Pass]]
    dump_after: set[str] = field(default_factory=set)   # pass names whose result is printed
    check: bool = True                                  # run the verifier after each pass
    records: list[PassRecord] = field(default_factory=list)
    dumps: dict[str, str] = field(default_factory=dict)

    def run(self, g):
        for name, fn in self.passes:
            before = len(g.nodes)
            t0 = time.perf_counter()
            g = fn(g)
            self.records.append(PassRecord(name, time.perf_counter() - t0, before, len(g.nodes)))
            if self.check:
                verify(g)
            if name in self.dump_after or "all" in self.dump_after:
                self.dumps[name] = str(g)
        return g

    def report(self) -> str:
        rows = [f"{r.name:<16} {r.seconds * 1e3:8.2f} ms  nodes {r.nodes_before} -> {r.nodes_after}"
                for r in self.records]
        return "\n".join(rows)
