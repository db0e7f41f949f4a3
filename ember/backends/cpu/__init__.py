from . import gemm_int8  # noqa: E402,F401  (registers the int8 GEMM template printer)
from . import attention  # noqa: E402,F401  (registers the fused attention template printer)
from . import winograd  # noqa: E402,F401  (registers the Winograd transform printers)
