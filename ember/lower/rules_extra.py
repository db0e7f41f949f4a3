"""Lowerings for the ops in ember/ir/ops/extra.py, registered into ``rules.RULES``."""
