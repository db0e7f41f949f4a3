"""Memory planning: temps whose lifetimes do not overlap share workspace slots.

Sizes are symbolic, so a slot's size is the C expression ``max`` of its members' sizes and
the workspace is one expression of the input dims; slots are picked by size at a typical
binding (every symbol = 64) so that similar buffers share.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir.symbolic import Dim, evaluate, free_symbols
from .loop_ir import Buffer, Program
from .schedule import _reads

HINT = 64


@dataclass
class MemoryPlan:
    slots: list[list[Buffer]] = field(default_factory=list)   # members of each slot
    slot_of: dict = field(default_factory=dict)                # Buffer -> slot index

    def bytes_of(self, b: Buffer) -> Dim:
        return b.numel * b.dtype.itemsize

    def summary(self, env: dict) -> tuple[int, int]:
        """(planned workspace bytes, sum of all temps' bytes) at a concrete binding."""
        sizes = [max(evaluate(self.bytes_of(b), env) for b in s) for s in self.slots]
        total = sum(evaluate(self.bytes_of(b), env) for s in self.slots for b in s)
        return sum(sizes), total


def _hint(d: Dim) -> int:
    return evaluate(d, {s: HINT for s in free_symbols(d)}) if not isinstance(d, int) else d


def plan_memory(prog: Program, reuse: bool = True) -> MemoryPlan:
    last_read: dict = {}
    for i, k in enumerate(prog.kernels):
        for b in _reads(k):
            last_read[b] = i
    plan, free = MemoryPlan(), []
    for i, k in enumerate(prog.kernels):
        b = k.out
        if b.kind == "temp" and b not in plan.slot_of:
            need = _hint(plan.bytes_of(b))
            best = None
            if reuse and free:  # the free slot closest in size (growing one costs the difference)
                best = min(free, key=lambda s: abs(max(_hint(plan.bytes_of(m)) for m in plan.slots[s]) - need))
            if best is None:
                plan.slots.append([b])
                plan.slot_of[b] = len(plan.slots) - 1
            else:
                free.remove(best)
                plan.slots[best].append(b)
                plan.slot_of[b] = best
        # after kernel i, temps it read for the last time free their slots (never before:
        # a kernel must not overwrite what it is still reading)
        for r in _reads(k):
            if r.kind == "temp" and last_read.get(r) == i and r in plan.slot_of:
                s = plan.slot_of[r]
                if all(last_read.get(m, -1) <= i for m in plan.slots[s]) and s not in free:
                    free.append(s)
    for b in prog.temps:  # temps no kernel writes (should not happen) still get room
        if b not in plan.slot_of:
            plan.slots.append([b])
            plan.slot_of[b] = len(plan.slots) - 1
    return plan
