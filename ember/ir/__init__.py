"""Ember's graph IR: types, symbolic dims, graph, op registry, text form, verifier, interpreter."""
from . import dtypes, ops  # noqa: F401
from .dtypes import DType
from .graph import Graph, Node, TensorType, Value
from .interpreter import interpret
from .parser import parse
from .printer import print_graph
from .symbolic import Dim, SymExpr, parse_dim, sym
from .verify import verify

__all__ = ["DType", "Dim", "Graph", "Node", "SymExpr", "TensorType", "Value", "dtypes", "interpret",
           "ops", "parse", "parse_dim", "print_graph", "sym", "verify"]
