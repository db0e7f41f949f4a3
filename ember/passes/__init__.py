"""Graph passes and the pipelines that order them (``-O0`` none, ``-O1`` cleanup, ``-O2`` all)."""
from .cse import eliminate_common_subexpressions
from .dce import eliminate_dead_code
from .fold_batch_norm import fold_batch_norm
from .fold_constants import fold_constants
from .fuse_qdq import fuse_qdq
from .manager import PassManager
from .recognize import recognize
from .simplify import simplify

# fuse_qdq computes in exact integers where the simulated graph summed in float: after a
# requantize, an output can land one quantization step away on a rounding tie (rare)
fuse_qdq.verify_outliers = 0.01

CLEANUP = [("fold_constants", fold_constants), ("simplify", simplify), ("cse", eliminate_common_subexpressions),
           ("dce", eliminate_dead_code)]
PIPELINES = {
    0: [],
    1: CLEANUP,
    2: CLEANUP + [("fold_batch_norm", fold_batch_norm), ("recognize", recognize),
                  ("fuse_qdq", fuse_qdq),
                  ("fold_constants_2", fold_constants), ("simplify_2", simplify),
                  ("cse_2", eliminate_common_subexpressions), ("dce_2", eliminate_dead_code)],
}
PASS_NAMES = sorted({name for p in PIPELINES.values() for name, _ in p})


def default_pipeline(opt_level: int = 2, dump_after=(), verify=None, example_inputs=None) -> PassManager:
    """The pass list for ``opt_level``; ``verify`` checks every pass against the reference."""
    return PassManager(list(PIPELINES[opt_level]), dump_after=set(dump_after), verify=verify,
                       example_inputs=example_inputs)


__all__ = ["PASS_NAMES", "PassManager", "default_pipeline", "eliminate_common_subexpressions",
           "eliminate_dead_code", "fold_batch_norm", "fold_constants", "fuse_qdq", "recognize", "simplify"]
