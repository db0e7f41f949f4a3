"""Graph passes and the pipelines that order them."""
from .dce import eliminate_dead_code
from .fold_constants import fold_constants
from .manager import PassManager

PIPELINES = {
    0: [],
    1: [("fold_constants", fold_constants), ("dce", eliminate_dead_code)],
    2: [("fold_constants", fold_constants), ("dce", eliminate_dead_code)],
}


def default_pipeline(opt_level: int = 2, dump_after=()) -> PassManager:
    return PassManager(list(PIPELINES[opt_level]), dump_after=set(dump_after))


__all__ = ["PassManager", "default_pipeline", "eliminate_dead_code", "fold_constants"]
