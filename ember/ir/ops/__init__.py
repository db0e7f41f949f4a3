"""All graph ops. Importing this package registers them."""
from . import elementwise, nn, reduce, shape  # noqa: F401  (registration side effects)
from . import extra, quant  # noqa: F401,E402
from .registry import Attr, OpDef, all_ops, broadcast_shapes, get, register  # noqa: F401
