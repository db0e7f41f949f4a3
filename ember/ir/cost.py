"""What a graph costs to run: floating-point (and integer) operations of its GEMM-like ops.

Counts 2 operations per multiply-add of ``matmul``, ``linear``, ``conv2d``, ``attention``
and their int8 forms, the work that bounds a model's speed on a CPU; elementwise ops and
reductions are left out (they are memory-bound, not compute-bound). Benchmarks divide this
by the measured time to say how close a model runs to the machine's peak.
"""
from __future__ import annotations

from .graph import Graph
from .symbolic import evaluate, free_symbols, prod


def _numel(shape, env) -> int:
    d = prod(shape)
    return int(evaluate(d, {s: env[s] for s in free_symbols(d)}))


def _size(d, env) -> int:
    return int(evaluate(d, {s: env[s] for s in free_symbols(d)}))


def node_flops(node, env: dict) -> int:
    """Operations of one node at the sizes in ``env`` (symbol -> int); 0 for non-GEMM ops."""
    op, ins, out = node.op, node.inputs, node.outputs[0].type.shape
    if op in ("matmul", "linear", "matmul_integer", "quant_linear"):
        k = _size(ins[0].type.shape[-1], env)
        return 2 * _numel(out, env) * k
    if op in ("conv2d", "quant_conv2d"):
        w = ins[1].type.shape  # [O, C / groups, kh, kw]
        return 2 * _numel(out, env) * _numel(w[1:], env)
    if op == "attention":     # q [.., Sq, D] k [.., Sk, D] v [.., Sk, Dv]: QK^T and PV
        q, k = ins[0].type.shape, ins[1].type.shape
        sk, d = _size(k[-2], env), _size(q[-1], env)
        return 2 * _numel(q[:-1], env) * sk * d + 2 * _numel(out, env) * sk
    return 0


def flops(graph: Graph, env: dict | None = None) -> int:
    """Total operations of ``graph`` with its symbolic dims bound by ``env``."""
    env = env or {}
    return sum(node_flops(n, env) for n in graph.nodes)
